"""Hot removal and re-addition of a device held through VFIO. Runs on the DUT.

A device is removed and re-added in one of three ways: ``sysfs`` (write the device's
``remove``, then rescan its bus), ``slot-power`` (write 0, then 1, to the ``power`` of the
hotplug-capable slot it sits in, /sys/bus/pci/slots/N) or ``qmp`` (QEMU's device_del and
device_add, which the controller drives; nothing of it happens here). The controller runs the
checks only on devices in a hotplug-capable slot (:func:`slot_of`): sysfs removal works on any
device, but removing every device of a host would make a run much longer.

A removal must outlive a call of this module: :func:`hold` opens the device with an eventfd
on its REQ interrupt and keeps it in module state (the DUT agent process persists between
calls), and for a device userspace holds, the kernel blocks the write that removes it until
the device is released (vfio-pci sends REQ and waits), so :func:`remove` issues that write
from a thread and :func:`wait_removal` reports when it returned. :func:`req_count` reads how
often the kernel asked for the device back; :func:`release` closes it all so the removal can
complete; :func:`readd` brings the device back the way it was removed and waits for it.

Functions that touch sysfs take ``root`` (default ``/``), under which ``sys/`` is looked up,
so they run on a fake tree in unit tests.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack
from typing import Any, Dict, List, Optional

from ..core import sysfs, uapi
from ..core.irq import EventFd
from .mapping import device_in_container

VFIO_DEV = "/dev/vfio"
IOMMU_GROUPS = "/sys/kernel/iommu_groups"
VFIO_DRIVER = "vfio-pci"
SYSFS = "sysfs"
SLOT_POWER = "slot-power"
#: The ways this module removes a device (``qmp`` is the controller's).
DUT_WAYS = (SYSFS, SLOT_POWER)
#: How long :func:`remove` waits to catch a write the kernel refuses at once.
REFUSAL_WAIT_S = 0.5
#: How often :func:`readd` writes again while the device is absent.
READD_RETRY_S = 1.0
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


class _Removal:
    """The sysfs write that removes a device, issued from a thread because the kernel blocks
    it while userspace holds the device; ``readd_path`` is what brings the device back."""

    def __init__(self, way: str, path: str, value: str, readd_path: str) -> None:
        self.way = way
        self.path = path
        self.readd_path = readd_path
        self.error: Optional[str] = None
        self.seconds: Optional[float] = None
        self.start = time.monotonic()
        self.thread = threading.Thread(
            target=self._write, args=(value,), name=f"hotplug {path}", daemon=True
        )
        self.thread.start()

    def _write(self, value: str) -> None:
        self.error = _write_sysfs(self.path, value)
        self.seconds = round(time.monotonic() - self.start, 2)

    def wait(self, timeout_s: float) -> Dict[str, Any]:
        """Wait up to ``timeout_s`` for the write to return; what became of it."""
        self.thread.join(timeout_s)
        returned = not self.thread.is_alive()
        return {
            "way": self.way,
            "path": self.path,
            "returned": returned,
            "seconds": self.seconds if returned else round(time.monotonic() - self.start, 2),
            "error": self.error,
        }


_held: Dict[str, _Holder] = {}
_removals: Dict[str, _Removal] = {}


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _write_sysfs(path: str, value: str) -> Optional[str]:
    """Write ``value`` to the sysfs attribute ``path`` in one write; the error, or None."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _read_sysfs(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def snapshot(bdf: str) -> Dict[str, Any]:
    """``bdf``'s IOMMU group and the devices in it, and what hot removal could leak: VFIO
    group nodes, IOMMU groups and this process's fds."""
    group = sysfs.iommu_group(bdf)
    return {
        "group": group,
        "group_devices": sysfs.group_devices(group),
        "vfio_groups": sorted(n for n in os.listdir(VFIO_DEV) if n != "vfio"),
        "iommu_groups": len(os.listdir(IOMMU_GROUPS)),
        "fds": _fd_count(),
    }


