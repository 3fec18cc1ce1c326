"""Device reset through VFIO: VFIO_DEVICE_RESET and the PCI hot (bus or slot) reset.

Every function opens ``bdf`` in an IOMMU context of its own and closes everything before
returning, under ``backend`` (a type1v2 container by default, or iommufd through the
device's cdev; :func:`.common.device_in`). A hot reset's proof of ownership differs between
them: the fds of the groups it reaches, or the iommufd the devices are bound to. The NVMe
reset probe drives the controller with the library's NVMe driver, which disables it again on
the way out if the reset did not.

A hot reset the kernel offered (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO answered) and then failed
is explained from what the kernel waits for after a secondary bus reset, in
drivers/pci/pci.c pci_bridge_wait_for_secondary_bus(): on a PCIe port faster than 5 GT/s
that advertises Data Link Layer Link Active Reporting it waits for the port's Link Status
DLLLA bit, and gives up with ENOTTY ("Data Link Layer Link Active not set in N msec") when
the bit stays 0; otherwise it waits for the first device below to answer config reads
(pci_dev_wait(): "not ready ... after bus reset; giving up", ENOTTY as well).
"""

from __future__ import annotations

import errno
import os
import struct
import time
from contextlib import ExitStack
from typing import Any, Dict, List, Optional, Set

from ..core import pci, sysfs, uapi
from ..core.device import Device
from ..core.drivers import EngineMemory, NvmeController
from ..core.drivers.nvme import is_nvme
from ..core.group import Group
from .common import DEFAULT_BACKEND, Transcript, device_in, open_device, skipped
from .evidence import kmsg_cursor, kmsg_since

PCI_DEVICES = "/sys/bus/pci/devices"

# PCI Express Capability link registers, as include/uapi/linux/pci_regs.h names them.
PCI_EXP_LNKCAP, PCI_EXP_LNKSTA = 0x0C, 0x12
PCI_EXP_LNKCAP_SLS = 0x0000000F
PCI_EXP_LNKCAP_DLLLARC = 0x00100000  # Data Link Layer Link Active Reporting Capable
PCI_EXP_LNKSTA_DLLLA = 0x2000  # Data Link Layer Link Active
# Max Link Speed codes (bit N-1 of the Supported Link Speeds Vector) in GT/s.
LINK_SPEEDS_GTS = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}


