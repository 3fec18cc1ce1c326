"""DMA isolation through the IOMMU, driven by any device's DMA engine. Runs on the DUT.

Each function opens the device in an IOMMU context of its own (``backend``: type1, type1v2 or
iommufd, see :func:`vfio_hil.core.open_iommu`), drives it through the engine its
driver offers (:mod:`vfio_hil.core.drivers.engine`: QEMU's edu, any NVMe controller, ...),
maps what it needs, has the device DMA to mapped and unmapped IOVAs, and reports what arrived
where, the IOMMU faults the kernel logged for the blocked transfers, and every transfer's
status as the device reported it. Transfers use the engine's own unit (edu: 256 bytes it
chooses; NVMe: its 4096-byte Identify data out, an 8-byte timestamp in) and every IOVA stays
below the engine's address limit and out of its private DMA window.

A blocked DMA is judged by the data (the memory it aimed at is unchanged, the device did not
obtain the bytes) and the kernel log (the IOMMU's fault record); a device's own error status
is evidence, since not every device reports one (edu never does, QEMU 7.2's NVMe neither).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections import deque
from contextlib import ExitStack
from typing import Any, ClassVar, Deque, Dict, List, Optional, Tuple

from ..core import sysfs
from ..core.backend import IommuBackend
from ..core.device import PCI_COMMAND, PCI_COMMAND_MASTER, Device
from ..core.dma import HUGE_2M, DmaBuffer
from ..core.drivers import EngineMemory, Transfer
from ..core.errors import VfioError
from . import evidence
from .common import Fault, Transcript, parse_fault
from .engines import DEFAULT_BACKEND, engine_in_container
from .mapping import READ, RW, hugepages

#: The IOVAs mappings are placed at; all far below every engine's address limit (edu: 28 bits).
IOVA_SRC = 0x100000
IOVA_DST = 0x200000
IOVA_OTHER = 0x300000
IOVA_HUGE = 0x400000  # 2 MiB aligned
#: Everything mapped here lives below this, so a page above it is certainly unmapped.
MAPPED_BELOW = 0x1000000
#: The unmapped IOVA used when the process cannot learn physical addresses.
FALLBACK_UNMAPPED_IOVA = 0x8000000
#: How long a transfer the device cannot even start (no bus mastering) is given: hundreds of
#: times what one takes with bus mastering on (an NVMe command about 1 ms; edu's 100 ms timer).
_STALLED_TIMEOUT_S = 1.5
PAGEMAP = "/proc/self/pagemap"
_PFN_MASK = (1 << 55) - 1
_PRESENT = 1 << 63
#: How many 1 MiB chunks to allocate at most while looking for a page the engine reaches.
_SENTINEL_CHUNKS = 32
_CHUNK = 1 << 20
#: VT-d's fault handler draws three tokens from a rate limit of 10 per 5 s for every fault
#: (the status line, the fault record, and the empty-record read that ends its loop), so only
#: three faults per 5 s window are logged whole: provoked faults are paced so that no window
#: of 5 s (and a margin for the handler's delay) holds more than three. The kernel's window
#: starts at some fault and every fault in it lies within such a window after that one.
_FAULTS_PER_WINDOW = 3
_FAULT_WINDOW_S = 5.25
_FAULT_WAIT_S = 2.0


def dma_fault(line: str) -> Optional[Fault]:
    """The IOMMU DMA page fault a kernel log line reports (Intel VT-d or AMD-Vi, with its
    address and direction), or None for any other line or fault."""
    fault = parse_fault(line)
    return fault if fault is not None and fault.address is not None else None


def _short_bdf(bdf: str) -> str:
    """``0000:00:04.0`` -> ``00:04.0`` (VT-d fault records carry no PCI domain)."""
    return bdf.split(":", 1)[1] if bdf.count(":") == 2 else bdf


def faults_for(lines: List[str], bdf: str, iova: int, access: str) -> List[str]:
    """The log lines among ``lines`` reporting a fault of ``bdf`` on the page of ``iova``."""
    want = _short_bdf(sysfs.normalize_bdf(bdf))
    page = iova & ~(mmap.PAGESIZE - 1)
    found = []
    for line in lines:
        fault = dma_fault(line)
        if (
            fault is not None
            and fault.device is not None
            and _short_bdf(fault.device) == want
            and fault.address is not None
            and fault.address & ~(mmap.PAGESIZE - 1) == page
            and fault.access in (access, None)
        ):
            found.append(line)
    return found


class FaultWatch:
    """The IOMMU fault records the kernel logs from now on."""

    #: When the latest faults were provoked (the DUT agent lives across calls: so does this).
    _provoked: ClassVar[Deque[float]] = deque(maxlen=_FAULTS_PER_WINDOW)

    def __init__(self) -> None:
        self.cursor = evidence.kmsg_cursor()

    @classmethod
    def pace(cls) -> None:
        """Wait, if needed, so that the fault about to be provoked is not rate-limited: until
        the oldest of the last three provoked faults is a window ago."""
        if len(cls._provoked) == _FAULTS_PER_WINDOW:
            wait = cls._provoked[0] + _FAULT_WINDOW_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        cls._provoked.append(time.monotonic())

    def wait_for(self, bdf: str, iova: int, access: str) -> List[str]:
        """The fault lines for ``bdf`` at ``iova`` logged since the watch began; waits a little
        for them (the fault interrupt is handled asynchronously)."""
        deadline = time.monotonic() + _FAULT_WAIT_S
        while True:
            lines = evidence.kmsg_since(self.cursor)["lines"]
            found = faults_for(lines, bdf, iova, access)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def all_faults(self) -> List[str]:
        """Every IOMMU fault line logged since the watch began."""
        lines = evidence.kmsg_since(self.cursor)["lines"]
        return [line for line in lines if dma_fault(line)]


def pfn_of(entry: int) -> Optional[int]:
    """The page frame number in a /proc/self/pagemap entry, or None when the page is not
    present or the process may not see frame numbers (they read as 0 without CAP_SYS_ADMIN)."""
    if not entry & _PRESENT:
        return None
    return entry & _PFN_MASK or None


def _physical_pages(buf: DmaBuffer) -> List[Optional[int]]:
    """The physical address of every page of ``buf`` (None where unknown)."""
    pages = buf.length // mmap.PAGESIZE
    with open(PAGEMAP, "rb") as fh:
        fh.seek(buf.vaddr // mmap.PAGESIZE * 8)
        raw = fh.read(pages * 8)
    pfns = (pfn_of(e) for e in struct.unpack(f"<{len(raw) // 8}Q", raw))
    return [None if pfn is None else pfn * mmap.PAGESIZE for pfn in pfns]


def _sentinel(stack: ExitStack, limit: int) -> Tuple[DmaBuffer, int, Optional[int]]:
    """A page of this process's memory whose physical address the engine can reach (below
    ``limit``), above every IOVA this module maps and outside the engines' private window:
    ``(buffer, offset of the page, physical address)``.

    A device whose IOMMU passes DMA through untranslated would hit exactly this page when
    aiming at that address as an IOVA. Where physical addresses are not visible, the page's
    address is None (the caller then uses an unmapped IOVA without this extra witness).
    """
    window = range(EngineMemory.DEFAULT_BASE, EngineMemory.DEFAULT_BASE + EngineMemory.DEFAULT_SIZE)
    for _ in range(_SENTINEL_CHUNKS):
        chunk = stack.enter_context(DmaBuffer(_CHUNK))
        chunk.fill(b"\x01" * chunk.size)  # fault every page in
        for i, phys in enumerate(_physical_pages(chunk)):
            if phys is None:
                return chunk, 0, None
            if MAPPED_BELOW <= phys < limit - mmap.PAGESIZE and phys not in window:
                return chunk, i * mmap.PAGESIZE, phys
    # All of it out of the engine's reach (a large machine): an unmapped IOVA, no witness.
    return chunk, 0, None


def _nonzero_random(size: int) -> bytes:
    """Random bytes none of which is 0x00 or 0xff: a failed transfer reads as one of those,
    so no byte of it can be mistaken for a leaked one."""
    return bytes(1 + b % 254 for b in os.urandom(size))


class _Bench:
    """A device's DMA engine in its own IOMMU context, with the transcript, the fault watch and
    the transfers of one probe."""

    def __init__(
        self, stack: ExitStack, bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
    ) -> None:
        self.bdf = sysfs.normalize_bdf(bdf)
        self.iommu, self.device, self.engine = stack.enter_context(
            engine_in_container(bdf, scratch, backend)
        )
        self.stack = stack
        self.transcript = Transcript()
        self.watch = FaultWatch()
        self.transfers: List[Dict[str, Any]] = []

    @property
    def out_size(self) -> int:
        """Bytes one device-to-host transfer writes."""
        return self.engine.caps.to_host_size

    @property
    def in_size(self) -> int:
        """Bytes one host-to-device transfer reads."""
        return self.engine.caps.from_host_size

    def buffer(
        self, iova: int, data: Optional[bytes] = None, size: int = mmap.PAGESIZE, flags: int = RW
    ) -> DmaBuffer:
        """New memory (zero, or ``data``) mapped at ``iova`` with ``flags``."""
        return map_buffer(self.stack, self.iommu, self.transcript, iova, data, size, flags)

    def _keep(self, direction: str, iova: int, size: int, transfer: Transfer) -> Transfer:
        self.transfers.append(
            {
                "direction": direction,
                "iova": hex(iova),
                "size": size,
                "status": transfer.status,
                "seconds": transfer.seconds,
                "timed_out": transfer.timed_out,
            }
        )
        return transfer

    def load(self, iova: int, timeout_s: float = 10.0) -> Transfer:
        """The device reads one unit of host memory at ``iova``."""
        return self._keep(
            "to device", iova, self.in_size, self.engine.from_host(iova, timeout_s=timeout_s)
        )

    def store(self, iova: int, timeout_s: float = 10.0) -> Transfer:
        """The device writes its payload (one unit) to host memory at ``iova``."""
        return self._keep(
            "to host", iova, self.out_size, self.engine.to_host(iova, timeout_s=timeout_s)
        )

    def payload(self) -> bytes:
        """Random bytes made the payload where the engine can choose; what stores write."""
        return self.engine.prime(os.urandom(self.out_size))[: self.out_size]

    def blocked(self, iova: int, access: str) -> List[str]:
        """Have the device read (``access="read"``) or write ``iova``, where it must be
        stopped; return the fault lines logged for it."""
        FaultWatch.pace()
        (self.load if access == "read" else self.store)(iova)
        return self.watch.wait_for(self.bdf, iova, access)

    def result(self, **fields: Any) -> Dict[str, Any]:
        """The probe's findings with its transcript, transfers and every fault it caused."""
        return {
            **fields,
            "engine": self.engine.name,
            "backend": self.iommu.name,
            "transfers": self.transfers,
            "faults": self.watch.all_faults(),
            "ioctls": self.transcript.entries,
        }


