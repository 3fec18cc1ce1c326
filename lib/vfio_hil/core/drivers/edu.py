"""Userspace driver for QEMU's ``edu`` educational PCI device (1234:11e8).

Register map from QEMU ``docs/specs/edu.rst``. Registers below 0x80 only accept 32-bit
accesses, the DMA registers from 0x80 are 64 bits wide; other widths are silently ignored
by the device.

Measured on QEMU 7.2, and the reason for the limits enforced here:

* a DMA completes about 100 ms (virtual time) after the command is written;
* the device masks RAM-side DMA addresses to 28 bits, so IOVAs must stay below 256 MiB;
* a transfer reaching the last byte of the 4 KiB device buffer fails an off-by-one range
  check and aborts QEMU, so transfers are capped well below that.
"""

from __future__ import annotations

import time
from typing import Dict

from .. import uapi
from ..device import Device
from ..handle import Closing
from .engine import (
    ENGINES,
    DmaEngine,
    EngineCaps,
    EngineMemory,
    RegisterProbe,
    TimingRegisters,
    Transfer,
)

EDU_VENDOR_ID = 0x1234
EDU_DEVICE_ID = 0x11E8
#: Value of the identification register: version 1.0, magic 0xed.
EDU_ID = 0x010000ED

REG_ID = 0x00
REG_LIVENESS = 0x04
REG_STATUS = 0x20
REG_IRQ_STATUS = 0x24
REG_IRQ_RAISE = 0x60
REG_IRQ_ACK = 0x64
REG_DMA_SRC = 0x80
REG_DMA_DST = 0x88
REG_DMA_COUNT = 0x90
REG_DMA_CMD = 0x98

DMA_CMD_START = 1 << 0
DMA_CMD_TO_RAM = 1 << 1
DMA_CMD_IRQ = 1 << 2
#: Bit set in the interrupt status register when a DMA with DMA_CMD_IRQ completes.
DMA_IRQ = 0x100

#: Device-side address of the device's DMA buffer, and its size.
DMA_BUFFER_ADDR = 0x40000
DMA_BUFFER_SIZE = 4096
#: Largest transfer this driver issues (see the module docstring).
MAX_DMA_SIZE = 2048
#: RAM-side DMA addresses must be below this (28-bit DMA mask).
DMA_IOVA_LIMIT = 1 << 28


def check_dma(iova: int, size: int, offset: int = 0) -> None:
    """Raise ValueError unless the transfer is one this driver can safely issue.

    ``iova`` is the RAM-side address, ``offset`` the position in the device buffer.
    """
    if not 1 <= size <= MAX_DMA_SIZE:
        raise ValueError(f"edu DMA size must be 1..{MAX_DMA_SIZE} bytes, not {size}")
    # "< DMA_BUFFER_SIZE", not "<=": touching the last byte aborts QEMU 7.2.
    if offset < 0 or offset + size >= DMA_BUFFER_SIZE:
        raise ValueError(
            f"edu DMA of {size} bytes at buffer offset {offset:#x} must stay within the "
            f"first {DMA_BUFFER_SIZE - 1} bytes of the device buffer"
        )
    if iova < 0 or iova + size > DMA_IOVA_LIMIT:
        raise ValueError(f"edu DMA IOVA range {iova:#x}+{size:#x} is not below {DMA_IOVA_LIMIT:#x}")


