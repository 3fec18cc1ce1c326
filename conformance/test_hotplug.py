"""HP: hot removal of a device userspace holds through VFIO, and its return.

The device is unplugged and plugged back through QEMU's monitor (device_del / device_add on
a PCIe root port), so these checks apply to devices in hotpluggable slots of the virtual
rack. Each check puts the device back, bound to vfio-pci, whatever happens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from vfio_hil.lab.session import DeviceLease, Lab
from vfio_hil_pytest import check

VFIO_H = "include/uapi/linux/vfio.h"
REQ_SPEC = f"{VFIO_H} VFIO_PCI_REQ_IRQ_INDEX; drivers/vfio/pci/vfio_pci_core.c request"
#: Generous: a native PCIe hotplug controller waits 5 s after the attention button before it
#: powers a slot off, and a TCG guest is slow.
REQ_TIMEOUT_S = 30.0
REMOVAL_TIMEOUT_S = 30.0


class HotplugSlot:
    """A device of a virtual host that is unplugged and plugged back through QMP."""

    def __init__(self, lab: Lab, lease: DeviceLease) -> None:
        self.lab = lab
        self.lease = lease
        self.host = lease.host.name
        self.qemu_id = lease.device.qemu_id
        path = f"/machine/peripheral/{self.qemu_id}"
        # What device_add needs to recreate it, as QEMU itself describes the device.
        self.driver = self._qmp("qom-get", path=path, property="type")
        self.bus = self._qmp("qom-get", path=path, property="parent_bus").rsplit("/", 1)[-1]
        self.unplugged = False

    def _qmp(self, command: str, **args: Any) -> Any:
        return self.lab.rack.qmp(self.host, command, **args)

    def _in_qemu(self) -> bool:
        children = self._qmp("qom-list", path="/machine/peripheral")
        return any(child["name"] == self.qemu_id for child in children)

    def call(self, func: str, **kwargs: Any) -> Any:
        """Run ``hotplug.<func>`` on the DUT for this device."""
        return self.lease.call(f"hotplug.{func}", bdf=self.lease.bdf, **kwargs)

    def unplug(self) -> None:
        """Ask QEMU to remove the device (the guest's hotplug driver does the rest)."""
        self.unplugged = True
        self._qmp("device_del", id=self.qemu_id)

    def replug(self) -> dict[str, Any]:
        """Release any holder, wait for the removal to finish, add the device again and bind
        it to vfio-pci. Idempotent; returns what the DUT saw of the device's return."""
        self.call("release")
        if self.unplugged:
            deadline = time.monotonic() + REMOVAL_TIMEOUT_S
            while self._in_qemu():
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.qemu_id} still in QEMU on {self.host} {REMOVAL_TIMEOUT_S:.0f} s "
                        "after device_del and release"
                    )
                time.sleep(0.5)
            self._qmp("device_add", driver=self.driver, id=self.qemu_id, bus=self.bus)
            self.unplugged = False
        present = self.call("wait_present", timeout_s=REMOVAL_TIMEOUT_S)
        if not present["present"]:
            raise RuntimeError(f"{self.lease.bdf} did not come back on {self.host}: {present}")
        return {**present, **self.call("bind_vfio")}


@contextmanager
def hotplug_slot(dut_device: DeviceLease, vfio_lab: Lab) -> Iterator[HotplugSlot]:
    """The device's slot, if it is hotpluggable (else SKIP); put back in any case."""
    vm = dut_device.host.host.vm
    if vm is None:
        pytest.skip(
            f"{dut_device.host.name} is a real host: hotplug is driven through QEMU's monitor"
        )
    slot_of = {d.qemu_id: d for d in vm.devices}.get(dut_device.device.qemu_id or "")
    if slot_of is None or not slot_of.hotplug:
        pytest.skip(f"{dut_device.bdf} is not in a hotpluggable slot of {dut_device.host.name}")
    slot = HotplugSlot(vfio_lab, dut_device)
    try:
        yield slot
    finally:
        slot.replug()


@check(
    "HP-001",
    "Removing a device userspace holds fires its REQ interrupt; the device waits for release",
    level="MUST",
    spec=REQ_SPEC,
    needs=("edu",),
)
def test_removal_fires_req(dut_device: DeviceLease, vfio_lab: Lab, evidence: Any) -> None:
    """When a device goes away (hot unplug, driver unbind) while userspace has it open,
    vfio-pci must ask for it back through the REQ interrupt and wait: the device stays
    present until userspace closes it, rather than vanishing under its mappings."""
    with hotplug_slot(dut_device, vfio_lab) as slot:
        held = slot.call("hold")
        slot.unplug()
        r = slot.call("req_count", timeout_s=REQ_TIMEOUT_S)
        evidence.add("hotplug", {"held": held, "request": r})
        assert r["requests"] >= 1, (
            f"{dut_device.bdf}: no REQ interrupt within {REQ_TIMEOUT_S:.0f} s of its removal "
            "while userspace held it"
        )
        assert r["present"], (
            f"{dut_device.bdf} vanished while userspace still held it open (after {r['seconds']} s)"
        )


