"""RST: device reset through VFIO — VFIO_DEVICE_RESET and its contract, and the PCI hot
(bus or slot) reset with its ownership rule."""

from __future__ import annotations

from typing import Any

from vfio_hil.lab.session import DeviceLease
from vfio_hil_pytest import CDEV_AND_CONTAINER, check, skip

VFIO_H = "include/uapi/linux/vfio.h"
NVME_SPEC = "NVM Express base spec 2.0, 3.7.2 (controller level reset), 3.1 (CC, CSTS)"
NVME_CC_EN = 1
NVME_CSTS_RDY = 1


VFIO_PCI_CORE = "drivers/vfio/pci/vfio_pci_core.c"
#: VFIO_PCI_DEVID_OWNED and VFIO_PCI_DEVID_NOT_OWNED (-2 and -1 as __u32): a device the
#: caller's iommufd owns without a device id of its own, and one it does not own.
DEVID_SENTINELS = (0xFFFF_FFFE, 0xFFFF_FFFF)


def _hot_reset_skip(info: dict[str, Any], bdf: str) -> None:
    # The kernel's answer for a reset it cannot do: vfio_pci_ioctl_get_pci_hot_reset_info()
    # returns -ENODEV when both pci_probe_reset_slot() and pci_probe_reset_bus() refuse.
    if info["ret"] == "-ENODEV":
        skip(
            "capability",
            f"{bdf} has no bus or slot reset (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: ENODEV, "
            f"pci_probe_reset_slot/bus refused: {VFIO_PCI_CORE})",
        )