class Edu(Closing):
    """Driver for one edu device opened through VFIO.

    Turns on bus mastering and maps BAR0. The :class:`Device` stays owned by the caller;
    closing the driver only unmaps the BAR.
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        device.enable_bus_master()
        self.bar = device.map_bar(uapi.VFIO_PCI_BAR0_REGION_INDEX)

    def id(self) -> int:
        """The identification register (:data:`EDU_ID` on a genuine edu)."""
        return self.bar.read32(REG_ID)

    def liveness(self, value: int) -> int:
        """Write ``value`` to the liveness register and return what it reads back.

        A live device returns the bitwise inverse of ``value``.
        """
        self.bar.write32(REG_LIVENESS, value)
        return self.bar.read32(REG_LIVENESS)

    def status(self) -> int:
        """The status register."""
        return self.bar.read32(REG_STATUS)

    def irq_status(self) -> int:
        """The interrupt status register: bits raised and not yet acknowledged."""
        return self.bar.read32(REG_IRQ_STATUS)

    def raise_irq(self, value: int) -> None:
        """Set ``value``'s bits in the interrupt status, which fires the interrupt."""
        self.bar.write32(REG_IRQ_RAISE, value)

    def ack_irq(self, value: int) -> None:
        """Clear ``value``'s bits in the interrupt status."""
        self.bar.write32(REG_IRQ_ACK, value)

    def dma_busy(self) -> bool:
        """True while a DMA is in flight."""
        return bool(self.bar.read64(REG_DMA_CMD) & DMA_CMD_START)

    def wait_dma(self, timeout_s: float = 5.0) -> None:
        """Poll until the current DMA completes; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.dma_busy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"edu DMA on {self.device.bdf} still running after {timeout_s}s")
            time.sleep(0.005)

    def start_dma(self, src: int, dst: int, size: int, cmd: int) -> None:
        """Program and start one transfer (``cmd``: :data:`DMA_CMD_TO_RAM`,
        :data:`DMA_CMD_IRQ`); addresses as the device sees them. Does not wait."""
        if self.dma_busy():
            # The device ignores register writes while a DMA runs.
            raise RuntimeError(f"edu DMA on {self.device.bdf} already in progress")
        self.bar.write64(REG_DMA_SRC, src)
        self.bar.write64(REG_DMA_DST, dst)
        self.bar.write64(REG_DMA_COUNT, size)
        self.bar.write64(REG_DMA_CMD, cmd | DMA_CMD_START)

    def _dma(self, src: int, dst: int, size: int, cmd: int, timeout_s: float) -> None:
        self.start_dma(src, dst, size, cmd)
        self.wait_dma(timeout_s)

    def dma_to_device(
        self, iova: int, size: int, offset: int = 0, irq: bool = False, timeout_s: float = 5.0
    ) -> None:
        """Copy ``size`` bytes from RAM at ``iova`` into the device buffer at ``offset``.

        Blocks until the transfer completes. With ``irq`` the device also raises
        :data:`DMA_IRQ` on completion.
        """
        check_dma(iova, size, offset)
        cmd = DMA_CMD_IRQ if irq else 0
        self._dma(iova, DMA_BUFFER_ADDR + offset, size, cmd, timeout_s)

    def dma_from_device(
        self, iova: int, size: int, offset: int = 0, irq: bool = False, timeout_s: float = 5.0
    ) -> None:
        """Copy ``size`` bytes from the device buffer at ``offset`` to RAM at ``iova``.

        Blocks until the transfer completes. With ``irq`` the device also raises
        :data:`DMA_IRQ` on completion.
        """
        check_dma(iova, size, offset)
        cmd = DMA_CMD_TO_RAM | (DMA_CMD_IRQ if irq else 0)
        self._dma(DMA_BUFFER_ADDR + offset, iova, size, cmd, timeout_s)

    def close(self) -> None:
        """Unmap BAR0. Idempotent; the device stays open."""
        self.bar.close()


#: Bytes an :class:`EduEngine` transfer moves by default: a fraction of the device buffer.
ENGINE_UNIT = 256
#: The interrupt status bit :class:`EduEngine` raises (edu's DMA and factorial logic use others).
ENGINE_IRQ_BIT = 0x1000


def is_edu(device: Device) -> bool:
    """True when ``device``'s config space IDs are edu's."""
    return (device.config_read(0x00, 2), device.config_read(0x02, 2)) == (
        EDU_VENDOR_ID,
        EDU_DEVICE_ID,
    )


@ENGINES.register
class EduEngine(DmaEngine):
    """QEMU's edu as a :class:`~.engine.DmaEngine`: its 4 KiB buffer is the payload.

    Device-to-host transfers write the buffer's first bytes; host-to-device transfers load
    them, so :meth:`prime` loads the payload through a staging page of the engine's own, and
    :meth:`holds` writes the buffer out to that page to look at it.
    """

    name = "edu"
    _CAPS = EngineCaps(
        to_host=True,
        from_host=True,
        to_host_size=ENGINE_UNIT,
        from_host_size=ENGINE_UNIT,
        max_transfer=MAX_DMA_SIZE,
        alignment=1,
        address_bits=28,
        irq_indexes=(uapi.VFIO_PCI_INTX_IRQ_INDEX, uapi.VFIO_PCI_MSI_IRQ_INDEX),
    )

    def __init__(self, device: Device, memory: EngineMemory, scratch: bool = False) -> None:
        """``scratch`` is accepted for a uniform interface: edu has no media to protect."""
        super().__init__(device, memory, scratch)
        self.edu = Edu(device)
        try:
            self.staging, self.staging_iova = memory.alloc()
            check_dma(self.staging_iova, MAX_DMA_SIZE)
        except BaseException:
            self.edu.close()
            raise
        self._started = 0.0

    @classmethod
    def matches(cls, device: Device) -> bool:
        """edu by its config space IDs."""
        return is_edu(device)

    @property
    def caps(self) -> EngineCaps:
        """edu's capabilities: both directions, INTx and MSI, a 28-bit address space."""
        return self._CAPS

    def start_to_host(self, iova: int, size: int) -> None:
        """Start writing the buffer's first ``size`` bytes to ``iova``."""
        check_dma(iova, size)
        self._started = time.monotonic()
        self.edu.start_dma(DMA_BUFFER_ADDR, iova, size, DMA_CMD_TO_RAM)

    def start_from_host(self, iova: int, size: int) -> None:
        """Start loading ``size`` bytes at ``iova`` into the buffer's start."""
        check_dma(iova, size)
        self._started = time.monotonic()
        self.edu.start_dma(iova, DMA_BUFFER_ADDR, size, 0)

    def wait(self, timeout_s: float = 10.0) -> Transfer:
        """Poll until the transfer ends; edu always says "ok" (it cannot tell a blocked one)."""
        try:
            self.edu.wait_dma(timeout_s)
        except TimeoutError as exc:
            self.reset()
            return Transfer(False, f"{exc}; device reset", round(timeout_s, 3), timed_out=True)
        return self._timed(self._started, True, "ok")

    def prime(self, data: bytes) -> bytes:
        """Load ``data`` into the buffer (through the staging page); return it."""
        self.staging.fill(data)
        self.from_host(self.staging_iova, len(data))
        return bytes(data)

    def holds(self, data: bytes) -> bool:
        """Write the buffer's start out to the zeroed staging page and compare with ``data``."""
        self.staging.zero()
        self.to_host(self.staging_iova, len(data))
        return self.staging.read(0, len(data)) == bytes(data)

    def raise_irq(self, index: int, timeout_s: float = 10.0) -> Transfer:
        """Set the probe bit in the interrupt status: MSI when enabled, INTx otherwise."""
        start = time.monotonic()
        self.edu.raise_irq(ENGINE_IRQ_BIT)
        return self._timed(start, True, "ok")

    def ack_irq(self) -> None:
        """Clear the probe bit (the device deasserts INTx)."""
        self.edu.ack_irq(ENGINE_IRQ_BIT)

    def reset(self) -> None:
        """Let a transfer in flight end and clear every interrupt status bit."""
        deadline = time.monotonic() + 5.0
        while self.edu.dma_busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.edu.ack_irq(0xFFFFFFFF)

    def timing_registers(self) -> TimingRegisters:
        """The identification register to read; the liveness register to write (it only
        holds the value's inverse for the next read)."""
        return TimingRegisters(self.edu.bar, REG_ID, REG_LIVENESS, 0)

    def probe_registers(self, pattern: int = 0x5A5AA5A5) -> RegisterProbe:
        """The ID register must read :data:`EDU_ID`; the liveness register returns the
        bitwise inverse of what was written."""
        found = self.edu.id()
        problem = (
            "" if found == EDU_ID else f"edu ID register reads {found:#010x}, not {EDU_ID:#010x}"
        )
        read_back = self.edu.liveness(pattern)
        return RegisterProbe(
            bar=uapi.VFIO_PCI_BAR0_REGION_INDEX,
            identity_offset=REG_ID,
            identity_value=found,
            identity_problem=problem,
            scratch_offset=REG_LIVENESS,
            written=pattern,
            read_back=read_back,
            expected_read_back=~pattern & 0xFFFFFFFF,
            mmapped=self.edu.bar.mmapped,
        )

    def identity(self) -> Dict[str, str]:
        """edu's version from its ID register."""
        found = self.edu.id()
        return {"model": "QEMU edu", "version": f"{found >> 24}.{(found >> 16) & 0xFF}"}

    def close(self) -> None:
        """Quiesce and unmap BAR0 (the staging page stays the memory's)."""
        try:
            self.reset()
        finally:
            self.edu.close()
