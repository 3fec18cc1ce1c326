"""Group ownership on the DUT: who may own an IOMMU group and when VFIO lets go of it.

Also a helper the other check modules share: driver (re)binding through sysfs that always
puts a device back where it was. Functions that
rebind devices restore them in ``finally`` blocks; everything else closes what it opens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import ExitStack, contextmanager, suppress
from typing import Any, Dict, Iterator, Optional

from ..core import sysfs, uapi
from ..core.container import Container
from ..core.dma import DmaBuffer
from ..core.errors import VfioError
from ..core.group import Group, group_node
from .common import Transcript, errno_name, open_device, skipped

PCI_DEVICES = "/sys/bus/pci/devices"
DRIVERS_PROBE = "/sys/bus/pci/drivers_probe"
VFIO_PCI = "vfio-pci"
#: A host driver that binds any PCI function with INTx masking and, unlike vfio-pci,
#: pci-stub and pcieport, takes the group's DMA ownership for the kernel DMA API.
HOST_DRIVER = "uio_pci_generic"
#: How long an unbind from vfio-pci may take once every fd is closed; it blocks while a
#: user still holds the device.
UNBIND_TIMEOUT_S = 10.0
_IOVA = 0x100000


def close_fd(ret: int) -> None:
    """Close ``ret`` if a raw call that should have failed handed out an fd after all."""
    if ret >= 0:
        os.close(ret)


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def driver_override(bdf: str) -> Optional[str]:
    """The device's driver_override, None when unset."""
    with open(os.path.join(PCI_DEVICES, bdf, "driver_override")) as fh:
        value = fh.read().strip()
    return None if value in ("", "(null)") else value


def bind(bdf: str, driver: Optional[str]) -> Optional[str]:
    """Move ``bdf`` to ``driver`` (None: leave it unbound) through driver_override; return the
    driver it ends up on. A probe the driver refuses leaves the device unbound."""
    _write(os.path.join(PCI_DEVICES, bdf, "driver_override"), driver or "\n")
    if sysfs.driver(bdf) is not None:
        _write(os.path.join(PCI_DEVICES, bdf, "driver", "unbind"), bdf)
    if driver is not None:
        # A failed probe leaves the device unbound, which the caller sees in the result.
        with suppress(OSError):
            _write(DRIVERS_PROBE, bdf)
    return sysfs.driver(bdf)


@contextmanager
def restored_binding(bdf: str) -> Iterator[None]:
    """Give ``bdf`` back its driver and driver_override on the way out, whatever happened."""
    driver, override = sysfs.driver(bdf), driver_override(bdf)
    try:
        yield
    finally:
        if sysfs.driver(bdf) != driver:
            bind(bdf, driver)
        _write(os.path.join(PCI_DEVICES, bdf, "driver_override"), override or "\n")


@contextmanager
def loaded_module(name: str) -> Iterator[Optional[str]]:
    """Load kernel module ``name`` for the block; unload it after if it was not loaded.

    Yields None when the module is there, or why it could not be loaded.
    """
    if os.path.isdir(f"/sys/module/{name}"):
        yield None
        return
    modprobe = shutil.which("modprobe") or "/usr/sbin/modprobe"
    proc = subprocess.run([modprobe, name], capture_output=True, text=True)
    if proc.returncode != 0:
        yield f"modprobe {name} failed: {proc.stderr.strip() or proc.returncode}"
        return
    try:
        yield None
    finally:
        subprocess.run([modprobe, "-r", name], capture_output=True)


def viability_with_host_driver(
    bdf: str, other: str, host_driver: str = HOST_DRIVER
) -> Dict[str, Any]:
    """Bind ``other``, a function of ``bdf``'s IOMMU group, to ``host_driver``, then look at
    the group.

    Returns the group status and the VFIO_GROUP_SET_CONTAINER result while ``other`` is on
    the host driver and again once it is back on vfio-pci; ``skip`` says why the state cannot
    be made (:func:`.common.skipped`: the kernel lacks the driver, or it refuses the device).
    """
    bdf, other = sysfs.normalize_bdf(bdf), sysfs.normalize_bdf(other)
    group_number = sysfs.iommu_group(bdf)
    if other not in sysfs.group_devices(group_number):
        raise ValueError(f"{other} is not in IOMMU group {group_number} of {bdf}")
    log = Transcript()
    result: Dict[str, Any] = {"group": group_number, "other": other, "host_driver": host_driver}
    with loaded_module(host_driver) as missing:
        if missing:
            return {**result, **skipped("kernel", missing)}
        with restored_binding(other):
            bound = bind(other, host_driver)
            result["other_driver"] = bound
            if bound != host_driver:
                refused = f"{host_driver} did not bind {other} (now: {bound})"
                return {**result, **skipped("capability", refused)}
            with Group(group_number) as group, Container() as container:
                result["foreign"] = _status_and_attach(group, container, log)
            result["other_driver_after"] = bind(other, VFIO_PCI)
            with Group(group_number) as group, Container() as container:
                result["vfio"] = _status_and_attach(group, container, log)
                if result["vfio"]["set_container"] == "0":
                    result["vfio"]["set_iommu"] = log.add(
                        "VFIO_SET_IOMMU",
                        container.raw_set_iommu(uapi.VFIO_TYPE1v2_IOMMU),
                        iommu_type="VFIO_TYPE1v2_IOMMU",
                    )
    return {**result, "ioctls": log.entries}


