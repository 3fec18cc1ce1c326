"""Helpers the DUT-side check modules share: opening a device through a type1v2 container
or in an IOMMU context of any backend, the ioctl transcript kept as a check's evidence, the
IOMMU fault records of the kernel log, and the answer that makes a check SKIP. Runs on the
DUT (Python 3.9+).
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

from ..core import sysfs, uapi
from ..core.backend import IommuBackend, open_iommu
from ..core.container import Container
from ..core.device import Device
from ..core.group import Group
from ..core.iommufd import map_flags as iommufd_map_flags

RW = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE
#: The backend device-level checks use unless they ask for another: the one every kernel
#: with VFIO offers.
DEFAULT_BACKEND = "type1v2"

# -- opening a device ------------------------------------------------------------------------


@contextmanager
def container_for(bdf: str) -> Iterator[Tuple[Container, Group]]:
    """A new type1v2 container with the IOMMU group of ``bdf`` attached (both closed on
    exit)."""
    with Container() as container, Group.of_device(bdf) as group:
        group.set_container(container)
        container.set_iommu(uapi.VFIO_TYPE1v2_IOMMU)
        yield container, group


@contextmanager
def open_device(bdf: str) -> Iterator[Tuple[Container, Group, Device]]:
    """Open a type1v2 container, attach ``bdf``'s group to it and open the device."""
    bdf = sysfs.normalize_bdf(bdf)
    with container_for(bdf) as (container, group), group.device(bdf) as device:
        yield container, group, device


@contextmanager
def device_in(bdf: str, backend: str = DEFAULT_BACKEND) -> Iterator[Tuple[IommuBackend, Device]]:
    """Open ``bdf`` in an IOMMU context of its own: ``backend`` as
    :func:`vfio_hil.core.open_iommu` takes it (under ``"iommufd"`` through the device's cdev,
    bound to the iommufd and attached to its IOAS; under a container through its group)."""
    with open_iommu(backend) as iommu:
        yield iommu, iommu.open_device(bdf)


# -- a check's SKIP ------------------------------------------------------------------------


def skipped(kind: str, reason: str) -> Dict[str, str]:
    """The answer of a DUT function whose check does not apply here: ``{"skip": reason,
    "skip_kind": kind}``, the check SKIPs with both. ``kind`` is the controller's word for
    why (``vfio_hil.lab.report.SKIP_KINDS``: ``capability``, ``kernel``, ``lab``, ...), which
    checks it when the check raises the SKIP."""
    return {"skip": reason, "skip_kind": kind}


# -- raw results and the ioctl transcript ----------------------------------------------------


def errno_name(ret: int) -> str:
    """``-EINVAL`` for a negative raw result, the number itself otherwise."""
    return f"-{errno.errorcode.get(-ret, str(-ret))}" if ret < 0 else str(ret)


def answer(ret: int) -> Union[str, int]:
    """How the evidence shows a raw-tier result: the errno name, or the non-negative value."""
    return errno.errorcode.get(-ret, str(ret)) if ret < 0 else ret