@check(
    "RST-001",
    "VFIO_DEVICE_RESET stops a running NVMe controller: CC and CSTS return to 0",
    level="MUST",
    spec=f"{VFIO_H} VFIO_DEVICE_RESET; {NVME_SPEC}",
    needs=("nvme",),
    backends=CDEV_AND_CONTAINER,
)
def test_reset_stops_nvme(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """A reset is how the next user of a device gets it in a known state: whatever the
    previous user left running must stop. The check brings the NVMe controller up with the
    library's driver (admin queue in mapped memory, Identify completed), issues
    VFIO_DEVICE_RESET and reads the controller registers: CC (the enable bit and the queue
    entry sizes the check wrote) and CSTS must be 0 again, as every NVMe controller level
    reset requires, while CAP, a read-only register, must read as before (the device is
    alive, not gone)."""
    r = dut_device.call(
        "reset.nvme_reset",
        bdf=dut_device.bdf,
        backend=iommu_backend,
        scratch=dut_device.device.scratch,
    )
    evidence.add("registers", r)
    if "skip" in r:
        skip(r["skip_kind"], r["skip"])
    before, after = r["before"], r["after"]
    assert r["reset"] == "0", f"VFIO_DEVICE_RESET on {dut_device.bdf} got {r['reset']}"
    assert before["CC"] & NVME_CC_EN and before["CSTS"] & NVME_CSTS_RDY, (
        f"{dut_device.bdf} was not running before the reset: CC {before['CC']:#x}, "
        f"CSTS {before['CSTS']:#x}"
    )
    assert after["CAP"] == before["CAP"], (
        f"{dut_device.bdf} CAP changed across the reset: {before['CAP']:#x} -> {after['CAP']:#x}"
    )
    assert after["CC"] == 0 and after["CSTS"] & NVME_CSTS_RDY == 0, (
        f"{dut_device.bdf} still configured after VFIO_DEVICE_RESET: CC {before['CC']:#x} -> "
        f"{after['CC']:#x}, CSTS {before['CSTS']:#x} -> {after['CSTS']:#x}"
    )


@check(
    "RST-002",
    "VFIO_DEVICE_RESET succeeds exactly when the device advertises VFIO_DEVICE_FLAGS_RESET",
    level="MUST",
    spec=f"{VFIO_H} VFIO_DEVICE_RESET, VFIO_DEVICE_FLAGS_RESET",
    backends=CDEV_AND_CONTAINER,
)
def test_reset_contract(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """VFIO_DEVICE_FLAGS_RESET is the promise userspace plans around (QEMU decides from it
    whether it needs a bus reset). A device that advertises it must reset when asked; one
    that does not must refuse with EINVAL instead of pretending. Either way the device must
    still answer afterwards with its own IDs."""
    r = dut_device.call("reset.reset_contract", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("ioctls", r["ioctls"])
    if r["reset_flag"]:
        assert r["reset"] == "0", (
            f"{dut_device.bdf} advertises VFIO_DEVICE_FLAGS_RESET, but the reset got {r['reset']}"
        )
    else:
        assert r["reset"] == "-EINVAL", (
            f"{dut_device.bdf} does not advertise VFIO_DEVICE_FLAGS_RESET, yet the reset got "
            f"{r['reset']} (expected -EINVAL)"
        )
    assert r["ids_after"] == r["ids_before"], (
        f"{dut_device.bdf} IDs {r['ids_before']:#010x} read {r['ids_after']:#010x} after the reset"
    )


@check(
    "RST-003",
    "Hot reset info lists every function the bus or slot reset reaches, with its group",
    level="MUST",
    spec=f"{VFIO_H} VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
    backends=CDEV_AND_CONTAINER,
)
def test_hot_reset_info(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """A bus or slot reset hits every function below the bridge, so VFIO lets a user do one
    only if it owns all their groups, and tells it which: the dependent device list must hold
    the device itself and every function below its slot (at least) or its bus (at most), as
    the sysfs device tree shows them, each with its IOMMU group (under iommufd, where the
    device is opened through its cdev, the kernel names them by device id in the caller's
    iommufd instead: the device itself must have one)."""
    r = dut_device.call("reset.hot_reset_info", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("hot reset info", r)
    _hot_reset_skip(r, dut_device.bdf)
    assert r["ret"] == "0", f"VFIO_DEVICE_GET_PCI_HOT_RESET_INFO on {dut_device.bdf}: {r['ret']}"
    listed = {d["bdf"]: d for d in r["devices"]}
    expected = r["expected"]
    missing = sorted(set(expected["slot"]) - set(listed))
    extra = sorted(set(listed) - set(expected["bus"]))
    assert dut_device.bdf in listed and not missing and not extra, (
        f"hot reset info of {dut_device.bdf} lists {sorted(listed)}; the slot holds "
        f"{expected['slot']}, the bus {expected['bus']}"
    )
    # Under iommufd (the device opened through its cdev) the kernel lists device ids in the
    # caller's iommufd instead of groups (VFIO_PCI_HOT_RESET_FLAG_DEV_ID): the device itself
    # must have a real one, not VFIO_PCI_DEVID_OWNED/NOT_OWNED.
    own = listed.get(dut_device.bdf, {})
    if "devid" in own:
        assert own["devid"] not in DEVID_SENTINELS, (
            f"hot reset info of {dut_device.bdf} under {iommu_backend} gives the device "
            f"itself no device id ({own['devid']:#x})"
        )
    wrong = [
        f"{bdf} in group {d['group']} (sysfs: {r['sysfs_groups'].get(bdf)})"
        for bdf, d in listed.items()
        if "group" in d and r["sysfs_groups"].get(bdf) != d["group"]
    ]
    assert not wrong, f"hot reset info of {dut_device.bdf} lists " + ", ".join(wrong)


@check(
    "RST-004",
    "A hot reset without proof of owning every affected device is refused; with it it works",
    level="MUST",
    spec=(
        f"{VFIO_H} VFIO_DEVICE_PCI_HOT_RESET; {VFIO_PCI_CORE} vfio_pci_ioctl_pci_hot_reset, "
        "vfio_pci_dev_set_hot_reset; drivers/pci/pci.c pci_reset_bus, "
        "pci_bridge_wait_for_secondary_bus; PCIe Base Spec, Link Status (DLLLA)"
    ),
    backends=CDEV_AND_CONTAINER,
)
def test_hot_reset_needs_ownership(
    dut_device: DeviceLease, iommu_backend: str, evidence: Any
) -> None:
    """A hot reset reaches other functions than the caller's device; VFIO must refuse it
    unless the caller proves it owns every affected group by passing their fds. An empty
    list, and a list that misses a group the reset reaches (or offers an unrelated group in
    its place), must get EINVAL; the complete list must reset, which shows the refusals were
    about ownership. Through the device's cdev (iommufd) the proof is the iommufd instead:
    vfio_pci_ioctl_pci_hot_reset() refuses any group fd from a cdev-opened device (EINVAL),
    and the reset with none must work where GET_PCI_HOT_RESET_INFO reports every affected
    device owned by the caller's iommufd (VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED), and be
    refused where it does not.

    The kernel offers the reset before it is asked: a slot or bus it cannot reset answers
    ENODEV to both ioctls (vfio_pci_core.c: pci_probe_reset_slot, pci_probe_reset_bus), and
    the check SKIPs. Past the ownership test vfio_pci_dev_set_hot_reset() calls
    pci_reset_bus(), whose ENOTTY comes from pci_bridge_wait_for_secondary_bus()
    (drivers/pci/pci.c): the bus was reset and the device did not become accessible, as the
    port reports it. That is a FAIL of the platform, and the reason names what broke: a port
    that advertises Data Link Layer Link Active Reporting must set Link Status DLLLA while
    its link is up (the kernel waits for that bit on ports above 5 GT/s; newer kernels also
    read it on slower ports when the device is not ready within a second). QEMU 7.2's
    pcie-root-port under ACPI PCI hotplug (q35's default) leaves it 0 with the device up,
    so an NVMe behind it FAILs there (on Linux 6.1 and 6.12 alike); an edu in the same slot
    PASSes only because the kernel skips the wait when no device on the bus has a power
    management capability (pci_bus_max_d3cold_delay() is 0). The link state before and
    after, and the kernel's lines during the reset, are the evidence."""
    r = dut_device.call("reset.hot_reset_ownership", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("ioctls", r["ioctls"])
    _hot_reset_skip(r["info"], dut_device.bdf)
    if "link_before" in r:
        evidence.add("link", {k: r.get(k) for k in ("link_before", "link_after")})
    if "skip" in r:
        skip(r["skip_kind"], r["skip"])
    if "incomplete_skip" in r:
        skip("lab", f"{dut_device.bdf}: {r['incomplete_skip']}")
    reset = f"VFIO_DEVICE_PCI_HOT_RESET of {dut_device.bdf}"
    if iommu_backend == "iommufd":
        assert r["group_fds"] == "-EINVAL", (
            f"{reset} (opened through its cdev) with a group fd got {r['group_fds']}, "
            "expected -EINVAL: a cdev-opened device proves ownership through its iommufd"
        )
        if not r["owned"]:
            assert r["unowned"] != "0", (
                f"{reset} reset devices its iommufd does not own: {r['info']['devices']}"
            )
            return
        assert r["complete"] == "0", (
            f"{reset} with every device owned by its iommufd got {r['complete']}: {r['failure']}"
        )
        return
    for case, what in (("empty", "no group fd"), ("incomplete", "an incomplete group list")):
        assert r[case] == "-EINVAL", (
            f"{reset} with {what} got {r[case]}, "
            f"expected -EINVAL (groups reached: {r['needed_groups']})"
        )
    assert r["complete"] == "0", (
        f"{reset} with every group {r['needed_groups']} got {r['complete']}: {r['failure']}"
    )