def _status_and_attach(group: Group, container: Container, log: Transcript) -> Dict[str, Any]:
    status = group.status()
    log.add("VFIO_GROUP_GET_STATUS", 0, group=group.number, viable=status.viable)
    ret = log.add(
        "VFIO_GROUP_SET_CONTAINER", group.raw_set_container(container.fd), group=group.number
    )
    return {"viable": status.viable, "set_container": ret}


def second_owner_refused(bdf: str) -> Dict[str, Any]:
    """With ``bdf``'s group attached to a type1v2 container, try to take it a second time:
    open its node again, and attach the open group to another container."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()
    with Container() as first, Group.of_device(bdf) as group:
        group.set_container(first)
        first.set_iommu(uapi.VFIO_TYPE1v2_IOMMU)
        second_open = log.open(group_node(group.number)[0])
        close_fd(second_open)
        with Container() as second:
            reattach = log.add(
                "VFIO_GROUP_SET_CONTAINER",
                group.raw_set_container(second.fd),
                group=group.number,
                container="a second container",
            )
        return {
            "group": group.number,
            "second_open": errno_name(min(second_open, 0)),
            "reattach": reattach,
            "ioctls": log.entries,
        }


def device_fd_needs_iommu(bdf: str) -> Dict[str, Any]:
    """Ask for ``bdf``'s device fd with the group unattached, attached to a container that has
    no IOMMU model yet, and after VFIO_SET_IOMMU (which must then work)."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()

    def get_device_fd(state: str) -> str:
        ret = group.raw_get_device_fd(bdf)
        close_fd(ret)
        return log.add("VFIO_GROUP_GET_DEVICE_FD", min(ret, 0), name=bdf, state=state)

    with Group.of_device(bdf) as group, Container() as container:
        unattached = get_device_fd("group not attached")
        group.set_container(container)
        no_model = get_device_fd("attached, no IOMMU model")
        container.set_iommu(uapi.VFIO_TYPE1v2_IOMMU)
        type1v2 = get_device_fd("type1v2 IOMMU set")
    return {
        "unattached": unattached,
        "no_iommu_model": no_model,
        "type1v2": type1v2,
        "ioctls": log.entries,
    }


def _timed_write(path: str, value: str, timeout_s: float) -> Optional[str]:
    """Write ``value`` to ``path`` from a child process; None when done, else what went
    wrong. A child is used because a blocked unbind cannot be interrupted."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", 'printf %s "$1" > "$2"', "sh", value, path],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"still blocked after {timeout_s:.0f} s"
    return None if proc.returncode == 0 else (err.strip() or f"exit {proc.returncode}")


def release_on_close(bdf: str, timeout_s: float = UNBIND_TIMEOUT_S) -> Dict[str, Any]:
    """Use ``bdf`` (container, group, device, a DMA mapping, a mapped BAR), close every fd
    without unmapping, then unbind it from vfio-pci, bind it again and reopen it."""
    bdf = sysfs.normalize_bdf(bdf)
    group_number = sysfs.iommu_group(bdf)
    result: Dict[str, Any] = {"group": group_number}
    with restored_binding(bdf):
        with ExitStack() as stack:
            buffer = stack.enter_context(DmaBuffer(4096))
            container, _group, device = stack.enter_context(open_device(bdf))
            container.map_dma(buffer.vaddr, _IOVA, buffer.length)
            bars = range(uapi.VFIO_PCI_ROM_REGION_INDEX)
            mmapped = [i for i in bars if device.region_info(i).mmappable]
            if mmapped:
                device.map_bar(mmapped[0])
            result["held"] = {"dma_iova": _IOVA, "mmapped_bar": mmapped[:1]}
        # Nothing was unmapped by hand: closing the fds alone must release the DMA mapping,
        # the pinned page and the BAR mapping, or the unbind below blocks.
        result["unbind_error"] = _timed_write(
            os.path.join(PCI_DEVICES, bdf, "driver", "unbind"), bdf, timeout_s
        )
        result["driver_after_unbind"] = sysfs.driver(bdf)
        if result["unbind_error"] is None:
            result["driver_after_rebind"] = bind(bdf, VFIO_PCI)
            try:
                with open_device(bdf) as (_c, _g, reopened):
                    result["reopened_flags"] = reopened.info().flags
            except VfioError as exc:
                result["reopen_error"] = str(exc)
    return result