@check(
    "HP-002",
    "Once userspace releases a removed device it goes away, leaving no group node or fd",
    level="MUST",
    spec=f"{REQ_SPEC}; Documentation/driver-api/vfio.rst: Groups, Devices, and IOMMUs",
    needs=("edu",),
)
def test_removal_completes_on_release(
    dut_device: DeviceLease, vfio_lab: Lab, evidence: Any
) -> None:
    """Closing the device after the REQ interrupt must let the removal finish: the device
    leaves sysfs, its VFIO group node goes away, and the process keeps no fd of it."""
    with hotplug_slot(dut_device, vfio_lab) as slot:
        before = slot.call("snapshot")
        held = slot.call("hold")
        slot.unplug()
        request = slot.call("req_count", timeout_s=REQ_TIMEOUT_S)
        released = slot.call("release")
        gone = slot.call("wait_gone", group=before["group"], timeout_s=REMOVAL_TIMEOUT_S)
        evidence.add(
            "hotplug",
            {
                "before": before,
                "held": held,
                "request": request,
                "released": released,
                "gone": gone,
            },
        )
        assert gone["gone"], (
            f"{dut_device.bdf} still present {gone['seconds']} s after userspace released it "
            "following its removal"
        )
        assert not gone["group_node"], (
            f"/dev/vfio/{before['group']} still exists after {dut_device.bdf}, its only device, "
            "was removed"
        )
        assert released["fds"] == held["fds_before"], (
            f"the DUT process has {released['fds']} fds after releasing {dut_device.bdf}, "
            f"{held['fds_before']} before holding it"
        )


@check(
    "HP-003",
    "A re-added device appears, binds to vfio-pci and works (config IDs, edu ID register)",
    level="MUST",
    spec=f"{VFIO_H} VFIO_PCI_CONFIG_REGION_INDEX; QEMU docs/specs/edu.rst",
    needs=("edu",),
)
def test_readded_device_works(dut_device: DeviceLease, vfio_lab: Lab, evidence: Any) -> None:
    """After a device is hot-removed and plugged back, it must come back usable through VFIO:
    bound to vfio-pci, config space IDs equal sysfs, the edu ID register reads through
    mmap'ed BAR0, and no VFIO group node or IOMMU group is left over from its first life."""
    with hotplug_slot(dut_device, vfio_lab) as slot:
        before = slot.call("snapshot")
        slot.unplug()
        gone = slot.call("wait_gone", group=before["group"], timeout_s=REMOVAL_TIMEOUT_S)
        assert gone["gone"], f"{dut_device.bdf} not removed within {gone['seconds']} s"
        back = slot.replug()
        ids = dut_device.call("probes.config_ids", bdf=dut_device.bdf)
        mmio = dut_device.call("probes.edu_mmio", bdf=dut_device.bdf)
        after = slot.call("snapshot")
        evidence.add(
            "hotplug",
            {
                "before": before,
                "gone": gone,
                "back": back,
                "config_ids": ids,
                "mmio": mmio,
                "after": after,
            },
        )
    assert back["driver"] == "vfio-pci", (
        f"re-added {dut_device.bdf} is bound to {back['driver']}, not vfio-pci"
    )
    assert (ids["vendor"], ids["device"]) == (ids["sysfs_vendor"], ids["sysfs_device"]), (
        f"re-added {dut_device.bdf}: config region IDs {ids['vendor']:04x}:{ids['device']:04x} "
        f"differ from sysfs {ids['sysfs_vendor']:04x}:{ids['sysfs_device']:04x}"
    )
    assert mmio["id"] == 0x010000ED, (
        f"re-added {dut_device.bdf}: edu ID register reads {mmio['id']:#010x}"
    )
    leftover = (len(after["vfio_groups"]), after["iommu_groups"])
    expected = (len(before["vfio_groups"]), before["iommu_groups"])
    assert leftover == expected, (
        f"after removing and re-adding {dut_device.bdf}: {leftover[0]} VFIO group nodes and "
        f"{leftover[1]} IOMMU groups, {expected[0]} and {expected[1]} before"
    )
