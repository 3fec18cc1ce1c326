"""IOMMU fault lines of the kernel log (vfio_hil.dut.platform_checks): matching and the split
into foreign, idle and unjudged faults."""

from __future__ import annotations

import pytest

from vfio_hil.dut.platform_checks import iommu_fault, judge_faults

INTEL_61 = (
    "DMAR: [DMA Write NO_PASID] Request device [00:04.0] fault addr 0x4dfd000 "
    "[fault reason 0x05] PTE Write access is not set"
)
INTEL_OLD = (
    "DMAR: [DMA Read] Request device [02:00.0] PASID ffffffff fault addr 1000 [fault reason 06]"
)
INTEL_IR = (
    "DMAR: [INTR-REMAP] Request device [00:1f.0] fault index 0x1a [fault reason 0x25] Blocked"
)
AMD_DEV = (
    "vfio-pci 0000:00:05.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x000b "
    "address=0x10000000 flags=0x0020]"
)
AMD_NODEV = "AMD-Vi: Event logged [IO_PAGE_FAULT device=0000:03:00.1 domain=0x0000 address=0x0]"
AMD_OLD = "AMD-Vi: Event logged [IO_PAGE_FAULT device=03:00.0 domain=0x0000 address=0x0 flags=0x0]"
SMMU = "arm-smmu 2b400000.iommu: Unhandled context fault: fsr=0x402, iova=0x8000, fsynr=0x1"


@pytest.mark.parametrize(
    ("line", "kind", "device"),
    [
        (INTEL_61, "DMA Write", "0000:00:04.0"),
        (INTEL_OLD, "DMA Read", "0000:02:00.0"),
        (INTEL_IR, "INTR-REMAP", "0000:00:1f.0"),
        (AMD_DEV, "IO_PAGE_FAULT", "0000:00:05.0"),
        (AMD_NODEV, "IO_PAGE_FAULT", "0000:03:00.1"),
        (AMD_OLD, "IO_PAGE_FAULT", "0000:03:00.0"),
        (SMMU, "Unhandled context fault", None),
    ],
)
def test_fault_lines(line: str, kind: str, device: str | None) -> None:
    fault = iommu_fault(line)
    assert fault == {"kind": kind, "device": device, "line": line}


@pytest.mark.parametrize(
    "line",
    [
        "DMAR: DRHD: handling fault status reg 2",
        "DMAR-IR: Enabled IRQ remapping in xapic mode",
        "AMD-Vi: Interrupt remapping enabled",
        "vfio_pin_pages_remote: RLIMIT_MEMLOCK (1048576) exceeded",
    ],
)
def test_non_fault_lines(line: str) -> None:
    assert iommu_fault(line) is None


def test_judge_faults() -> None:
    history = [INTEL_61, AMD_DEV, INTEL_IR, SMMU, "nvme nvme0: 1/0/0 default/read/poll queues"]
    foreign, idle, unjudged = judge_faults(
        history, [INTEL_61], driven=["0000:00:04.0", "0000:00:05.0"]
    )
    assert [f["device"] for f in foreign] == ["0000:00:1f.0"]
    assert [f["device"] for f in idle] == ["0000:00:04.0"]
    assert [f["device"] for f in unjudged] == ["0000:00:04.0", "0000:00:05.0", None]


def test_quiet_log() -> None:
    assert judge_faults(["Linux version 6.1.0"], [], driven=[]) == ([], [], [])