def map_buffer(
    stack: ExitStack,
    iommu: IommuBackend,
    transcript: Transcript,
    iova: int,
    data: Optional[bytes] = None,
    size: int = mmap.PAGESIZE,
    flags: int = RW,
    page_size: int = mmap.PAGESIZE,
) -> DmaBuffer:
    """New memory holding ``data`` (else zero), mapped at ``iova`` in ``iommu``."""
    buf = stack.enter_context(DmaBuffer(size, page_size=page_size))
    if data is not None:
        buf.fill(data)
    ret = transcript.map(iommu, buf.vaddr, iova, buf.length, flags)
    if ret < 0:
        # The kernel refused an ordinary mapping: a finding, like any strict-tier refusal.
        raise VfioError(-ret, "map DMA", repr(iommu), {"iova": iova, "size": buf.length})
    return buf


def _diff(actual: bytes, expected: bytes) -> Dict[str, Any]:
    """How far ``actual`` is from ``expected``: differing bytes and the first offset."""
    if actual == expected:  # the usual case, without a Python loop over 2 MiB
        return {"differing_bytes": 0, "first_difference": None}
    bad = [i for i, (a, b) in enumerate(zip(actual, expected)) if a != b]
    return {"differing_bytes": len(bad), "first_difference": bad[0] if bad else None}