def slot_of(bdf: str, root: str = "/") -> Optional[Dict[str, Any]]:
    """The hotplug-capable slot ``bdf`` sits in, or None: ``{"name", "path", "driver",
    "functions", "system_vendor"}``: the slot's hotplug driver (``pciehp``, ``acpiphp``, ...),
    the PCI functions in it (powering it off removes them all) and the machine's DMI vendor
    (``QEMU`` for a QEMU guest, whose slots eject their card when powered off).

    A slot is a directory of /sys/bus/pci/slots whose ``address`` is the device's
    ``domain:bus:slot``; it is hotplug-capable when a hotplug driver gave it a ``power``
    attribute.
    """
    where = sysfs.normalize_bdf(bdf).rsplit(".", 1)[0]
    slots = os.path.join(root, "sys/bus/pci/slots")
    try:
        names = sorted(os.listdir(slots))
    except FileNotFoundError:
        return None
    for name in names:
        path = os.path.join(slots, name)
        try:
            address = _read_sysfs(os.path.join(path, "address"))
        except FileNotFoundError:
            continue
        if address == where and os.path.exists(os.path.join(path, "power")):
            module = os.path.join(path, "module")
            return {
                "name": name,
                "path": path,
                "driver": os.path.basename(os.readlink(module)) if os.path.islink(module) else None,
                "functions": sorted(
                    d
                    for d in os.listdir(os.path.join(root, "sys/bus/pci/devices"))
                    if d.startswith(where + ".")
                ),
                "system_vendor": _system_vendor(root),
            }
    return None


def _system_vendor(root: str) -> Optional[str]:
    try:
        return _read_sysfs(os.path.join(root, "sys/class/dmi/id/sys_vendor"))
    except FileNotFoundError:
        return None


def bus_rescan_path(bdf: str, root: str = "/") -> str:
    """The ``rescan`` of the bus ``bdf`` sits on (it outlives the device), else the global
    one."""
    bus = sysfs.normalize_bdf(bdf).rsplit(":", 1)[0]
    path = os.path.join(root, "sys/class/pci_bus", bus, "rescan")
    return path if os.path.exists(path) else os.path.join(root, "sys/bus/pci/rescan")


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


def release(bdf: str, timeout_s: float = 30.0) -> Dict[str, Any]:
    """Close everything :func:`hold` opened for ``bdf`` (nothing if it holds nothing), then
    wait up to ``timeout_s`` for the removal it held up, if any, to return (its write holds an
    fd of this process until then)."""
    bdf = sysfs.normalize_bdf(bdf)
    holder = _held.pop(bdf, None)
    if holder is not None:
        holder.close()
    removal = _removals.get(bdf)
    return {
        "released": holder is not None,
        "removal": removal.wait(timeout_s) if removal is not None else None,
        "fds": _fd_count(),
    }


def remove(bdf: str, way: str, root: str = "/") -> Dict[str, Any]:
    """Start removing ``bdf`` through ``way`` (``sysfs``: write 1 to its ``remove``;
    ``slot-power``: write 0 to its slot's ``power``) from a thread, and return without
    waiting for a removal userspace holds up.

    Raises OSError when the kernel refuses the write at once, ValueError for a way this
    module does not drive or a slot-power removal of a device in no hotplug-capable slot,
    RuntimeError while an earlier removal of ``bdf`` is under way.
    """
    bdf = sysfs.normalize_bdf(bdf)
    if bdf in _removals:
        raise RuntimeError(f"a removal of {bdf} is already under way")
    if way == SYSFS:
        path, value = os.path.join(sysfs.device_path(bdf, root), "remove"), "1"
        readd_path = bus_rescan_path(bdf, root)
    elif way == SLOT_POWER:
        slot = slot_of(bdf, root)
        if slot is None:
            raise ValueError(f"{bdf} is in no hotplug-capable slot")
        path = readd_path = os.path.join(slot["path"], "power")
        value = "0"
    else:
        raise ValueError(f"{way!r} is not one of {DUT_WAYS}")
    removal = _removals[bdf] = _Removal(way, path, value, readd_path)
    status = removal.wait(REFUSAL_WAIT_S)
    if status["error"] is not None:
        del _removals[bdf]
        raise OSError(f"removing {bdf} through {way}: writing {value} to {path}: {status['error']}")
    return status


