"""The DUT-side decoders of the IOMMU state: unit registers as sysfs shows them and the kernel
log lines that tell the remapping mode, default domains and warnings."""

from __future__ import annotations

import dataclasses

from vfio_hil.dut.iommu_state import (
    IommuState,
    IommuUnit,
    VfioDomain,
    amd_efr,
    interrupt_chips,
    log_topics,
    unit_registers,
)


def test_intel_registers_are_plain_hex() -> None:
    files = {"intel-iommu/cap": "d2008c22260286", "intel-iommu/ecap": "f00f4a"}
    assert unit_registers(files) == {"cap": 0xD2008C22260286, "ecap": 0xF00F4A}


def test_amd_features_are_not_read_from_sysfs_but_from_the_log() -> None:
    """sysfs shows EFR2:EFR on 6.1 and EFR:EFR2 later; the log line keeps one order."""
    assert unit_registers({"amd-iommu/features": "0:29d3"}) == {}
    line = "[    1.745861] AMD-Vi: Extended features (0x29d3, 0x0): PreF PPR GT IA GA HE"
    assert amd_efr(["[    1.7] AMD-Vi: Interrupt remapping enabled", line]) == 0x29D3
    assert amd_efr(["[    1.7] AMD-Vi: Extended features (0, 0x1):"]) == 0
    assert amd_efr([]) is None


def test_log_topics_keep_the_telling_lines() -> None:
    lines = [
        "Linux version 6.1.0",
        "[    0.345890] DMAR-IR: Enabled IRQ remapping in xapic mode",
        "[    1.326145] iommu: Default domain type: Translated ",
        "[    1.326217] iommu: DMA domain TLB invalidation policy: lazy mode",
        "[    2.1] pci 0000:00:1c.0: Warning: PCIe ACS overrides enabled; This may allow "
        "non-IOMMU protected peer-to-peer DMA",
        "[    1.7] AMD-Vi: Interrupt remapping enabled",
        "[    2.2] unrelated line",
    ]
    topics = log_topics(lines)
    assert topics["ir_mode"] == ["[    0.345890] DMAR-IR: Enabled IRQ remapping in xapic mode"]
    assert topics["default_domain"] == ["[    1.326145] iommu: Default domain type: Translated"]
    assert topics["tlb_policy"][0].endswith("lazy mode")
    assert len(topics["acs_override"]) == 1
    assert topics["amd_ir"] == ["[    1.7] AMD-Vi: Interrupt remapping enabled"]
    assert topics["cfi"] == [] and topics["amd_vapic"] == []


def test_results_survive_the_channel_as_dicts() -> None:
    state = IommuState("iommu=pt", [IommuUnit("dmar0", {"cap": 1})], {"ir_mode": []}, True)
    assert IommuState.from_dict(dataclasses.asdict(state)) == state
    domain = VfioDomain(
        "0000:00:06.0", 3, "identity", "type1v2", True, None, [(0, 4095)], 4096, True
    )
    # JSON turns the ranges into lists; from_dict gives tuples back.
    data = {**dataclasses.asdict(domain), "iova_ranges": [[0, 4095]]}
    assert VfioDomain.from_dict(data) == domain


PROC_INTERRUPTS = """           CPU0       CPU1
  0:        190          0   IR-IO-APIC    2-edge      timer
 24:          0          0   IR-PCI-MSIX-0000:00:06.0    0-edge      vfio-msix[0](0000:00:06.0)
 25:          3          0   PCI-MSI-0000:00:04.0    0-edge      vfio-msi[0](0000:00:04.0)
 26:          9          1   IR-PCI-MSIX-0000:00:06.0    1-edge      nvme0q1
"""


def test_interrupt_chips_of_vfio_vectors() -> None:
    assert interrupt_chips(PROC_INTERRUPTS, "vfio-msix[") == {
        "vfio-msix[0](0000:00:06.0)": "IR-PCI-MSIX-0000:00:06.0"
    }
    assert interrupt_chips(PROC_INTERRUPTS, "vfio-msi[") == {
        "vfio-msi[0](0000:00:04.0)": "PCI-MSI-0000:00:04.0"
    }
    assert interrupt_chips("", "vfio-msi[") == {}