def _pages(size: int) -> int:
    """``size`` rounded up to whole pages."""
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


def exact_landing(
    bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """DMA at offsets inside mappings lands exactly there: the device writes its payload into
    a multi-page mapping at two unaligned (dword-aligned) offsets, one of them across a page
    boundary; every other byte of the destination must stay zero. Where the device also
    reads host memory, it must obtain exactly the bytes at an unaligned offset of another
    mapping."""
    page = mmap.PAGESIZE
    with ExitStack() as stack:
        bench = _Bench(stack, bdf, scratch, backend)
        write_at, second_at, read_from = page + 0x124, 2 * page + 0x40, 0x300
        size = _pages(second_at + bench.out_size)
        dst = bench.buffer(IOVA_DST, size=size)
        data = bench.payload()
        bench.store(IOVA_DST + write_at)
        bench.store(IOVA_DST + second_at)
        expected = bytearray(size)
        expected[write_at : write_at + len(data)] = data
        expected[second_at : second_at + len(data)] = data
        read_exact = None
        if bench.engine.caps.from_host:
            source = os.urandom(page)
            bench.buffer(IOVA_SRC, source)
            bench.load(IOVA_SRC + read_from)
            read_exact = bench.engine.holds(source[read_from : read_from + bench.in_size])
        return bench.result(**_diff(dst.read(), bytes(expected)), size=size, read_exact=read_exact)


def unmapped_write(
    bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """The device writes to an unmapped IOVA: nothing may change anywhere, and the IOMMU must
    log the fault. The IOVA is the physical address of a page of this process (the sentinel)
    where that is visible, so an IOMMU passing DMA through would be caught writing it."""
    with ExitStack() as stack:
        bench = _Bench(stack, bdf, scratch, backend)
        mapped = bench.buffer(IOVA_DST, size=_pages(bench.out_size))
        sentinel, offset, phys = _sentinel(stack, bench.engine.caps.address_limit)
        target = FALLBACK_UNMAPPED_IOVA if phys is None else phys
        before = sentinel.read(offset, mmap.PAGESIZE)
        bench.payload()
        faults = bench.blocked(target, "write")
        return bench.result(
            iova=target,
            sentinel_physical=phys,
            sentinel_changed=sentinel.read(offset, mmap.PAGESIZE) != before,
            mapped_changed=mapped.read() != bytes(mapped.size),
            fault_lines=faults,
        )


def unmapped_read(
    bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """The device reads from an unmapped IOVA (the sentinel's physical address where known),
    after reading zeros from a mapped one: it must not obtain the secret the sentinel holds,
    and the IOMMU must log the fault."""
    with ExitStack() as stack:
        bench = _Bench(stack, bdf, scratch, backend)
        bench.buffer(IOVA_SRC)  # zeros: what the device holds before the blocked read
        sentinel, offset, phys = _sentinel(stack, bench.engine.caps.address_limit)
        secret = _nonzero_random(bench.in_size)
        sentinel.fill(secret, offset)
        target = FALLBACK_UNMAPPED_IOVA if phys is None else phys
        bench.load(IOVA_SRC)
        faults = bench.blocked(target, "read")
        return bench.result(
            iova=target,
            sentinel_physical=phys,
            leaked=bench.engine.holds(secret),
            size=bench.in_size,
            fault_lines=faults,
        )


def after_unmap(bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """A DMA that worked stops working once its mapping is unmapped, although the memory is
    still the process's: the IOMMU (and its IOTLB) must forget the translation."""
    with ExitStack() as stack:
        bench = _Bench(stack, bdf, scratch, backend)
        dst = bench.buffer(IOVA_DST, size=_pages(bench.out_size))
        data = bench.payload()
        bench.store(IOVA_DST)
        arrived_while_mapped = dst.read(0, len(data)) == data
        dst.zero()
        bench.transcript.unmap(bench.iommu, IOVA_DST, dst.length)
        faults = bench.blocked(IOVA_DST, "write")
        return bench.result(
            iova=IOVA_DST,
            arrived_while_mapped=arrived_while_mapped,
            changed_after_unmap=dst.read() != bytes(dst.size),
            fault_lines=faults,
        )


def read_only_write(
    bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """A mapping without VFIO_DMA_MAP_FLAG_WRITE: the device's write to it must be blocked
    (and logged), while it can read it (where the engine reads host memory at all; None
    otherwise).

    The write comes first: QEMU's VT-d model reports no fault for a write denied by a
    read-only translation it has already cached from an earlier read.
    """
    with ExitStack() as stack:
        bench = _Bench(stack, bdf, scratch, backend)
        size = _pages(bench.out_size)
        original = os.urandom(size)
        ro = bench.buffer(IOVA_OTHER, original, size=size, flags=READ)
        bench.payload()
        faults = bench.blocked(IOVA_OTHER, "write")
        written = ro.read() != original
        readable = None
        if bench.engine.caps.from_host:
            bench.load(IOVA_OTHER)
            # What the mapping holds now: the original, unless the write got through.
            readable = bench.engine.holds(ro.read(0, bench.in_size))
        return bench.result(iova=IOVA_OTHER, readable=readable, written=written, fault_lines=faults)


def cross_container(
    bdf: str, peer: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """Two devices in two IOMMU contexts: memory mapped only in the peer's context at an IOVA
    must be out of reach for ``bdf`` at that IOVA, and within reach for the peer."""
    with ExitStack() as stack:
        bench = _Bench(stack, bdf, scratch, backend)
        other = _Bench(stack, peer, backend=backend)
        size = _pages(max(bench.out_size, other.out_size))
        victim = other.buffer(IOVA_DST, size=size)
        bench.payload()
        faults = bench.blocked(IOVA_DST, "write")
        reached_by_device = victim.read() != bytes(victim.size)
        data = other.payload()
        other.store(IOVA_DST)
        reached_by_peer = victim.read(0, len(data)) == data
        result = bench.result(
            iova=IOVA_DST,
            peer=sysfs.normalize_bdf(peer),
            peer_engine=other.engine.name,
            reached_by_device=reached_by_device,
            reached_by_peer=reached_by_peer,
            fault_lines=faults,
        )
        result["ioctls"] += other.transcript.entries
        result["transfers"] += other.transfers
        return result


def _set_bus_master(device: Device, on: bool) -> int:
    """Set or clear Bus Master Enable; return the command register as read back."""
    command = device.config_read(PCI_COMMAND, 2)
    wanted = command | PCI_COMMAND_MASTER if on else command & ~PCI_COMMAND_MASTER
    device.config_write(PCI_COMMAND, wanted, 2)
    return device.config_read(PCI_COMMAND, 2)


def bus_master_off(
    bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """With Bus Master Enable cleared in the command register the device must not reach
    memory; with it set again the same transfer must arrive. (A device that fetches its
    commands by DMA, as NVMe does, cannot even start the transfer then: it times out and the
    engine resets the device before bus mastering is turned back on.)"""
    with ExitStack() as stack:
        bench = _Bench(stack, bdf, scratch, backend)
        dst = bench.buffer(IOVA_DST, size=_pages(bench.out_size))
        data = bench.payload()
        stack.callback(_set_bus_master, bench.device, True)
        command_off = _set_bus_master(bench.device, False)
        off = bench.store(IOVA_DST, timeout_s=_STALLED_TIMEOUT_S)
        arrived_while_off = dst.read() != bytes(dst.size)
        command_on = _set_bus_master(bench.device, True)
        if off.timed_out:
            bench.engine.reset()
        bench.store(IOVA_DST)
        return bench.result(
            command_off=command_off,
            command_on=command_on,
            arrived_while_off=arrived_while_off,
            arrived_when_on=dst.read(0, len(data)) == data,
        )


def hugepage_dma(bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """DMA into a 2 MiB huge-page mapping lands at the right offsets: one deep in its first
    half, one ending just before its last bytes, and nowhere else."""
    with hugepages(1) as unavailable:
        if unavailable:
            return unavailable
        with ExitStack() as stack:
            bench = _Bench(stack, bdf, scratch, backend)
            huge = map_buffer(
                stack, bench.iommu, bench.transcript, IOVA_HUGE, size=HUGE_2M, page_size=HUGE_2M
            )
            huge.zero()
            data = bench.payload()
            offsets = (0x100800, HUGE_2M - len(data) - 0x10)
            expected = bytearray(HUGE_2M)
            for at in offsets:
                bench.store(IOVA_HUGE + at)
                expected[at : at + len(data)] = data
            return bench.result(**_diff(huge.read(), bytes(expected)), offsets=list(offsets))