def wait_removal(bdf: str, timeout_s: float = 30.0) -> Dict[str, Any]:
    """Wait up to ``timeout_s`` for the write :func:`remove` issued to return: whether it did,
    after how long since it was issued, and its error (``returned`` False: still blocked)."""
    return _removals[sysfs.normalize_bdf(bdf)].wait(timeout_s)


def readd(bdf: str, timeout_s: float = 30.0, root: str = "/") -> Dict[str, Any]:
    """Bring ``bdf`` back the way :func:`remove` took it away and wait up to ``timeout_s`` for
    it to appear: rescan its bus (``sysfs``) or power its slot on (``slot-power``), again
    every :data:`READD_RETRY_S` while it is absent.

    The slot is powered on only while its ``power`` reads 0: a slot already on is left alone
    (a card inserted into an emulated slot powers it on by itself); pciehp refuses to power on
    a slot whose power-off it has not finished, hence the retries. Refused writes are reported
    in ``writes``, not raised: whether the device came back is what counts. Raises
    RuntimeError while the removal's write is still blocked.
    """
    bdf = sysfs.normalize_bdf(bdf)
    removal = _removals[bdf]
    if removal.thread.is_alive():
        raise RuntimeError(f"the removal of {bdf} ({removal.path}) has not returned yet")
    del _removals[bdf]
    device = sysfs.device_path(bdf, root)
    start = time.monotonic()
    writes: List[Dict[str, Any]] = []
    last_write = start - READD_RETRY_S
    while not os.path.exists(device) and time.monotonic() - start < timeout_s:
        now = time.monotonic()
        if now - last_write >= READD_RETRY_S and (
            removal.way == SYSFS or _read_sysfs(removal.readd_path) == "0"
        ):
            last_write = now
            error = _write_sysfs(removal.readd_path, "1")
            writes.append({"at": round(now - start, 2), "error": error})
        time.sleep(_POLL_S)
    return {
        "way": removal.way,
        "path": removal.readd_path,
        "writes": writes,
        "present": os.path.exists(device),
        "seconds": round(time.monotonic() - start, 2),
    }


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


def wait_present(bdf: str, timeout_s: float = 30.0, root: str = "/") -> Dict[str, Any]:
    """Wait for ``bdf`` to appear; half way through, ask the PCI core to rescan the buses
    (a slot whose presence change was missed only shows up then)."""
    path = sysfs.device_path(bdf, root)
    start = time.monotonic()
    rescan_error: Optional[str] = None
    rescanned = False
    while not os.path.exists(path) and time.monotonic() - start < timeout_s:
        if not rescanned and time.monotonic() - start > timeout_s / 2:
            rescan_error = _write_sysfs(os.path.join(root, "sys/bus/pci/rescan"), "1")
            rescanned = True
        time.sleep(_POLL_S)
    return {
        "present": os.path.exists(path),
        "seconds": round(time.monotonic() - start, 2),
        "rescanned": rescanned,
        "rescan_error": rescan_error,
    }


def bind_vfio(bdf: str, timeout_s: float = 10.0, root: str = "/") -> Dict[str, Any]:
    """Bind ``bdf`` to vfio-pci the way setup does (driver_override, unbind, then a probe).

    Retried until ``timeout_s``: a device that has just appeared may be probed by its own
    driver concurrently (asynchronous probing, as nvme does), and that driver can win the
    race or refuse the unbind until its probe has finished.
    """
    bdf = sysfs.normalize_bdf(bdf)
    base = sysfs.device_path(bdf, root)
    bus = os.path.join(root, "sys/bus/pci")
    deadline = time.monotonic() + timeout_s
    errors = []
    while True:
        current = sysfs.driver(bdf, root)
        if current == VFIO_DRIVER or time.monotonic() > deadline:
            break
        steps = [(os.path.join(base, "driver_override"), VFIO_DRIVER)]
        if current is not None:
            steps.append((os.path.join(bus, "drivers", current, "unbind"), bdf))
        steps.append((os.path.join(bus, "drivers_probe"), bdf))
        errors += [e for e in (_write_sysfs(path, value) for path, value in steps) if e]
        time.sleep(_POLL_S)
    return {"driver": current, "group": sysfs.iommu_group(bdf, root), "errors": errors}