def reset_contract(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """VFIO_DEVICE_RESET on ``bdf``, beside whether the device advertises
    VFIO_DEVICE_FLAGS_RESET, and the device's IDs before and after."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()
    with device_in(bdf, backend) as (_iommu, device):
        info = device.info()
        ids_before = device.config_read(0, 4)
        ret = log.add("VFIO_DEVICE_RESET", device.raw_reset())
        ids_after = device.config_read(0, 4)
    return {
        "flags": info.flags,
        "reset_flag": info.resettable,
        "reset": ret,
        "ids_before": ids_before,
        "ids_after": ids_after,
        "ioctls": log.entries,
    }


def nvme_reset(bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Bring ``bdf``'s NVMe controller up with the library's driver (admin queue in mapped
    memory, Identify completed), issue VFIO_DEVICE_RESET, and read the controller registers
    before and after. A device whose class code is not NVMe's SKIPs."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()
    with ExitStack() as stack:
        iommu, device = stack.enter_context(device_in(bdf, backend))
        if not is_nvme(device):
            code = device.config_read(0x08, 4) >> 8
            return skipped("capability", f"{bdf} is not an NVMe controller (class code {code:06x})")
        if not device.info().resettable:
            return skipped("capability", f"{bdf} does not advertise VFIO_DEVICE_FLAGS_RESET")
        memory = stack.enter_context(EngineMemory.of(iommu))
        start = time.monotonic()
        controller = stack.enter_context(NvmeController(device, memory, scratch=scratch))
        ready_s = time.monotonic() - start
        before = controller.registers()
        ret = log.add("VFIO_DEVICE_RESET", device.raw_reset())
        after = controller.registers()
    return {
        "reset": ret,
        "ready_after_s": round(ready_s, 3),
        "before": before,
        "after": after,
        "ioctls": log.entries,
    }


def _hot_reset_info(device: Device, log: Transcript) -> Dict[str, Any]:
    """The devices a hot reset of ``device`` reaches, each with its IOMMU ``group``, or with
    its ``devid`` in the caller's iommufd where the kernel answers with device ids (a device
    opened through its cdev: VFIO_PCI_HOT_RESET_FLAG_DEV_ID); ``ret`` is ``-errno`` (ENODEV:
    no bus or slot reset) when the kernel offers none."""
    ret = device.raw_hot_reset_info()
    if ret < 0 and ret != -errno.ENOSPC:  # ENOSPC: there are devices, and no room for them
        return {"ret": log.add("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", ret), "devices": []}
    info = device.hot_reset_info()
    log.add("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", 0, count=len(info.devices))
    key = "devid" if info.flags & uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID else "group"
    return {
        "ret": "0",
        "flags": info.flags,
        "devices": [{"bdf": d.bdf, key: d.group_id} for d in info.devices],
    }


def _reset_domain(bdf: str) -> Dict[str, List[str]]:
    """What a bus and a slot reset of ``bdf`` would reach, from the sysfs device tree: every
    function below ``bdf``'s parent bridge, and those of them below ``bdf``'s slot."""
    parent = os.path.dirname(os.path.realpath(os.path.join(PCI_DEVICES, bdf)))
    slot = bdf.rsplit(".", 1)[0]
    bus, same_slot = [], []
    for name in sorted(os.listdir(PCI_DEVICES)):
        path = os.path.realpath(os.path.join(PCI_DEVICES, name))
        if not path.startswith(parent + "/"):
            continue
        bus.append(name)
        # The function directly under the parent bridge on the way down to this one.
        top = os.path.relpath(path, parent).split("/")[0]
        if top.rsplit(".", 1)[0] == slot:
            same_slot.append(name)
    return {"bus": bus, "slot": same_slot}


def hot_reset_info(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO for ``bdf`` opened under IOMMU ``backend``, beside
    what sysfs says a bus or slot reset reaches and the IOMMU group of each of those
    functions."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()
    with device_in(bdf, backend) as (_iommu, device):
        info = _hot_reset_info(device, log)
    domain = _reset_domain(bdf)
    groups = {name: _group_of(name) for name in domain["bus"]}
    return {**info, "expected": domain, "sysfs_groups": groups, "ioctls": log.entries}


def _group_of(bdf: str) -> Optional[int]:
    try:
        return sysfs.iommu_group(bdf)
    except FileNotFoundError:
        return None


def _hot_reset(device: Device, groups: List[Group], log: Transcript, what: str) -> str:
    ret = device.raw_hot_reset([g.fd for g in groups])
    return log.add("VFIO_DEVICE_PCI_HOT_RESET", ret, groups=[g.number for g in groups], what=what)


def _foreign_group(needed: Set[int]) -> Optional[Group]:
    """Open some VFIO group the hot reset does not involve, None if none can be opened."""
    for name in sorted(os.listdir("/dev/vfio")):
        if not name.isdigit() or int(name) in needed:
            continue
        try:
            return Group(int(name))
        except OSError:
            continue  # in use by someone else: try the next one
    return None


def _reset_offering_a_foreign_group(
    stack: ExitStack, device: Device, needed: Set[int], log: Transcript, key: str, what: str
) -> Dict[str, str]:
    """A hot reset of ``device`` offered a VFIO group outside ``needed`` (kept open on
    ``stack``): its answer under ``key``, or ``incomplete_skip`` when no such group opens."""
    foreign = _foreign_group(needed)
    if foreign is None:
        return {"incomplete_skip": "no other VFIO group to offer"}
    stack.enter_context(foreign)
    return {key: _hot_reset(device, [foreign], log, what)}


def port_link(config: bytes) -> Optional[Dict[str, Any]]:
    """The link registers of a PCIe port's config space ``config`` that the kernel reads
    after a secondary bus reset; None when it has no PCI Express capability."""
    exp = pci.parse_config(config).find(pci.PCI_CAP_ID_EXP)
    if exp is None or len(config) < exp.offset + PCI_EXP_LNKSTA + 2:
        return None
    (lnkcap,) = struct.unpack_from("<I", config, exp.offset + PCI_EXP_LNKCAP)
    (lnksta,) = struct.unpack_from("<H", config, exp.offset + PCI_EXP_LNKSTA)
    return {
        "max_speed_gts": LINK_SPEEDS_GTS.get(lnkcap & PCI_EXP_LNKCAP_SLS),
        "link_active_reporting": bool(lnkcap & PCI_EXP_LNKCAP_DLLLARC),
        "link_active": bool(lnksta & PCI_EXP_LNKSTA_DLLLA),
    }


def _sysfs_config(bdf: str) -> bytes:
    """``bdf``'s config space as root reads it from sysfs (the device's own registers)."""
    with open(os.path.join(PCI_DEVICES, bdf, "config"), "rb") as fh:
        return fh.read(pci.PCI_CFG_SPACE_SIZE)


def _link_state(bdf: str) -> Dict[str, Any]:
    """Whether ``bdf`` answers config reads, and the link of the port above it (``port``
    None on a root bus or below a conventional PCI bridge)."""
    (vendor,) = struct.unpack_from("<H", _sysfs_config(bdf))
    parent = os.path.basename(os.path.dirname(os.path.realpath(os.path.join(PCI_DEVICES, bdf))))
    state: Dict[str, Any] = {"device_answers": vendor != 0xFFFF, "port": None}
    if os.path.isdir(os.path.join(PCI_DEVICES, parent)):
        link = port_link(_sysfs_config(parent))
        state["port"] = None if link is None else {"bdf": parent, **link}
    return state


def hot_reset_failure(
    bdf: str, ret: str, before: Dict[str, Any], after: Dict[str, Any], kernel_log: List[str]
) -> str:
    """Why a hot reset the kernel had offered failed with ``ret``, from the link state
    ``before`` and ``after`` it (as :func:`_link_state` reads it) and the kernel's lines.

    The offer is drivers/vfio/pci/vfio_pci_core.c vfio_pci_ioctl_pci_hot_reset():
    pci_probe_reset_slot() or pci_probe_reset_bus() succeeded, else the ioctl answers ENODEV.
    After the ownership test (vfio_pci_dev_set_hot_reset(): EINVAL for a missing group) the
    kernel calls pci_reset_bus(); its ENOTTY comes from pci_bridge_wait_for_secondary_bus(),
    documented as "-ENOTTY if the first device on the secondary bus failed to become
    accessible": a reset that was done and did not come back, not one the slot cannot do.
    """
    said = "; ".join(kernel_log) or "nothing in the kernel log"
    port = before.get("port")
    if (
        ret == "-ENOTTY"
        and port is not None
        and port["link_active_reporting"]
        and not port["link_active"]
        and before["device_answers"]
    ):
        return (
            f"port {port['bdf']} advertises Data Link Layer Link Active Reporting (LNKCAP "
            f"DLLLARC) but its Link Status DLLLA read 0 while {bdf} answered behind it, "
            "before any reset: the port breaks the PCIe Link Status promise that "
            "drivers/pci/pci.c pci_bridge_wait_for_secondary_bus() relies on after the "
            f"secondary bus reset, so pci_reset_bus() gave up with ENOTTY (kernel: {said})"
        )
    if ret == "-ENOTTY" and not after["device_answers"]:
        return (
            f"{bdf} did not come back from the secondary bus reset (vendor ID reads 0xffff); "
            "drivers/pci/pci.c pci_bridge_wait_for_secondary_bus() gave up with ENOTTY "
            f"(kernel: {said})"
        )
    if ret == "-ENOTTY":
        return f"pci_reset_bus() gave up with ENOTTY on a reset it had offered (kernel: {said})"
    return f"the kernel answered {ret} (kernel: {said})"


def _complete_reset(
    bdf: str,
    device: Device,
    groups: List[Group],
    log: Transcript,
    what: str,
    result: Dict[str, Any],
) -> None:
    """The hot reset that must work (``groups``: every group it reaches, or none for a device
    opened through its cdev): its answer as ``complete``, the kernel's lines during it, the
    link state after it, and ``failure``, the cause of a failure (:func:`hot_reset_failure`)."""
    cursor = kmsg_cursor()
    result["complete"] = _hot_reset(device, groups, log, what)
    result["complete_kernel_log"] = kmsg_since(cursor)["lines"]
    result["link_after"] = _link_state(bdf)
    if result["complete"] != "0":
        result["failure"] = hot_reset_failure(
            bdf,
            result["complete"],
            result["link_before"],
            result["link_after"],
            result["complete_kernel_log"],
        )


def hot_reset_ownership(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """VFIO_DEVICE_PCI_HOT_RESET on ``bdf`` with and without the proof that the caller owns
    every device the reset reaches, beside the link state before and after the resets.

    Through a container (``backend`` type1v2) the proof is the fds of every group reached:
    the reset is asked with no group fd, with a list that misses a group (a foreign group
    when only one is reached), and with every group. Through the device's cdev (``backend``
    iommufd) the proof is the iommufd the devices are bound to: any group fd is refused, and
    the reset is asked with none, to work where GET_PCI_HOT_RESET_INFO says this iommufd
    owns them all (``owned``; ``unowned`` holds the answer otherwise).
    """
    bdf = sysfs.normalize_bdf(bdf)
    if backend == "iommufd":
        return _cdev_hot_reset_ownership(bdf)
    log = Transcript()
    with ExitStack() as stack:
        _container, own, device = stack.enter_context(open_device(bdf))
        info = _hot_reset_info(device, log)
        if info["ret"] != "0":
            return {"info": info, "ioctls": log.entries}
        needed = {d["group"] for d in info["devices"]}
        result: Dict[str, Any] = {
            "info": info,
            "needed_groups": sorted(needed),
            "link_before": _link_state(bdf),
        }
        groups = {own.number: own}
        for number in sorted(needed - {own.number}):
            try:
                groups[number] = stack.enter_context(Group(number))
            except OSError as exc:
                return {**result, **skipped("lab", f"group {number} the reset reaches: {exc}")}
        result["empty"] = _hot_reset(device, [], log, "no group")
        if len(needed) > 1:
            partial = [groups[n] for n in sorted(needed) if n != own.number]
            result["incomplete"] = _hot_reset(device, partial, log, "all but the own group")
        else:
            result.update(
                _reset_offering_a_foreign_group(
                    stack, device, needed, log, "incomplete", "a foreign group instead of the own"
                )
            )
        full = [groups[n] for n in sorted(needed)]
        _complete_reset(bdf, device, full, log, "every group the reset reaches", result)
    return {**result, "ioctls": log.entries}


def _cdev_hot_reset_ownership(bdf: str) -> Dict[str, Any]:
    """:func:`hot_reset_ownership` of ``bdf`` opened through its cdev, bound to iommufd."""
    log = Transcript()
    with ExitStack() as stack:
        _iommu, device = stack.enter_context(device_in(bdf, "iommufd"))
        info = _hot_reset_info(device, log)
        if info["ret"] != "0":
            return {"info": info, "ioctls": log.entries}
        owned = bool(info["flags"] & uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED)
        result: Dict[str, Any] = {"info": info, "owned": owned, "link_before": _link_state(bdf)}
        # The own group cannot be opened while its device is open through the cdev: any other.
        result.update(
            _reset_offering_a_foreign_group(
                stack,
                device,
                {sysfs.iommu_group(bdf)},
                log,
                "group_fds",
                "a group fd, to a device opened through its cdev",
            )
        )
        if owned:
            _complete_reset(bdf, device, [], log, "no group fd: every device owned", result)
        else:
            result["unowned"] = _hot_reset(device, [], log, "no group fd, devices not owned")
    return {**result, "ioctls": log.entries}
