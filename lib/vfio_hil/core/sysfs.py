"""Read-only PCI sysfs helpers.

Every function takes a ``root`` directory (default ``/``) under which ``sys/`` is looked up,
so the helpers can be exercised on a fake tree.
"""

from __future__ import annotations

import os
import re
from typing import List, NamedTuple, Optional

_BDF_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?"
    r"(?P<bus>[0-9a-fA-F]{1,2}):(?P<slot>[0-9a-fA-F]{1,2})\.(?P<func>[0-7])$"
)


class PciIds(NamedTuple):
    """Identification registers of a PCI function as reported by sysfs."""

    vendor: int
    device: int
    class_code: int
    subsystem_vendor: int
    subsystem_device: int


def normalize_bdf(bdf: str) -> str:
    """Return ``bdf`` in the kernel's canonical form ``dddd:bb:ss.f`` (lower-case hex).

    The PCI domain defaults to 0, so ``"00:04.0"`` becomes ``"0000:00:04.0"``.
    Raises ValueError for anything that is not a PCI address.
    """
    m = _BDF_RE.match(bdf.strip())
    if m is None:
        raise ValueError(f"not a PCI address: {bdf!r}")
    slot = int(m["slot"], 16)
    if slot > 0x1F:
        raise ValueError(f"PCI slot out of range in {bdf!r}")
    domain = int(m["domain"] or "0", 16)
    return f"{domain:04x}:{int(m['bus'], 16):02x}:{slot:02x}.{m['func']}"


def device_path(bdf: str, root: str = "/") -> str:
    """Return the sysfs directory of the PCI function ``bdf``."""
    return os.path.join(root, "sys/bus/pci/devices", normalize_bdf(bdf))


def iommu_group(bdf: str, root: str = "/") -> int:
    """Return the IOMMU group number of ``bdf``.

    Raises FileNotFoundError if the device does not exist or is not behind an IOMMU.
    """
    return int(os.path.basename(os.readlink(os.path.join(device_path(bdf, root), "iommu_group"))))


def group_devices(group: int, root: str = "/") -> List[str]:
    """Return the sorted addresses of the devices in IOMMU group ``group``."""
    return sorted(os.listdir(os.path.join(root, "sys/kernel/iommu_groups", str(group), "devices")))


def driver(bdf: str, root: str = "/") -> Optional[str]:
    """Return the name of the driver bound to ``bdf``, or None if it is unbound."""
    try:
        return os.path.basename(os.readlink(os.path.join(device_path(bdf, root), "driver")))
    except FileNotFoundError:
        return None


def _read_hex(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip(), 16)


def pci_ids(bdf: str, root: str = "/") -> PciIds:
    """Return the vendor, device, class and subsystem ids of ``bdf``."""
    base = device_path(bdf, root)
    return PciIds(
        vendor=_read_hex(os.path.join(base, "vendor")),
        device=_read_hex(os.path.join(base, "device")),
        class_code=_read_hex(os.path.join(base, "class")),
        subsystem_vendor=_read_hex(os.path.join(base, "subsystem_vendor")),
        subsystem_device=_read_hex(os.path.join(base, "subsystem_device")),
    )


def vfio_cdev(bdf: str, root: str = "/") -> Optional[str]:
    """Return the name (``vfioN``) of ``bdf``'s VFIO device cdev, or None.

    The kernel lists it under the device's ``vfio-dev/`` directory when the device is bound
    to a VFIO driver and the kernel has VFIO_DEVICE_CDEV (Linux 6.6+).
    """
    try:
        names = sorted(os.listdir(os.path.join(device_path(bdf, root), "vfio-dev")))
    except FileNotFoundError:
        return None
    return names[0] if names else None


class HugePagePool(NamedTuple):
    """The kernel's pool of persistent huge pages of one size."""

    page_size: int
    total: int
    free: int


def hugepage_pool(page_size: int, root: str = "/") -> Optional[HugePagePool]:
    """The huge page pool for ``page_size`` bytes, or None if the kernel has no such size."""
    base = os.path.join(root, "sys/kernel/mm/hugepages", f"hugepages-{page_size // 1024}kB")
    try:
        with open(os.path.join(base, "nr_hugepages")) as f:
            total = int(f.read())
        with open(os.path.join(base, "free_hugepages")) as f:
            free = int(f.read())
    except FileNotFoundError:
        return None
    return HugePagePool(page_size, total, free)