class Transcript:
    """The ioctls and system calls a DUT function issued and what the kernel answered, as
    the ``ioctls`` evidence of a check: ``{"ioctl", "args", "result"}`` per call.

    Two ways to record, kept so each check's evidence reads as it always has: :meth:`add`
    (arguments as given, result as :func:`errno_name`: ``"0"``, ``"-EINVAL"``) for the
    ownership, region and reset probes, and :meth:`record` (integers in hex, result as
    :func:`answer`) for the DMA, isolation and interrupt probes.
    """

    def __init__(self) -> None:
        self.entries: List[Dict[str, Any]] = []

    def _keep(self, ioctl: str, args: Dict[str, Any], result: Union[str, int]) -> None:
        self.entries.append({"ioctl": ioctl, "args": args, "result": result})

    def add(self, call: str, result: int, **args: Any) -> str:
        """Record ``call`` with ``args`` and its raw result (``-errno`` on failure); return
        the result as recorded (``"0"``, ``"-EINVAL"``)."""
        outcome = errno_name(result)
        self._keep(call, args, outcome)
        return outcome

    def record(self, ioctl: str, args: Dict[str, Any], ret: int) -> int:
        """Keep one ioctl with its arguments (integers shown in hex) and return ``ret``."""
        shown = {
            k: hex(v) if isinstance(v, int) and not k.endswith("flags") else v
            for k, v in args.items()
        }
        self._keep(ioctl, shown, answer(ret))
        return ret

    def open(self, path: str) -> int:
        """open(2) ``path`` read-write: the fd, or ``-errno``; recorded."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            self.add("open", -exc.errno, path=path)
            return -exc.errno
        self.add("open", 0, path=path)
        return fd

    def map(self, target: Mapper, vaddr: int, iova: int, size: int, flags: int = RW) -> int:
        """Map DMA through the raw tier of a container or any IOMMU backend (VFIO flags):
        0 or ``-errno``. Under iommufd ``flags`` are the IOMMU_IOAS_MAP flags the backend
        sends, beside the VFIO ones asked for (``vfio_flags``)."""
        args: Dict[str, Any] = {"vaddr": vaddr, "iova": iova, "size": size, "flags": flags}
        ioctl = _ioctl_name(target, "VFIO_IOMMU_MAP_DMA", "IOMMU_IOAS_MAP")
        if ioctl == "IOMMU_IOAS_MAP":
            args["flags"] = iommufd_map_flags(
                iova,
                bool(flags & uapi.VFIO_DMA_MAP_FLAG_READ),
                bool(flags & uapi.VFIO_DMA_MAP_FLAG_WRITE),
            )
            args["vfio_flags"] = flags
        ret = target.raw_map_dma(vaddr, iova, size, flags)
        return self.record(ioctl, args, ret)

    def unmap(self, target: Mapper, iova: int, size: int, flags: int = 0) -> int:
        """Unmap DMA through the raw tier: bytes unmapped or ``-errno``."""
        args = {"iova": iova, "size": size, "flags": flags}
        ret = target.raw_unmap_dma(iova, size, flags)
        return self.record(
            _ioctl_name(target, "VFIO_IOMMU_UNMAP_DMA", "IOMMU_IOAS_UNMAP"), args, ret
        )


#: A container or an IOMMU backend: both map and unmap DMA through a raw tier in VFIO terms.
Mapper = Union[Container, IommuBackend]


def _ioctl_name(target: Mapper, container_ioctl: str, iommufd_ioctl: str) -> str:
    return iommufd_ioctl if getattr(target, "name", None) == "iommufd" else container_ioctl


# -- IOMMU faults in the kernel log ----------------------------------------------------------

_BDF = r"[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"
# intel-iommu: "DMAR: [DMA Write NO_PASID] Request device [00:04.0] fault addr 0x41da000 ..."
# (older kernels: "[DMA Write] Request device [00:04.0] PASID ffffffff fault addr 41da000"),
# and "DMAR: [INTR-REMAP] Request device [00:04.0] fault index 0x...".
_INTEL_FAULT = re.compile(
    r"DMAR: \[(?P<kind>DMA \w+|INTR-REMAP)[^\]]*\] Request device "
    rf"\[(?:(?P<domain>[0-9a-f]{{4}}):)?(?P<bdf>{_BDF})\]"
    r"(?:(?: PASID \w+)? fault addr (?:0x)?(?P<addr>[0-9a-f]+))?"
)
# amd-iommu: "vfio-pci 0000:00:04.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x0002
# address=0x41da000 flags=0x0020]", or without a struct device: "AMD-Vi: Event logged
# [IO_PAGE_FAULT device=0000:00:04.0 domain=... address=... flags=...]".
_AMD_FAULT = re.compile(
    rf"(?:(?P<dev>[0-9a-f]{{4}}:{_BDF}): )?AMD-Vi: Event logged "
    rf"\[(?P<kind>[A-Z_]+)(?: device=(?P<evdev>(?:[0-9a-f]{{4}}:)?{_BDF}))?"
    r"(?: domain=0x[0-9a-f]+ address=0x(?P<addr>[0-9a-f]+) flags=0x(?P<flags>[0-9a-f]+))?"
)
# SMMU and virtio-iommu faults name stream or endpoint IDs, not PCI addresses.
_UNATTRIBUTED_FAULT = re.compile(
    r"(?P<kind>Unhandled context fault|event 0x[0-9a-f]+ received|fault from EP \d+)"
)
_AMD_FLAG_WRITE = 0x20


class Fault(NamedTuple):
    """An IOMMU fault record from the kernel log."""

    kind: str  # "DMA Write", "INTR-REMAP", "IO_PAGE_FAULT", "Unhandled context fault", ...
    device: Optional[str]  # the faulting PCI function (0000:00:04.0), None when not named
    access: Optional[str]  # "read" or "write" for a DMA fault whose record says so
    address: Optional[int]  # the DMA address of a page fault; None for other faults
    line: str


def _full_bdf(bdf: str, domain: Optional[str] = None) -> str:
    return bdf if bdf.count(":") == 2 else f"{domain or '0000'}:{bdf}"


def parse_fault(line: str) -> Optional[Fault]:
    """The IOMMU fault a kernel log line reports (Intel VT-d, AMD-Vi, SMMU, virtio-iommu),
    or None.

    ``address`` and ``access`` are set for DMA page faults only: an Intel ``DMA Read`` or
    ``DMA Write`` record with its fault address, an AMD ``IO_PAGE_FAULT`` with its address
    and flags.
    """
    m = _INTEL_FAULT.search(line)
    if m:
        dma = m["addr"] is not None and m["kind"] in ("DMA Read", "DMA Write")
        return Fault(
            m["kind"],
            _full_bdf(m["bdf"], m["domain"]),
            m["kind"][4:].lower() if dma else None,
            int(m["addr"], 16) if dma else None,
            line,
        )
    m = _AMD_FAULT.search(line)
    if m:
        dev = m["dev"] or m["evdev"]
        dma = m["addr"] is not None and m["kind"] == "IO_PAGE_FAULT"
        access = ("write" if int(m["flags"], 16) & _AMD_FLAG_WRITE else "read") if dma else None
        return Fault(
            m["kind"],
            _full_bdf(dev) if dev else None,
            access,
            int(m["addr"], 16) if dma else None,
            line,
        )
    m = _UNATTRIBUTED_FAULT.search(line)
    if m:
        return Fault(m["kind"], None, None, None, line)
    return None
