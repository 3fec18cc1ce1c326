"""GRP: ownership of an IOMMU group — viability, exclusive attachment, the order of the
container protocol, and release of the device when its last fd is closed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from vfio_hil.lab.session import DeviceLease, Lab
from vfio_hil_pytest import check, skip

VFIO_RST = "Documentation/driver-api/vfio.rst"
VFIO_H = "include/uapi/linux/vfio.h"


def _group_partner(lease: DeviceLease) -> str | None:
    """Another PCI function (not a bridge) of the device's IOMMU group, from the setup facts."""
    facts = lease.host.platform["devices"]
    group = facts[lease.bdf]["iommu_group"]
    members = lease.host.platform["iommu_groups"].get(str(group), [])
    others = [m for m in members if m != lease.bdf and not facts.get(m, {}).get("is_bridge")]
    return others[0] if others else None


@contextlib.contextmanager
def _leased(lab: Lab, lease: DeviceLease, bdf: str) -> Iterator[None]:
    """Hold ``bdf`` too while the check rebinds it, when it is a device under test."""
    device = next((d for d in lease.host.devices if d.bdf == bdf), None)
    if device is None:
        yield
        return
    with lab.lease(device):
        yield


@check(
    "GRP-002",
    "A group is not viable while a member is on a host DMA driver; it is once all are on VFIO",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs; {VFIO_H} VFIO_GROUP_FLAGS_VIABLE",
)
def test_group_viability_follows_members(
    dut_device: DeviceLease, vfio_lab: Lab, evidence: Any
) -> None:
    """The group, not the device, is what the IOMMU can isolate. While one member is driven
    by a host driver that uses the kernel DMA API, handing any other member to userspace
    would let that user's device reach the host driver's buffers: the group must report not
    viable and VFIO_GROUP_SET_CONTAINER must refuse it (EPERM: the kernel already owns the
    group's DMA). Once the member is back on vfio-pci the group must be viable and attach
    again. The check puts another function of the group on uio_pci_generic, a generic host
    driver, and restores it after."""
    partner = _group_partner(dut_device)
    if partner is None:
        skip("capability", f"the IOMMU group of {dut_device.bdf} has no other PCI function")
    with _leased(vfio_lab, dut_device, partner):
        r = dut_device.call(
            "ownership.viability_with_host_driver", bdf=dut_device.bdf, other=partner
        )
    evidence.add("ioctls", r.get("ioctls", []))
    if "skip" in r:
        skip(r["skip_kind"], r["skip"])
    host, vfio = r["foreign"], r["vfio"]
    where = f"group {r['group']} of {dut_device.bdf}"
    assert not host["viable"], f"{where} reports viable while {partner} is on {r['host_driver']}"
    assert host["set_container"] == "-EPERM", (
        f"VFIO_GROUP_SET_CONTAINER on {where} with {partner} on {r['host_driver']} got "
        f"{host['set_container']}, expected -EPERM"
    )
    assert vfio["viable"], f"{where} is not viable with {partner} back on vfio-pci"
    assert vfio["set_container"] == "0" and vfio.get("set_iommu") == "0", (
        f"{where} does not attach with every member on vfio-pci: SET_CONTAINER "
        f"{vfio['set_container']}, SET_IOMMU {vfio.get('set_iommu')}"
    )


@check(
    "GRP-003",
    "An attached group cannot be taken again: a second open gets EBUSY, a re-attach EINVAL",
    level="MUST",
    spec=f"{VFIO_H} VFIO_GROUP_SET_CONTAINER; drivers/vfio/group.c vfio_group_fops_open",
)
def test_group_single_owner(dut_device: DeviceLease, evidence: Any) -> None:
    """A group has one owner at a time. While one process holds the group attached to its
    container, nobody may open the group node again (EBUSY), and the open group may not be
    moved to a second container (EINVAL): either would give a second IOMMU context, and so a
    second user, DMA access through the same devices."""
    r = dut_device.call("ownership.second_owner_refused", bdf=dut_device.bdf)
    evidence.add("ioctls", r["ioctls"])
    where = f"group {r['group']} of {dut_device.bdf}"
    assert r["second_open"] == "-EBUSY", (
        f"a second open of attached {where} got {r['second_open']}, expected -EBUSY"
    )
    assert r["reattach"] == "-EINVAL", (
        f"attaching {where} to a second container got {r['reattach']}, expected -EINVAL"
    )


@check(
    "GRP-004",
    "No device fd before the container has an IOMMU model (GET_DEVICE_FD fails with EINVAL)",
    level="MUST",
    spec=f"{VFIO_RST}: VFIO Usage Example; {VFIO_H} VFIO_GROUP_GET_DEVICE_FD",
)
def test_no_device_before_iommu(dut_device: DeviceLease, evidence: Any) -> None:
    """A device fd gives access to a DMA-capable device, so VFIO hands one out only once the
    group is confined: attached to a container whose IOMMU model is set. Before that (group
    not attached, or attached but VFIO_SET_IOMMU not done) VFIO_GROUP_GET_DEVICE_FD must fail
    with EINVAL; after it, the same request must succeed, which shows the refusals were about
    the protocol and not the device name."""
    r = dut_device.call("ownership.device_fd_needs_iommu", bdf=dut_device.bdf)
    evidence.add("ioctls", r["ioctls"])
    for state, what in (
        ("unattached", "with the group not attached"),
        ("no_iommu_model", "with the container's IOMMU model not set"),
    ):
        assert r[state] == "-EINVAL", (
            f"VFIO_GROUP_GET_DEVICE_FD for {dut_device.bdf} {what} got {r[state]}, expected -EINVAL"
        )
    assert r["type1v2"] == "0", (
        f"VFIO_GROUP_GET_DEVICE_FD for {dut_device.bdf} after VFIO_SET_IOMMU got {r['type1v2']}"
    )


@check(
    "GRP-005",
    "Closing every fd releases the device: it unbinds from vfio-pci and binds again",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs; drivers/vfio/vfio_main.c "
    "vfio_unregister_group_dev",
)
def test_release_on_close(dut_device: DeviceLease, evidence: Any) -> None:
    """When a user exits, the kernel must drop everything it held: the device fd, the group
    and container, the DMA mappings and pinned pages, the mapped BAR. vfio-pci's unbind waits
    for the last reference, so a leak shows as an unbind that never returns. The check uses
    the device (a DMA mapping left in place, a BAR mmap'ed), closes every fd, then unbinds the
    device from vfio-pci (it must finish within 10 s), binds it again and reopens it."""
    r = dut_device.call("ownership.release_on_close", bdf=dut_device.bdf)
    evidence.add("release", r)
    assert r["unbind_error"] is None, (
        f"unbinding {dut_device.bdf} from vfio-pci after closing every fd: {r['unbind_error']}"
    )
    assert r["driver_after_unbind"] is None, (
        f"{dut_device.bdf} is still on {r['driver_after_unbind']} after the unbind"
    )
    assert r["driver_after_rebind"] == "vfio-pci", (
        f"{dut_device.bdf} did not bind to vfio-pci again (driver: {r['driver_after_rebind']})"
    )
    assert "reopen_error" not in r, f"{dut_device.bdf} rebound but: {r.get('reopen_error')}"
