"""The DMA-engine interface: probe_engine picks a driver by what the device says it is, and
EngineMemory keeps the engine's buffers in its own IOVA window."""

from __future__ import annotations

import re
from typing import Callable, Iterator, Optional, Type

import pytest
from nvme_fake import FakeClock, FakeIommu, FakeNvme, FakePciDevice
from test_core_edu import FakeEduBar

from vfio_hil.core.drivers import EduEngine, NvmeEngine, probe_engine
from vfio_hil.core.drivers.engine import DEFAULT_TIMEOUT_S, DmaEngine, EngineError, EngineMemory
from vfio_hil.core.drivers.nvme import controller, spec
from vfio_hil.core.drivers.nvme.spec import NVME_CLASS

OTHER_CLASS = 0x00FF00  # unclassified, as QEMU's edu and pci-testdev report


@pytest.fixture
def iommu() -> FakeIommu:
    return FakeIommu()


@pytest.fixture
def memory(iommu: FakeIommu) -> Iterator[EngineMemory]:
    with EngineMemory(iommu.map, iommu.unmap) as mem:
        yield mem


@pytest.mark.parametrize(
    ("vendor", "device_id", "class_code", "revision", "driver"),
    [
        (0x144D, 0xA808, NVME_CLASS, 0x00, NvmeEngine),  # Samsung
        (0x8086, 0x0953, NVME_CLASS, 0x01, NvmeEngine),  # Intel
        (0x1B36, 0x0010, NVME_CLASS, 0x02, NvmeEngine),  # QEMU
        (0x1234, 0x11E8, OTHER_CLASS, 0x10, EduEngine),
        (0x1234, 0x11E9, OTHER_CLASS, 0x10, None),
        (0x1B36, 0x0005, OTHER_CLASS, 0x00, None),  # pci-testdev
        (0x8086, 0x10D3, 0x020000, 0x00, None),  # a NIC
        (0x8086, 0x2922, 0x010601, 0x02, None),  # AHCI: mass storage, not NVMe
        (0x144D, 0xA808, 0x010801, 0x00, None),  # NVM subclass with another interface
        (0x144D, 0xA808, 0x010803, 0x00, None),
    ],
)
@pytest.mark.parametrize("scratch", [False, True])
def test_probe_engine_by_class_or_ids(
    iommu: FakeIommu,
    memory: EngineMemory,
    vendor: int,
    device_id: int,
    class_code: int,
    revision: int,
    driver: Optional[Type[DmaEngine]],
    scratch: bool,
) -> None:
    is_edu = (vendor, device_id) == (0x1234, 0x11E8)
    bar = FakeEduBar() if is_edu else FakeNvme(iommu)
    device = FakePciDevice(
        bar, vendor=vendor, device=device_id, class_code=class_code, revision=revision
    )
    engine = probe_engine(device, memory, scratch=scratch)  # type: ignore[arg-type]
    if driver is None:
        assert engine is None
        assert (device.bars_mapped, device.bus_master) == (0, False), "a device no driver drives"
        return
    assert type(engine) is driver
    with engine:
        assert engine.device is device
        if isinstance(engine, NvmeEngine):  # edu has no media: it takes no scratch mark
            assert engine.scratch is engine.ctrl.scratch is scratch
        assert device.bus_master and device.bars_mapped == 1


def _fatal(nvme: FakeNvme) -> None:
    nvme.regs[spec.REG_CSTS] = spec.CSTS_CFS
    nvme.fatal = True


def _never_ready(nvme: FakeNvme) -> None:
    nvme.never_ready = True


def _hang(nvme: FakeNvme) -> None:
    nvme.hang = True  # its first command (Identify) never completes


@pytest.mark.parametrize(
    "fault",
    [
        _fatal,
        _never_ready,
        _hang,
    ],
)
def test_probe_engine_reports_an_nvme_that_does_not_come_up(
    iommu: FakeIommu, memory: EngineMemory, monkeypatch: pytest.MonkeyPatch, fault: Callable
) -> None:
    """probe_engine: "Raises EngineError when a matching device does not come up" (in
    bounded time: the driver's clock is virtual here)."""
    clock = FakeClock()
    monkeypatch.setattr(controller, "time", clock)
    nvme = FakeNvme(iommu)
    fault(nvme)
    device = FakePciDevice(nvme, vendor=0x144D, device=0xA808)
    start = clock.now
    try:
        with pytest.raises(EngineError, match=re.escape(device.bdf)):
            probe_engine(device, memory)  # type: ignore[arg-type]
    finally:
        assert nvme.closed, "BAR0 left mapped"
        assert clock.now - start <= DEFAULT_TIMEOUT_S + 1.0


def test_a_controller_left_in_fatal_status_is_reset_and_comes_up(
    iommu: FakeIommu, memory: EngineMemory
) -> None:
    """CSTS.CFS from a previous owner is what a reset is for: disabling clears it."""
    nvme = FakeNvme(iommu)
    nvme.regs[spec.REG_CC] = spec.CC_EN
    nvme.regs[spec.REG_CSTS] = spec.CSTS_RDY | spec.CSTS_CFS
    engine = probe_engine(FakePciDevice(nvme), memory)  # type: ignore[arg-type]
    assert engine is not None and nvme.resets == 1
    engine.close()


def test_engine_memory_window(iommu: FakeIommu) -> None:
    base, size = 0x200000, 4 * 4096
    with EngineMemory(iommu.map, iommu.unmap, base, size) as mem:
        assert mem.alloc(1)[1] == base
        buf, iova = mem.alloc(4097)
        assert (iova, buf.length) == (base + 4096, 8192)
        assert mem.contains(base + size - 1) and not mem.contains(base + size)
        with pytest.raises(EngineError, match="full"):
            mem.alloc(2 * 4096)
        assert sorted(iommu.maps) == [base, base + 4096]
    assert iommu.maps == {}
    with pytest.raises(ValueError, match="not page aligned"):
        EngineMemory(iommu.map, iommu.unmap, base + 1, size)
