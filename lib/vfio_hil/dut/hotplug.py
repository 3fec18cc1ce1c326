"""Hot removal and re-addition of a device held through VFIO. Runs on the DUT.

The controller unplugs the device (QEMU's device_del) between calls of this module, so a
holder must outlive a call: :func:`hold` opens the device with an eventfd on its REQ
interrupt and keeps it in module state (the DUT agent process persists between calls);
:func:`req_count` reads how often the kernel asked for the device back; :func:`release`
closes it all so the removal can complete.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from typing import Any, Dict

from ..core import sysfs, uapi
from ..core.irq import EventFd
from .mapping import device_in_container

VFIO_DEV = "/dev/vfio"
IOMMU_GROUPS = "/sys/kernel/iommu_groups"
PCI_RESCAN = "/sys/bus/pci/rescan"
VFIO_DRIVER = "vfio-pci"
_POLL_S = 0.1


class _Holder:
    """A device opened through VFIO with an eventfd on its REQ interrupt."""

    def __init__(self, bdf: str) -> None:
        self.stack = ExitStack()
        try:
            _container, self.device = self.stack.enter_context(device_in_container(bdf))
            self.req = self.stack.enter_context(EventFd())
            self.device.set_irqs_eventfd(uapi.VFIO_PCI_REQ_IRQ_INDEX, [self.req.fd])
        except BaseException:
            self.stack.close()
            raise
        self.requests = 0

    def close(self) -> None:
        self.stack.close()


_held: Dict[str, _Holder] = {}


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def snapshot(bdf: str) -> Dict[str, Any]:
    """``bdf``'s IOMMU group, and what hot removal could leak: VFIO group nodes, IOMMU groups
    and this process's fds."""
    return {
        "group": sysfs.iommu_group(bdf),
        "vfio_groups": sorted(n for n in os.listdir(VFIO_DEV) if n != "vfio"),
        "iommu_groups": len(os.listdir(IOMMU_GROUPS)),
        "fds": _fd_count(),
    }


def hold(bdf: str) -> Dict[str, Any]:
    """Open ``bdf`` through VFIO with an eventfd on its REQ interrupt and keep it open."""
    bdf = sysfs.normalize_bdf(bdf)
    if bdf in _held:
        raise RuntimeError(f"{bdf} is already held")
    before = _fd_count()
    _held[bdf] = _Holder(bdf)
    return {"fds_before": before, "fds_held": _fd_count()}


def req_count(bdf: str, timeout_s: float = 30.0) -> Dict[str, Any]:
    """Wait up to ``timeout_s`` for the REQ interrupt of the held ``bdf``; return how often it
    fired since :func:`hold` and whether the device is still present."""
    holder = _held[sysfs.normalize_bdf(bdf)]
    start = time.monotonic()
    holder.requests += holder.req.read_count(timeout_s)
    return {
        "requests": holder.requests,
        "seconds": round(time.monotonic() - start, 2),
        "present": os.path.exists(sysfs.device_path(bdf)),
    }


def release(bdf: str) -> Dict[str, Any]:
    """Close everything :func:`hold` opened for ``bdf`` (nothing if it holds nothing)."""
    holder = _held.pop(sysfs.normalize_bdf(bdf), None)
    if holder is not None:
        holder.close()
    return {"released": holder is not None, "fds": _fd_count()}


def wait_gone(bdf: str, group: int, timeout_s: float = 30.0) -> Dict[str, Any]:
    """Wait for ``bdf`` to disappear from sysfs; report what is left of it and its group."""
    path = sysfs.device_path(bdf)
    start = time.monotonic()
    while os.path.exists(path) and time.monotonic() - start < timeout_s:
        time.sleep(_POLL_S)
    return {
        "gone": not os.path.exists(path),
        "seconds": round(time.monotonic() - start, 2),
        "group_node": os.path.exists(os.path.join(VFIO_DEV, str(group))),
        "group_in_sysfs": os.path.exists(os.path.join(IOMMU_GROUPS, str(group))),
    }


def wait_present(bdf: str, timeout_s: float = 30.0) -> Dict[str, Any]:
    """Wait for ``bdf`` to appear; half way through, ask the PCI core to rescan the buses
    (a slot whose presence change was missed only shows up then)."""
    path = sysfs.device_path(bdf)
    start = time.monotonic()
    rescanned = False
    while not os.path.exists(path) and time.monotonic() - start < timeout_s:
        if not rescanned and time.monotonic() - start > timeout_s / 2:
            with open(PCI_RESCAN, "w") as fh:
                fh.write("1")
            rescanned = True
        time.sleep(_POLL_S)
    return {
        "present": os.path.exists(path),
        "seconds": round(time.monotonic() - start, 2),
        "rescanned": rescanned,
    }


def bind_vfio(bdf: str) -> Dict[str, Any]:
    """Bind ``bdf`` to vfio-pci the way setup does (driver_override, then a probe)."""
    base = sysfs.device_path(bdf)
    with open(os.path.join(base, "driver_override"), "w") as fh:
        fh.write(VFIO_DRIVER)
    current = sysfs.driver(bdf)
    if current not in (None, VFIO_DRIVER):
        with open(f"/sys/bus/pci/drivers/{current}/unbind", "w") as fh:
            fh.write(sysfs.normalize_bdf(bdf))
    if sysfs.driver(bdf) is None:
        with open("/sys/bus/pci/drivers_probe", "w") as fh:
            fh.write(sysfs.normalize_bdf(bdf))
    return {"driver": sysfs.driver(bdf), "group": sysfs.iommu_group(bdf)}
