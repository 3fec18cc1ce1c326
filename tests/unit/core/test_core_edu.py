"""The edu driver's argument validation and register sequences, on a simulated BAR."""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest

from vfio_hil.core.drivers import edu as edu_mod
from vfio_hil.core.drivers.edu import (
    DMA_BUFFER_ADDR,
    DMA_CMD_IRQ,
    DMA_CMD_START,
    DMA_CMD_TO_RAM,
    MAX_DMA_SIZE,
    Edu,
    check_dma,
)


class FakeEduBar:
    """Registers of an edu device; a DMA stays busy for ``busy_polls`` reads of the command."""

    def __init__(self, busy_polls: int = 2) -> None:
        self.regs: Dict[int, int] = {0x00: 0x010000ED}
        self.busy_polls = busy_polls
        self.transfers: List[Tuple[int, int, int, int]] = []
        self.closed = False
        self._polls = 0

    def read32(self, offset: int) -> int:
        return self.regs.get(offset, 0)

    def write32(self, offset: int, value: int) -> None:
        self.regs[offset] = (~value & 0xFFFFFFFF) if offset == 0x04 else value

    def read64(self, offset: int) -> int:
        if offset == 0x98 and self.regs.get(0x98, 0) & DMA_CMD_START:
            self._polls += 1
            if self._polls > self.busy_polls:
                self.regs[0x98] &= ~DMA_CMD_START
        return self.regs.get(offset, 0)

    def write64(self, offset: int, value: int) -> None:
        self.regs[offset] = value
        if offset == 0x98:
            self._polls = 0
            self.transfers.append((self.regs[0x80], self.regs[0x88], self.regs[0x90], value))

    def close(self) -> None:
        self.closed = True


class FakeDevice:
    bdf = "0000:00:04.0"

    def __init__(self, bar: FakeEduBar) -> None:
        self.bar = bar
        self.bus_master = False

    def enable_bus_master(self) -> None:
        self.bus_master = True

    def map_bar(self, index: int) -> FakeEduBar:
        assert index == 0
        return self.bar


@pytest.fixture
def bar(monkeypatch: pytest.MonkeyPatch) -> FakeEduBar:
    monkeypatch.setattr(edu_mod.time, "sleep", lambda _s: None)
    return FakeEduBar()


@pytest.mark.parametrize(
    ("iova", "size", "offset"),
    [
        (0x100000, 0, 0),
        (0x100000, MAX_DMA_SIZE + 1, 0),
        (0x100000, 4096, 0),
        (0x100000, 16, -1),
        (0x100000, 2048, 2048),  # would reach the buffer's last byte: aborts QEMU 7.2
        (0x100000, 1, 4095),
        (-0x1000, 16, 0),
        ((1 << 28) - 8, 16, 0),  # beyond edu's 28-bit DMA mask
    ],
)
def test_check_dma_rejects(iova: int, size: int, offset: int) -> None:
    with pytest.raises(ValueError):
        check_dma(iova, size, offset)


@pytest.mark.parametrize(
    ("iova", "size", "offset"),
    [(0x100000, 1, 0), (0x100000, MAX_DMA_SIZE, 0), (0, 2048, 2047), ((1 << 28) - 16, 16, 0)],
)
def test_check_dma_accepts(iova: int, size: int, offset: int) -> None:
    check_dma(iova, size, offset)


def test_registers(bar: FakeEduBar) -> None:
    device = FakeDevice(bar)
    with Edu(device) as edu:  # type: ignore[arg-type]
        assert device.bus_master
        assert edu.id() == 0x010000ED
        assert edu.liveness(0x12345678) == 0xEDCBA987
        edu.raise_irq(0x1000)
        assert bar.regs[0x60] == 0x1000
        edu.ack_irq(0x1000)
        assert bar.regs[0x64] == 0x1000
    assert bar.closed


def test_dma_sequences(bar: FakeEduBar) -> None:
    edu = Edu(FakeDevice(bar))  # type: ignore[arg-type]
    edu.dma_to_device(0x100000, 1024)
    edu.dma_from_device(0x200000, 512, offset=16, irq=True)
    assert bar.transfers == [
        (0x100000, DMA_BUFFER_ADDR, 1024, DMA_CMD_START),
        (DMA_BUFFER_ADDR + 16, 0x200000, 512, DMA_CMD_START | DMA_CMD_TO_RAM | DMA_CMD_IRQ),
    ]
    assert not edu.dma_busy()


def test_invalid_dma_touches_no_register(bar: FakeEduBar) -> None:
    edu = Edu(FakeDevice(bar))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        edu.dma_to_device(0x100000, 4096)
    assert bar.transfers == []


def test_dma_timeout_and_busy() -> None:
    bar = FakeEduBar(busy_polls=10**9)
    edu = Edu(FakeDevice(bar))  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        edu.dma_to_device(0x100000, 16, timeout_s=0.05)
    with pytest.raises(RuntimeError, match="in progress"):
        edu.dma_from_device(0x100000, 16)
    assert len(bar.transfers) == 1
