"""The DMA-engine interface: what a check needs from a device that moves data by DMA and
raises interrupts, whatever the device is.

Modelled on the kernel's VFIO selftests (``vfio_pci_driver_ops``: probe, init, remove,
memcpy_start, memcpy_wait, send_msi), turned to what a conformance check asks of a device:

* a **device-to-host** transfer (the device writes host memory at an IOVA) whose bytes the
  caller knows in advance (:meth:`DmaEngine.prime`);
* a **host-to-device** transfer (the device reads host memory at an IOVA) and a way to ask
  whether the device obtained given bytes (:meth:`DmaEngine.holds`);
* raising an interrupt on a VFIO IRQ index, and acknowledging it;
* a reset to a known state, and a probe of its registers through the mmap'ed BAR.

Drivers sit behind it (:mod:`.edu` for QEMU's edu, :mod:`.nvme` for any NVMe controller);
:func:`probe_engine` returns the engine a device offers, or None. An engine keeps the DMA
memory it needs for itself (queues, staging pages) in an :class:`EngineMemory`: IOVAs from a
window the caller sets aside, so they never collide with the IOVAs a check places.
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Type

from ..device import Device
from ..dma import DmaBuffer
from ..handle import Closing
from ..region import Bar

#: How long a transfer or an interrupt raise may take before the engine gives up on the
#: device, resets it and reports the hang. Generous: a TCG guest is slow.
DEFAULT_TIMEOUT_S = 10.0
PAGE = 4096

#: Maps ``size`` bytes at process address ``vaddr`` to ``iova`` in the device's IOMMU context.
MapFn = Callable[[int, int, int], Any]
#: Unmaps ``[iova, iova + size)``.
UnmapFn = Callable[[int, int], Any]


@dataclass(frozen=True)
class EngineCaps:
    """What an engine can do (a check asks for these, never for a device model)."""

    #: The device can write host memory (device-to-host DMA).
    to_host: bool
    #: The device can read host memory (host-to-device DMA).
    from_host: bool
    #: Bytes one device-to-host transfer of :meth:`DmaEngine.to_host` moves by default.
    to_host_size: int
    #: Bytes one host-to-device transfer of :meth:`DmaEngine.from_host` moves by default.
    from_host_size: int
    #: The largest single transfer the driver issues.
    max_transfer: int
    #: Transfer IOVAs must be multiples of this.
    alignment: int
    #: How many IOVA bits the device drives (its DMA addresses must be below 1 << this).
    address_bits: int
    #: VFIO IRQ indexes :meth:`DmaEngine.raise_irq` can fire (INTx, MSI, MSI-X).
    irq_indexes: Tuple[int, ...]

    @property
    def address_limit(self) -> int:
        """IOVAs the device reaches are below this."""
        return 1 << self.address_bits

    def names(self) -> List[str]:
        """The capability names checks ask for: ``device_registers`` (every engine knows its
        registers), ``dma_engine`` (both directions), ``dma_to_host``, ``dma_from_host``,
        ``device_irq``."""
        names = ["device_registers"]
        if self.to_host and self.from_host:
            names.append("dma_engine")
        if self.to_host:
            names.append("dma_to_host")
        if self.from_host:
            names.append("dma_from_host")
        if self.irq_indexes:
            names.append("device_irq")
        return names


@dataclass(frozen=True)
class Transfer:
    """How one DMA transfer (or interrupt-raising command) ended, as the device said."""

    ok: bool
    #: ``"ok"``, or the device's own words for its failure (an NVMe status, ...).
    status: str
    seconds: float
    #: The device did not finish in time: the engine reset it (the status says so).
    timed_out: bool = False


@dataclass(frozen=True)
class TimingRegisters:
    """Registers an MMIO latency loop may hammer without changing the device's state: one to
    read, and one to write with ``write_value``, in ``bar``."""

    bar: Bar
    read_offset: int
    write_offset: int
    write_value: int


@dataclass(frozen=True)
class RegisterProbe:
    """A read of an identity register and a write/read-back of a scratch register through
    the BAR the engine drives (the MMIO checks' evidence)."""

    bar: int
    identity_offset: int
    identity_value: int
    #: Why the identity value is right for this device, or why not ("" when right).
    identity_problem: str
    scratch_offset: int
    written: int
    read_back: int
    expected_read_back: int
    mmapped: bool


class EngineError(RuntimeError):
    """The engine could not be brought up (the device did not answer as its driver expects)."""


class EngineMemory(Closing):
    """DMA memory an engine keeps for itself, mapped in the device's IOMMU context.

    Buffers get IOVAs from ``[base, base + size)`` in order; closing unmaps and frees them
    all. ``map_fn``/``unmap_fn`` are the owner's (a :class:`~vfio_hil.core.Container`'s
    ``map_dma``/``unmap_dma``, or an :class:`~vfio_hil.core.IommuBackend`'s).
    """

    #: The default window: below edu's 28-bit DMA limit, far above the IOVAs checks place.
    DEFAULT_BASE = 0x0E000000
    DEFAULT_SIZE = 0x01000000

    def __init__(
        self, map_fn: MapFn, unmap_fn: UnmapFn, base: int = DEFAULT_BASE, size: int = DEFAULT_SIZE
    ) -> None:
        if base % PAGE or size % PAGE:
            raise ValueError(f"engine DMA window {base:#x}+{size:#x} is not page aligned")
        self.base = base
        self.size = size
        self._map = map_fn
        self._unmap = unmap_fn
        self._next = base
        self._live: List[Tuple[DmaBuffer, int]] = []

    @classmethod
    def of(cls, owner: Any, base: int = DEFAULT_BASE, size: int = DEFAULT_SIZE) -> EngineMemory:
        """The window ``[base, base + size)`` of ``owner``, anything with
        ``map_dma(vaddr, iova, size)`` and ``unmap_dma(iova, size)``."""
        return cls(owner.map_dma, owner.unmap_dma, base, size)

    def contains(self, iova: int) -> bool:
        """True when ``iova`` lies in the window (checks keep their own IOVAs out of it)."""
        return self.base <= iova < self.base + self.size

    def alloc(self, size: int = PAGE) -> Tuple[DmaBuffer, int]:
        """A zeroed buffer of ``size`` bytes (whole pages) mapped read-write: ``(buffer,
        iova)``."""
        length = -(-size // PAGE) * PAGE
        if self._next + length > self.base + self.size:
            raise EngineError(f"engine DMA window {self.base:#x}+{self.size:#x} is full")
        buf = DmaBuffer(length)
        iova = self._next
        try:
            self._map(buf.vaddr, iova, buf.length)
        except BaseException:
            buf.close()
            raise
        self._next += length
        self._live.append((buf, iova))
        return buf, iova

    def close(self) -> None:
        """Unmap and free every buffer. Idempotent."""
        while self._live:
            buf, iova = self._live.pop()
            try:
                self._unmap(iova, buf.length)
            finally:
                buf.close()
        self._next = self.base


class DmaEngine(Closing, abc.ABC):
    """A device driven as a DMA engine. Subclasses are the drivers.

    The :class:`~vfio_hil.core.Device` and the :class:`EngineMemory` stay the caller's;
    closing the engine quiesces the device and unmaps its BAR.
    """

    #: The driver's name (``"edu"``, ``"nvme"``), as records show it.
    name: ClassVar[str]

    def __init__(self, device: Device, memory: EngineMemory, scratch: bool = False) -> None:
        self.device = device
        self.memory = memory
        #: The inventory allows commands that write the device's media.
        self.scratch = scratch

    # -- what the device is -------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def matches(cls, device: Device) -> bool:
        """True when this driver drives ``device`` (by its config space IDs or class)."""

    @property
    @abc.abstractmethod
    def caps(self) -> EngineCaps:
        """What this engine can do."""

    def identity(self) -> Dict[str, str]:
        """What the device says it is beyond its PCI IDs (model, serial, firmware), if any."""
        return {}

    def irq_problem(self, index: int) -> str:
        """Why the engine does not raise VFIO IRQ ``index`` although the device has it, when
        the driver found it unusable ("" otherwise)."""
        return ""

    # -- DMA ---------------------------------------------------------------------------

    @abc.abstractmethod
    def start_to_host(self, iova: int, size: int) -> None:
        """Start a device-to-host transfer of ``size`` bytes to ``iova``."""

    @abc.abstractmethod
    def start_from_host(self, iova: int, size: int) -> None:
        """Start a host-to-device transfer of ``size`` bytes from ``iova``."""

    @abc.abstractmethod
    def wait(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> Transfer:
        """Wait for the transfer in flight. A device that does not finish within
        ``timeout_s`` is reset, and the result says ``timed_out``: a hang never hangs the
        caller."""

    def to_host(
        self, iova: int, size: Optional[int] = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> Transfer:
        """The device writes :meth:`prime`'s bytes (``size``, default the engine's unit) to
        host memory at ``iova``; blocks until done."""
        self.start_to_host(iova, self.caps.to_host_size if size is None else size)
        return self.wait(timeout_s)

    def from_host(
        self, iova: int, size: Optional[int] = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> Transfer:
        """The device reads ``size`` bytes (default the engine's unit) of host memory at
        ``iova``; blocks until done."""
        self.start_from_host(iova, self.caps.from_host_size if size is None else size)
        return self.wait(timeout_s)

    @abc.abstractmethod
    def prime(self, data: bytes) -> bytes:
        """Make ``data`` what the next device-to-host transfers write where the engine can
        choose (edu), and return what they will write (for NVMe, its Identify data)."""

    @abc.abstractmethod
    def holds(self, data: bytes) -> bool:
        """True when the device obtained ``data`` (its first :attr:`EngineCaps.from_host_size`
        bytes) through its last host-to-device transfer."""

    # -- interrupts, reset, registers ----------------------------------------------------

    @abc.abstractmethod
    def raise_irq(self, index: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> Transfer:
        """Make the device raise vector 0 of VFIO IRQ ``index`` (wire the eventfd first); the
        interrupt stays pending until :meth:`ack_irq` (level-triggered INTx)."""

    @abc.abstractmethod
    def ack_irq(self) -> None:
        """Acknowledge what :meth:`raise_irq` raised (the device deasserts INTx)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Bring the device back to a known, quiet state ready for transfers."""

    @abc.abstractmethod
    def probe_registers(self, pattern: int = 0x5A5AA5A5) -> RegisterProbe:
        """Read an identity register and write/read back a scratch register through the
        BAR (restored after)."""

    @abc.abstractmethod
    def timing_registers(self) -> TimingRegisters:
        """A register to read and one to write that leave the device as it was, for MMIO
        latency loops (with no interrupt enabled)."""

    def describe(self) -> Dict[str, Any]:
        """The engine, its capabilities and the device's identity, JSON-able (evidence)."""
        return {
            "engine": self.name,
            "capabilities": self.caps.names(),
            "caps": asdict(self.caps),
            "identity": self.identity(),
        }

    def _timed(self, start: float, ok: bool, status: str) -> Transfer:
        return Transfer(ok=ok, status=status, seconds=round(time.monotonic() - start, 6))


@dataclass
class EngineRegistry:
    """The drivers :func:`probe_engine` tries, in order."""

    drivers: List[Type[DmaEngine]] = field(default_factory=list)

    def register(self, driver: Type[DmaEngine]) -> Type[DmaEngine]:
        """Add ``driver`` (usable as a class decorator)."""
        self.drivers.append(driver)
        return driver

    def driver_for(self, device: Device) -> Optional[Type[DmaEngine]]:
        """The first driver that matches ``device``, or None."""
        return next((d for d in self.drivers if d.matches(device)), None)


ENGINES = EngineRegistry()


def probe_engine(
    device: Device, memory: EngineMemory, scratch: bool = False
) -> Optional[DmaEngine]:
    """The DMA engine ``device`` offers (initialised and ready), or None when no driver
    drives it. ``scratch``: the inventory allows commands that write the device's media.
    Raises :class:`EngineError` when a matching device does not come up."""
    driver = ENGINES.driver_for(device)
    return None if driver is None else driver(device, memory, scratch=scratch)
