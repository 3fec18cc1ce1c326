"""HP: hot removal of a device userspace holds through VFIO, and its return.

Each check runs once per way of removing and re-adding the device, and its record names the
way it used:

- ``sysfs``: the DUT writes 1 to the device's ``remove``, then rescans its bus;
- ``slot-power``: the DUT writes 0, then 1, to the ``power`` of the hotplug-capable slot the
  device sits in (/sys/bus/pci/slots/N, pciehp and the like);
- ``qmp``: QEMU's monitor unplugs and plugs the device (device_del / device_add), on virtual
  hosts only.

The checks run on the devices that sit in a hotplug-capable slot (the DUT looks for it) and
SKIP, naming why, on the others: removal through sysfs would work on any device, but removing
every device of a host would make a run much longer. A way that does not apply to a device
SKIPs naming why. Each check puts the device back, present and bound to vfio-pci, whatever
happens.

QEMU's slots eject their card when the guest powers them off, where a real slot keeps it: the
rack's root ports are driven by native PCIe hotplug (pciehp), whose power-off (power indicator
off) makes QEMU unplug the card, as an ACPI hotplug (acpiphp) power-off, an ACPI eject, does
too. On a virtual host the slot-power way therefore puts the card back through QEMU's monitor
before powering the slot on (pciehp, told of the card by its attention button and presence
detection, usually powers the slot on first); on a QEMU guest driven as a lab host nothing
could, so slot-power SKIPs there.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import pytest

from vfio_hil.lab.session import DeviceLease, Lab
from vfio_hil_pytest import check, skip

VFIO_H = "include/uapi/linux/vfio.h"
REQ_SPEC = f"{VFIO_H} VFIO_PCI_REQ_IRQ_INDEX; drivers/vfio/pci/vfio_pci_core.c request"
#: Generous: a native PCIe hotplug controller waits 5 s after the attention button before it
#: powers a slot off, and a TCG guest is slow.
REQ_TIMEOUT_S = 30.0
REMOVAL_TIMEOUT_S = 30.0
SYSFS, SLOT_POWER, QMP = "sysfs", "slot-power", "qmp"
#: Every check runs once per way (test ids ``sysfs``, ``slot-power``, ``qmp``).
over_ways = pytest.mark.parametrize("hotplug_way", [SYSFS, SLOT_POWER, QMP])
#: What a device needs back from device_add besides its type and bus, when it has it: a
#: storage device's block backend (which outlives device_del) and its serial number.
BACKEND_PROPERTIES = ("drive", "serial")


class QemuCard:
    """A device of a virtual host as QEMU holds it, taken out and put back through QMP."""

    def __init__(self, lab: Lab, lease: DeviceLease) -> None:
        self.lab = lab
        self.host = lease.host.name
        if lease.device.qemu_id is None:
            raise RuntimeError(f"{lease.bdf} on {self.host} has no QEMU device id")
        self.qemu_id = lease.device.qemu_id
        path = f"/machine/peripheral/{self.qemu_id}"
        # What device_add needs to recreate it, as QEMU itself describes the device.
        self.driver = self._qmp("qom-get", path=path, property="type")
        self.bus = self._qmp("qom-get", path=path, property="parent_bus").rsplit("/", 1)[-1]
        names = {p["name"] for p in self._qmp("qom-list", path=path)}
        self.properties = {
            name: self._qmp("qom-get", path=path, property=name)
            for name in BACKEND_PROPERTIES
            if name in names
        }

    def _qmp(self, command: str, **args: Any) -> Any:
        return self.lab.rack.qmp(self.host, command, **args)

    def inserted(self) -> bool:
        """Whether QEMU still has the device."""
        children = self._qmp("qom-list", path="/machine/peripheral")
        return any(child["name"] == self.qemu_id for child in children)

    def _holds_backend(self) -> bool:
        # QEMU lets go of a storage device's block backend a little after the device itself;
        # until then device_add refuses the backend as in use.
        drive = self.properties.get("drive")
        return drive is not None and any(
            block["device"] == drive and block.get("qdev") for block in self._qmp("query-block")
        )

    def eject(self) -> None:
        """Ask QEMU to remove the device (the guest's hotplug driver does the rest)."""
        self._qmp("device_del", id=self.qemu_id)

    def wait_ejected(self, timeout_s: float) -> None:
        """Wait for QEMU to let go of the device and of its block backend; RuntimeError after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.inserted() or self._holds_backend():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"QEMU still holds {self.qemu_id} on {self.host} {timeout_s:.0f} s after "
                    "its removal and release"
                )
            time.sleep(0.5)

    def insert(self) -> None:
        """Plug the device back into its slot, as it was created."""
        self._qmp(
            "device_add", driver=self.driver, id=self.qemu_id, bus=self.bus, **self.properties
        )


class HotplugWay(ABC):
    """Removal and return of one leased device in one way. As a context manager it puts the
    device back (present, bound to vfio-pci) on exit, whatever happened."""

    name = ""

    def __init__(self, lease: DeviceLease, slot: dict[str, Any]) -> None:
        self.lease = lease
        self.slot = slot
        self.unplugged = False

    def __enter__(self) -> HotplugWay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.replug()

    def call(self, func: str, **kwargs: Any) -> Any:
        """Run ``hotplug.<func>`` on the DUT for this device."""
        return self.lease.call(f"hotplug.{func}", bdf=self.lease.bdf, **kwargs)

    def record(self, **data: Any) -> dict[str, Any]:
        """The check's ``hotplug`` evidence: the way, the slot, and ``data``."""
        return {"way": self.name, "slot": self.slot, **data}

    def unplug(self) -> dict[str, Any]:
        """Start removing the device; what the removal reported so far."""
        started = self._remove()
        self.unplugged = True
        return started

    def replug(self) -> dict[str, Any]:
        """Release any holder, let the removal finish, add the device again and bind it to
        vfio-pci. Idempotent; returns what the DUT saw of the device's return."""
        self.call("release")
        readded = {}
        if self.unplugged:
            readded = self._readd()
            self.unplugged = False
        present = self.call("wait_present", timeout_s=REMOVAL_TIMEOUT_S)
        if not present["present"]:
            raise RuntimeError(
                f"{self.lease.bdf} did not come back on {self.lease.host.name} through "
                f"{self.name}: {readded} {present}"
            )
        return {**readded, **present, **self.call("bind_vfio")}

    @abstractmethod
    def _remove(self) -> dict[str, Any]:
        """Start the removal; what it reported so far."""

    @abstractmethod
    def _readd(self) -> dict[str, Any]:
        """Once the holder is released: finish the removal and start the re-addition."""


class DutWay(HotplugWay):
    """``sysfs`` or ``slot-power``: the DUT removes the device and adds it back. ``card`` is
    the QEMU device to put back if the slot ejected it (slot-power on a virtual host)."""

    def __init__(
        self, name: str, lease: DeviceLease, slot: dict[str, Any], card: QemuCard | None = None
    ) -> None:
        super().__init__(lease, slot)
        self.name = name
        self.card = card

    def _remove(self) -> dict[str, Any]:
        return self.call("remove", way=self.name)

    def _readd(self) -> dict[str, Any]:
        removal = self.call("wait_removal", timeout_s=REMOVAL_TIMEOUT_S)
        if not removal["returned"] or removal["error"]:
            raise RuntimeError(
                f"removing {self.lease.bdf} through {self.name} did not complete after its "
                f"release: {removal}"
            )
        if self.card is not None:
            # The QEMU slot ejected its card when powered off: put it back, as a real
            # slot would have kept it.
            self.card.wait_ejected(REMOVAL_TIMEOUT_S)
            self.card.insert()
        readd = self.call("readd", timeout_s=REMOVAL_TIMEOUT_S)
        return {"removal": removal, "reinserted_by_qmp": self.card is not None, "readd": readd}


class QmpWay(HotplugWay):
    """``qmp``: QEMU's monitor takes the device out of its slot and puts it back."""

    name = QMP

    def __init__(self, lease: DeviceLease, slot: dict[str, Any], card: QemuCard) -> None:
        super().__init__(lease, slot)
        self.card = card

    def _remove(self) -> dict[str, Any]:
        self.card.eject()
        return {"device_del": self.card.qemu_id}

    def _readd(self) -> dict[str, Any]:
        self.card.wait_ejected(REMOVAL_TIMEOUT_S)
        self.card.insert()
        return {"device_add": self.card.qemu_id}


@pytest.fixture
def hotplug(dut_device: DeviceLease, vfio_lab: Lab, hotplug_way: str) -> HotplugWay:
    """The leased device's removal and return through ``hotplug_way``; SKIPs, naming why,
    where the device sits in no hotplug-capable slot or the way does not apply."""
    host = dut_device.host.name
    slot = dut_device.call("hotplug.slot_of", bdf=dut_device.bdf)
    if slot is None:
        skip(
            "capability",
            f"{dut_device.bdf} is in no hotplug-capable slot of {host} "
            "(HP runs on devices in such slots)",
        )
    virtual = dut_device.host.host.vm is not None
    if hotplug_way == QMP:
        if not virtual:
            skip("lab", f"{host} is not a virtual host: qmp is QEMU's monitor")
        return QmpWay(dut_device, slot, QemuCard(vfio_lab, dut_device))
    others = [f for f in slot["functions"] if f != dut_device.bdf]
    if hotplug_way == SLOT_POWER and others:
        skip(
            "capability",
            f"slot {slot['name']} of {host} also holds {', '.join(others)}: powering it off "
            "would remove them too",
        )
    if hotplug_way == SLOT_POWER and slot["system_vendor"] == "QEMU":
        if not virtual:
            skip(
                "lab",
                f"slot {slot['name']} of {host} is QEMU's, which ejects its card when powered "
                f"off, and {host} is not driven as a virtual host whose monitor could put it back",
            )
        return DutWay(hotplug_way, dut_device, slot, QemuCard(vfio_lab, dut_device))
    return DutWay(hotplug_way, dut_device, slot)


@over_ways
@check(
    "HP-001",
    "Removing a device userspace holds fires its REQ interrupt; the device waits for release",
    level="MUST",
    spec=REQ_SPEC,
    needs=(),
)
def test_removal_fires_req(dut_device: DeviceLease, hotplug: HotplugWay, evidence: Any) -> None:
    """When a device goes away (hot unplug, sysfs removal, slot power-off) while userspace has
    it open, vfio-pci must ask for it back through the REQ interrupt and wait: the device stays
    present until userspace closes it, rather than vanishing under its mappings."""
    bdf = dut_device.bdf
    with hotplug:
        held = hotplug.call("hold")
        removal = hotplug.unplug()
        r = hotplug.call("req_count", timeout_s=REQ_TIMEOUT_S)
        evidence.add("hotplug", hotplug.record(held=held, removal=removal, request=r))
        assert r["requests"] >= 1, (
            f"{bdf}: no REQ interrupt within {REQ_TIMEOUT_S:.0f} s of its removal through "
            f"{hotplug.name} while userspace held it"
        )
        assert r["present"], (
            f"{bdf} vanished while userspace still held it open (after {r['seconds']} s, "
            f"removed through {hotplug.name})"
        )


@over_ways
@check(
    "HP-002",
    "Once userspace releases a removed device it goes away, leaving no group node or fd",
    level="MUST",
    spec=f"{REQ_SPEC}; Documentation/driver-api/vfio.rst: Groups, Devices, and IOMMUs",
    needs=(),
)
def test_removal_completes_on_release(
    dut_device: DeviceLease, hotplug: HotplugWay, evidence: Any
) -> None:
    """Closing the device after the REQ interrupt must let the removal finish: the device
    leaves sysfs, its VFIO group node goes away, and the process keeps no fd of it."""
    bdf = dut_device.bdf
    with hotplug:
        before = hotplug.call("snapshot")
        held = hotplug.call("hold")
        removal = hotplug.unplug()
        request = hotplug.call("req_count", timeout_s=REQ_TIMEOUT_S)
        released = hotplug.call("release")
        gone = hotplug.call("wait_gone", group=before["group"], timeout_s=REMOVAL_TIMEOUT_S)
        evidence.add(
            "hotplug",
            hotplug.record(
                before=before,
                held=held,
                removal=removal,
                request=request,
                released=released,
                gone=gone,
            ),
        )
        assert gone["gone"], (
            f"{bdf} still present {gone['seconds']} s after userspace released it following "
            f"its removal through {hotplug.name}"
        )
        # A group with other devices keeps its node.
        assert before["group_devices"] != [bdf] or not gone["group_node"], (
            f"/dev/vfio/{before['group']} still exists after {bdf}, its only device, was "
            f"removed through {hotplug.name}"
        )
        assert released["fds"] == held["fds_before"], (
            f"the DUT process has {released['fds']} fds after releasing {bdf}, "
            f"{held['fds_before']} before holding it"
        )


@over_ways
@check(
    "HP-003",
    "A re-added device appears, binds to vfio-pci and works (config IDs, its DMA engine)",
    level="MUST",
    spec=f"{VFIO_H} VFIO_PCI_CONFIG_REGION_INDEX; drivers/pci/remove.c, drivers/pci/probe.c",
    needs=(),
)
def test_readded_device_works(dut_device: DeviceLease, hotplug: HotplugWay, evidence: Any) -> None:
    """After a device is hot-removed and added back, it must come back usable through VFIO:
    bound to vfio-pci, config space IDs equal sysfs, driven by the same DMA engine as before
    (or by none, as before), and no VFIO group node or IOMMU group left over from its first
    life."""
    bdf = dut_device.bdf
    with hotplug:
        before = hotplug.call("snapshot")
        engine_before = dut_device.call("engines.describe", bdf=bdf)
        removal = hotplug.unplug()
        gone = hotplug.call("wait_gone", group=before["group"], timeout_s=REMOVAL_TIMEOUT_S)
        assert gone["gone"], f"{bdf} not removed through {hotplug.name} within {gone['seconds']} s"
        back = hotplug.replug()
        ids = dut_device.call("probes.config_ids", bdf=bdf)
        engine_after = dut_device.call("engines.describe", bdf=bdf)
        after = hotplug.call("snapshot")
        evidence.add(
            "hotplug",
            hotplug.record(
                before=before,
                engine_before=engine_before,
                removal=removal,
                gone=gone,
                back=back,
                config_ids=ids,
                engine_after=engine_after,
                after=after,
            ),
        )
        evidence.add("engine", engine_after["engine"])
    assert back["driver"] == "vfio-pci", (
        f"{bdf} re-added through {hotplug.name} is bound to {back['driver']}, not vfio-pci"
    )
    assert (ids["vendor"], ids["device"]) == (ids["sysfs_vendor"], ids["sysfs_device"]), (
        f"re-added {bdf}: config region IDs {ids['vendor']:04x}:{ids['device']:04x} "
        f"differ from sysfs {ids['sysfs_vendor']:04x}:{ids['sysfs_device']:04x}"
    )
    assert engine_after["engine"] == engine_before["engine"], (
        f"re-added {bdf}: DMA engine {engine_after['engine']}, "
        f"{engine_before['engine']} before its removal through {hotplug.name}"
    )
    leftover = (len(after["vfio_groups"]), after["iommu_groups"])
    expected = (len(before["vfio_groups"]), before["iommu_groups"])
    assert leftover == expected, (
        f"after removing and re-adding {bdf} through {hotplug.name}: {leftover[0]} VFIO group "
        f"nodes and {leftover[1]} IOMMU groups, {expected[0]} and {expected[1]} before"
    )
