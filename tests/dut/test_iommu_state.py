"""What the IOMMU gives VFIO on a real kernel: the domain a VFIO context attaches, and the
remapping units and kernel log lines the PLAT checks judge."""

from __future__ import annotations

import pytest

from vfio_hil.core import sysfs
from vfio_hil.dut import iommu_state


def test_vfio_gets_a_translating_domain(nvme_bdf: str) -> None:
    domain = iommu_state.VfioDomain.from_dict(iommu_state.vfio_domain(nvme_bdf))
    assert domain.group == sysfs.iommu_group(nvme_bdf)
    assert domain.refusal is None
    assert domain.attached and domain.mapped
    assert domain.iova_ranges and all(first < last for first, last in domain.iova_ranges)
    assert domain.page_sizes is None or domain.page_sizes & 0x1000
    assert domain.host_default in ("DMA", "DMA-FQ", "identity")


def test_the_state_names_every_unit_and_the_remapping_mode() -> None:
    state = iommu_state.IommuState.from_dict(iommu_state.iommu_state())
    assert state.units, "no unit in /sys/class/iommu"
    assert all(unit.registers for unit in state.units)
    assert state.cmdline
    if state.log_from_boot:
        assert state.log["default_domain"]
        assert state.log["ir_mode"] or state.log["amd_ir"]


def test_vfio_vectors_are_delivered_through_remapping(nvme_bdf: str) -> None:
    with open("/proc/interrupts") as fh:
        if " IR-" not in fh.read():
            pytest.skip("interrupt remapping is off on this DUT")
    chips = iommu_state.DeviceIrqChips.from_dict(iommu_state.device_irq_chips(nvme_bdf))
    assert chips.index == "msix"
    assert list(chips.chips) == [f"vfio-msix[0]({nvme_bdf})"]
    assert all(chip.startswith("IR-") for chip in chips.chips.values())
