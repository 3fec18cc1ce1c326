"""GRP, CFG, MMIO, DMA, IRQ: a device driven from userspace through VFIO."""

from __future__ import annotations

from vfio_hil.lab.inventory import DEVICE_MODELS
from vfio_hil.lab.session import DeviceLease
from vfio_hil_pytest import check

VFIO_RST = "Documentation/driver-api/vfio.rst"
EDU_SPEC = "QEMU docs/specs/edu.rst"
EDU_ID = 0x010000ED


@check(
    "GRP-001",
    "The group is viable with all its devices on vfio-pci and attaches to a type1v2 container",
    level="MUST",
    spec=f"{VFIO_RST}: VFIO Usage Example; include/uapi/linux/vfio.h VFIO_GROUP_GET_STATUS",
)
def test_group_viable_and_attaches(dut_device: DeviceLease) -> None:
    """A group is usable only when every member is owned by a VFIO-compatible driver; once
    viable it must attach to a container and accept the type1v2 IOMMU model."""
    r = dut_device.call("probes.group_attach", bdf=dut_device.bdf)
    assert r["viable"], f"group {r['group']} of {dut_device.bdf} is not viable"
    assert r["container_set"], f"group {r['group']} did not report its container as set"
    assert r["iommu_type"] == "type1v2"


@check(
    "CFG-001",
    "Vendor and device IDs read through the VFIO config region equal sysfs",
    level="MUST",
    spec="include/uapi/linux/vfio.h VFIO_PCI_CONFIG_REGION_INDEX",
)
def test_config_ids(dut_device: DeviceLease) -> None:
    """The config region is VFIO's virtualized view of config space: the identity fields pass
    through unchanged, so userspace drivers can match the device they opened."""
    r = dut_device.call("probes.config_ids", bdf=dut_device.bdf)
    got = (r["vendor"], r["device"])
    sysfs = (r["sysfs_vendor"], r["sysfs_device"])
    assert got == sysfs, (
        f"config region says {got[0]:04x}:{got[1]:04x}, sysfs {sysfs[0]:04x}:{sysfs[1]:04x}"
    )
    model = DEVICE_MODELS[dut_device.device.model]
    if model.vendor_id:
        expected = (model.vendor_id, model.device_id)
        assert got == expected, f"{dut_device.bdf} is {got[0]:04x}:{got[1]:04x}, not a {model.name}"


@check(
    "MMIO-001",
    "edu BAR0 through mmap: the ID register reads 0x010000ed, liveness returns the inverse",
    level="MUST",
    spec=f"{EDU_SPEC}; include/uapi/linux/vfio.h VFIO_REGION_INFO_FLAG_MMAP",
    needs=("edu",),
)
def test_edu_mmio(dut_device: DeviceLease) -> None:
    """BAR access through mmap of the region is the fast path of every userspace driver: reads
    and writes must reach the device's registers, not a copy."""
    r = dut_device.call("probes.edu_mmio", bdf=dut_device.bdf)
    assert r["id"] == EDU_ID, f"edu ID register reads {r['id']:#010x}, expected {EDU_ID:#010x}"
    expected = ~r["liveness_written"] & 0xFFFFFFFF
    assert r["liveness_read"] == expected, (
        f"liveness register returned {r['liveness_read']:#010x} for {r['liveness_written']:#010x},"
        f" expected {expected:#010x}"
    )


@check(
    "DMA-001",
    "edu DMA round trip: RAM -> device -> RAM at mapped IOVAs arrives unchanged",
    level="MUST",
    spec=f"{VFIO_RST}: VFIO_IOMMU_MAP_DMA; {EDU_SPEC}",
    needs=("edu", "dma"),
)
def test_edu_dma_roundtrip(dut_device: DeviceLease) -> None:
    """Mapped IOVAs must translate to the buffers userspace pinned: data the device reads from
    one mapping and writes to another arrives byte for byte."""
    r = dut_device.call("probes.edu_dma_roundtrip", bdf=dut_device.bdf, size=1024)
    assert r["match"], (
        f"{r['mismatched_bytes']} of {r['size']} bytes differ after the DMA round trip "
        f"(IOVA {r['iova_src']:#x} -> device -> IOVA {r['iova_dst']:#x})"
    )


@check(
    "IRQ-001",
    "edu raises its MSI: the eventfd counts exactly one interrupt",
    level="MUST",
    spec=f"include/uapi/linux/vfio.h VFIO_DEVICE_SET_IRQS (MSI, eventfd); {EDU_SPEC}",
    needs=("edu", "msi"),
)
def test_edu_msi(dut_device: DeviceLease) -> None:
    """Interrupts reach userspace through eventfds: one MSI raised by the device is exactly one
    count, neither lost nor duplicated."""
    r = dut_device.call("probes.edu_msi", bdf=dut_device.bdf)
    assert r["count"] == 1, f"the MSI eventfd counted {r['count']} interrupts for one raise"
