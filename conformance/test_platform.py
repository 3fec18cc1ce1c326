"""PLAT: the platform under the devices — IOMMU translation and interrupt remapping."""

from __future__ import annotations

from vfio_hil.lab.session import HostSession
from vfio_hil_pytest import check

VFIO_RST = "Documentation/driver-api/vfio.rst"


@check(
    "PLAT-001",
    "The IOMMU is enabled and every device under test is in an IOMMU group",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs",
)
def test_iommu_enabled(dut_host: HostSession) -> None:
    """Without a translating IOMMU, VFIO cannot confine a device's DMA: the group is the
    unit of isolation, so every device handed to userspace must sit in one."""
    iommu = dut_host.platform["iommu"]
    assert iommu["kind"] != "none", f"no IOMMU on {dut_host.name}: /sys/class/iommu is empty"
    assert iommu["translation"], (
        f"the {iommu['kind']} IOMMU on {dut_host.name} does not translate DMA "
        f"(default domain types: {iommu.get('default_domain_types')})"
    )
    devices = dut_host.platform["devices"]
    outside = [d.bdf for d in dut_host.devices if devices.get(d.bdf, {}).get("iommu_group") is None]
    assert not outside, f"devices outside any IOMMU group: {', '.join(outside)}"


@check(
    "PLAT-002",
    "Interrupt remapping is enabled",
    level="MUST",
    spec=f"{VFIO_RST}: VFIO Usage Example (allow_unsafe_interrupts); vfio_iommu_type1",
)
def test_interrupt_remapping(dut_host: HostSession) -> None:
    """Without interrupt remapping a device can write an MSI message that targets any vector
    of the host; type1 refuses such platforms unless allow_unsafe_interrupts is set."""
    remap = dut_host.platform["interrupt_remapping"]
    evidence = "; ".join(remap.get("evidence", [])[:3]) or "no remapping message in the kernel log"
    assert remap["enabled"], (
        f"interrupt remapping is not enabled on {dut_host.name} ({evidence}): a device could "
        "forge MSIs, so VFIO needs allow_unsafe_interrupts to attach"
    )
