"""A fake NVMe controller for the driver's unit tests: no VM, no /dev/vfio.

* :class:`FakeIommu` is the device's IOMMU context: IOVA ranges an :class:`EngineMemory` (or
  a test) maps to process memory (the address of a real :class:`DmaBuffer`). The controller
  "DMAs" through it; an IOVA nobody mapped is a blocked DMA, recorded as a fault.
* :class:`FakeNvme` is BAR0 of a controller (CAP, VS, CC, CSTS, AQA, ASQ, ACQ, doorbells) and
  the controller behind it: an SQ tail doorbell makes it fetch the new entries, execute them
  (following PRP1/PRP2 and PRP lists) and post completions with the right phase. It records
  every command it fetched (:attr:`FakeNvme.issued`), can hang (fetch and never complete)
  and can never become ready.
* :class:`FakePciDevice` is the VFIO device around it: config space, IRQ info, BAR0.
"""

from __future__ import annotations

import ctypes
import struct
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, NamedTuple, Optional, Tuple

from vfio_hil.core.device import IrqInfo
from vfio_hil.core.drivers.nvme import spec
from vfio_hil.core.drivers.nvme.spec import Command, Completion

PAGE = spec.PAGE

# Status codes the fake posts: (status code type, status code).
OK = spec.STATUS_SUCCESS
INVALID_OPCODE = (0, 0x01)
INVALID_FIELD = (0, 0x02)
DATA_TRANSFER_ERROR = (0, 0x04)
INVALID_PRP_OFFSET = (0, 0x13)
INVALID_NAMESPACE = (0, 0x0B)
LBA_OUT_OF_RANGE = (0, 0x80)
INVALID_QUEUE = (1, 0x01)
COMPARE_FAILURE = (2, 0x85)

ONCS_COMPARE = 1 << 0
ONCS_TIMESTAMP = 1 << 6

#: Opcodes that change media or persistent state (what the safety tests look for).
MEDIA_WRITING_IO = {
    spec.NVM_WRITE,
    spec.NVM_WRITE_UNCORRECTABLE,
    spec.NVM_WRITE_ZEROES,
    spec.NVM_DATASET_MANAGEMENT,
    0x19,  # Copy
}
MEDIA_WRITING_ADMIN = {
    0x0D,  # Namespace Management
    0x10,  # Firmware Commit
    0x11,  # Firmware Image Download
    spec.ADMIN_FORMAT_NVM,
    0x81,  # Security Send
    spec.ADMIN_SANITIZE,
}


class FakeIommu:
    """IOVA -> process memory, as ``EngineMemory(iommu.map, iommu.unmap)`` maps it."""

    def __init__(self) -> None:
        #: iova -> (vaddr, size) of every live mapping.
        self.maps: Dict[int, Tuple[int, int]] = {}
        #: IOVAs the device tried to reach without a mapping, in order.
        self.faults: List[int] = []

    def map(self, vaddr: int, iova: int, size: int) -> None:
        assert not any(
            iova < start + length and start < iova + size
            for start, (_, length) in self.maps.items()
        ), f"IOVA {iova:#x}+{size:#x} overlaps a mapping"
        self.maps[iova] = (vaddr, size)

    def unmap(self, iova: int, size: int) -> None:
        assert self.maps.pop(iova)[1] == size, f"unmap of {iova:#x} with another size"

    def _vaddr(self, iova: int, length: int) -> Optional[int]:
        for start, (vaddr, size) in self.maps.items():
            if start <= iova and iova + length <= start + size:
                return vaddr + iova - start
        self.faults.append(iova)
        return None

    def read(self, iova: int, length: int) -> Optional[bytes]:
        """``length`` bytes at ``iova``, or None (a blocked DMA, recorded)."""
        vaddr = self._vaddr(iova, length)
        return None if vaddr is None else ctypes.string_at(vaddr, length)

    def write(self, iova: int, data: bytes) -> bool:
        """Write ``data`` at ``iova``; False when blocked (recorded)."""
        vaddr = self._vaddr(iova, len(data))
        if vaddr is not None:
            ctypes.memmove(vaddr, data, len(data))
        return vaddr is not None


class Issued(NamedTuple):
    """One command the controller fetched from a submission queue."""

    admin: bool
    opcode: int
    cdw10: int
    qid: int
    cid: int

    @property
    def name(self) -> str:
        return spec.opcode_name(self.admin, self.opcode)


@dataclass
class Queue:
    """A queue as the controller sees it."""

    iova: int
    depth: int
    head: int = 0
    tail: int = 0
    phase: int = 1
    cqid: int = 0  # SQs: the CQ their completions go to

    def full(self) -> bool:
        return (self.tail + 1) % self.depth == self.head


class StatusError(Exception):
    """Ends a command with a status."""

    def __init__(self, status: Tuple[int, int]) -> None:
        super().__init__(status)
        self.status = status


def block_pattern(lba: int, block_size: int) -> bytes:
    """What an LBA nobody wrote reads as: its number and a tag, repeated."""
    return (lba.to_bytes(8, "little") + b"fake-lba") * (block_size // 16)


BDF = "0000:00:05.0"


class FakeNvme:
    """BAR0 of an NVMe controller, and the controller."""

    model = "VFIO-HIL Fake NVMe"
    serial = "FAKE0001"
    firmware = "1.0fake"

    def __init__(
        self,
        iommu: FakeIommu,
        *,
        mqes: int = 255,
        ready_timeout: int = 2,
        dstrd: int = 0,
        oncs: int = ONCS_COMPARE | ONCS_TIMESTAMP,
        vs: int = 0x00010400,
        block_size: int = 512,
        blocks: int = 1 << 20,
    ) -> None:
        self.iommu = iommu
        #: CAP: MQES, CQR, TO (500 ms units), DSTRD, CSS NVM, MPSMIN 4 KiB.
        self.cap = (mqes - 1) | 1 << 16 | ready_timeout << 24 | dstrd << 32 | 1 << 37
        self.stride = 4 << dstrd
        self.oncs = oncs
        self.vs = vs
        self.block_size = block_size
        self.blocks = blocks
        self.regs = {spec.REG_CC: 0, spec.REG_CSTS: 0, spec.REG_AQA: 0}
        self.regs64 = {spec.REG_ASQ: 0, spec.REG_ACQ: 0}
        self.mmapped = True
        self.closed = False
        #: Fetch commands and never complete them (cleared by a controller reset).
        self.hang = False
        #: CSTS.RDY never follows CC.EN = 1.
        self.never_ready = False
        #: CSTS.CFS stays set whatever the host does (a controller that is really broken).
        self.fatal = False
        #: Every command fetched, in order.
        self.issued: List[Issued] = []
        #: Every doorbell write: (offset, value).
        self.doorbells: List[Tuple[int, int]] = []
        #: CC.EN transitions 1 -> 0 and 0 -> 1.
        self.resets = 0
        self.enables = 0
        #: Blocks written by Write (the rest reads as :func:`block_pattern`).
        self.media: Dict[int, bytes] = {}
        #: (milliseconds, time.monotonic()) of the last Set Features Timestamp.
        self.clock = (0, time.monotonic())
        self.sqs: Dict[int, Queue] = {}
        self.cqs: Dict[int, Queue] = {}

    # -- the Bar interface ---------------------------------------------------------------

    def read32(self, offset: int) -> int:
        self._check_open()
        if offset == spec.REG_VS:
            return self.vs
        return self.regs.get(offset, 0)

    def read64(self, offset: int) -> int:
        self._check_open()
        return self.cap if offset == spec.REG_CAP else self.regs64.get(offset, 0)

    def write32(self, offset: int, value: int) -> None:
        self._check_open()
        if offset >= spec.REG_DOORBELLS:
            self._doorbell(offset, value)
        elif offset == spec.REG_CC:
            self._set_cc(value)
        elif offset == spec.REG_AQA:
            if not self.enabled:  # the admin queue's registers are fixed while enabled
                self.regs[offset] = value & spec.AQA_MASK
        else:
            self.regs[offset] = value

    def write64(self, offset: int, value: int) -> None:
        self._check_open()
        if not self.enabled:
            self.regs64[offset] = value

    def close(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("fake NVMe BAR0 is closed")  # as a real Bar says

    # -- controller state ----------------------------------------------------------------

    def _set_cc(self, value: int) -> None:
        was = self.regs[spec.REG_CC] & spec.CC_EN
        self.regs[spec.REG_CC] = value
        if was and not value & spec.CC_EN:
            self.resets += 1
            self.hang = False
            self.sqs.clear()
            self.cqs.clear()
            self.regs[spec.REG_CSTS] = 0
        elif not was and value & spec.CC_EN:
            self.enables += 1
            aqa = self.regs[spec.REG_AQA]
            self.sqs[0] = Queue(self.regs64[spec.REG_ASQ], (aqa & 0xFFF) + 1)
            self.cqs[0] = Queue(self.regs64[spec.REG_ACQ], (aqa >> 16) + 1)
            if not self.never_ready:
                self.regs[spec.REG_CSTS] = spec.CSTS_RDY
            if self.fatal:
                self.regs[spec.REG_CSTS] |= spec.CSTS_CFS

    @property
    def enabled(self) -> bool:
        return bool(self.regs[spec.REG_CC] & spec.CC_EN)

    @property
    def ready(self) -> bool:
        return bool(self.regs[spec.REG_CSTS] & spec.CSTS_RDY)

    def interrupt_pending(self, cqid: int = 0) -> bool:
        """A completion the host has not acknowledged (CQ head doorbell) is in the CQ."""
        cq = self.cqs[cqid]
        return cq.head != cq.tail

    def _doorbell(self, offset: int, value: int) -> None:
        self.doorbells.append((offset, value))
        index, misaligned = divmod(offset - spec.REG_DOORBELLS, self.stride)
        qid, is_cq = divmod(index, 2)
        assert not misaligned, f"doorbell write at {offset:#x} between doorbells"
        queues = self.cqs if is_cq else self.sqs
        assert self.ready and qid in queues, f"doorbell {offset:#x} of a queue that is not there"
        assert value < queues[qid].depth, f"doorbell {offset:#x} = {value} beyond the queue"
        if is_cq:
            self.cqs[qid].head = value
            for sqid in list(self.sqs):
                self._run(sqid)  # a full CQ may have room again
        else:
            self.sqs[qid].tail = value
            self._run(qid)

    def _run(self, qid: int) -> None:
        sq = self.sqs[qid]
        while sq.head != sq.tail:
            cq = self.cqs[sq.cqid]
            if cq.full() and not self.hang:
                return  # resumes when the host rings the CQ head doorbell
            raw = self.iommu.read(sq.iova + sq.head * spec.SQE_SIZE, spec.SQE_SIZE)
            assert raw is not None, f"SQ {qid} is not mapped"
            command, cid = Command.unpack(raw)
            sq.head = (sq.head + 1) % sq.depth
            self.issued.append(Issued(qid == 0, command.opcode, command.cdw10, qid, cid))
            if self.hang:
                continue  # fetched, never completed
            try:
                result, status = self._execute(qid == 0, command), OK
            except StatusError as e:
                result, status = 0, e.status
            entry = Completion.pack(result, sq.head, qid, cid, cq.phase, *status)
            assert self.iommu.write(cq.iova + cq.tail * spec.CQE_SIZE, entry), "CQ not mapped"
            cq.tail = (cq.tail + 1) % cq.depth
            if cq.tail == 0:
                cq.phase ^= 1

    # -- data transfer -----------------------------------------------------------------

    def _segments(self, command: Command, size: int) -> List[Tuple[int, int]]:
        """(iova, length) pieces of ``size`` bytes described by PRP1/PRP2 (or a PRP list)."""
        first = min(size, PAGE - command.prp1 % PAGE)
        pieces = [(command.prp1, first)]
        left = size - first
        if left > PAGE:
            count = -(-left // PAGE)
            if command.prp2 % 8:
                raise StatusError(INVALID_PRP_OFFSET)
            if count > (PAGE - command.prp2 % PAGE) // 8:
                raise StatusError(INVALID_FIELD)  # a chained PRP list: the driver never builds one
            raw = self.iommu.read(command.prp2, 8 * count)
            if raw is None:
                raise StatusError(DATA_TRANSFER_ERROR)
            pages = list(struct.unpack(f"<{count}Q", raw))
        else:
            pages = [command.prp2] if left else []
        for page in pages:
            if page % PAGE:
                raise StatusError(INVALID_PRP_OFFSET)
            pieces.append((page, min(left, PAGE)))
            left -= PAGE
        return pieces

    def to_host(self, command: Command, data: bytes) -> None:
        offset = 0
        for iova, length in self._segments(command, len(data)):
            if not self.iommu.write(iova, data[offset : offset + length]):
                raise StatusError(DATA_TRANSFER_ERROR)
            offset += length

    def from_host(self, command: Command, size: int) -> bytes:
        chunks = [self.iommu.read(iova, n) for iova, n in self._segments(command, size)]
        if any(chunk is None for chunk in chunks):
            raise StatusError(DATA_TRANSFER_ERROR)
        return b"".join(c for c in chunks if c is not None)

    # -- commands ----------------------------------------------------------------------

    def _execute(self, admin: bool, c: Command) -> int:
        handler = (self.ADMIN if admin else self.IO).get(c.opcode)
        if handler is None:
            raise StatusError(INVALID_OPCODE)
        return handler(self, c) or 0

    def identify_controller(self) -> bytes:
        data = bytearray(PAGE)
        struct.pack_into("<HH20s40s8s", data, 0, 0x1B36, 0x1AF4, *self._strings())
        data[77] = 5  # MDTS: 128 KiB
        struct.pack_into("<I", data, 516, 1)  # one namespace
        struct.pack_into("<H", data, 520, self.oncs)
        return bytes(data)

    def _strings(self) -> List[bytes]:
        fields = ((self.serial, 20), (self.model, 40), (self.firmware, 8))
        return [text.ljust(n).encode() for text, n in fields]

    def identify_namespace(self) -> bytes:
        data = bytearray(PAGE)
        struct.pack_into("<QQQ", data, 0, self.blocks, self.blocks, self.blocks)
        struct.pack_into("<I", data, 128, (self.block_size.bit_length() - 1) << 16)
        return bytes(data)

    def _identify(self, c: Command) -> None:
        cns = c.cdw10 & 0xFF
        if cns == spec.IDENTIFY_CONTROLLER:
            self.to_host(c, self.identify_controller())
        elif cns == spec.IDENTIFY_NAMESPACE and c.nsid == 1:
            self.to_host(c, self.identify_namespace())
        else:
            raise StatusError(INVALID_FIELD)

    def _get_log_page(self, c: Command) -> None:
        dwords = ((c.cdw11 & 0xFFFF) << 16 | c.cdw10 >> 16) + 1
        log = bytes([c.cdw10 & 0xFF]) * (dwords * 4)
        self.to_host(c, log)

    def now_ms(self) -> int:
        ms, since = self.clock
        return ms + int((time.monotonic() - since) * 1000)

    def _features(self, c: Command) -> int:
        fid = c.cdw10 & 0xFF
        setting = c.opcode == spec.ADMIN_SET_FEATURES
        if fid == spec.FEATURE_NUMBER_OF_QUEUES:
            return 0  # one SQ and one CQ granted (0-based)
        if fid != spec.FEATURE_TIMESTAMP or not self.oncs & ONCS_TIMESTAMP:
            raise StatusError(INVALID_FIELD)
        if setting:
            value = int.from_bytes(self.from_host(c, 8)[:6], "little")
            self.clock = (value, time.monotonic())
        else:
            self.to_host(c, self.now_ms().to_bytes(6, "little") + b"\x00\x00")
        return 0

    def _create_queue(self, c: Command) -> None:
        qid, depth = c.cdw10 & 0xFFFF, (c.cdw10 >> 16) + 1
        cq = c.opcode == spec.ADMIN_CREATE_CQ
        queues = self.cqs if cq else self.sqs
        if qid == 0 or qid in queues or depth > (self.cap & 0xFFFF) + 1:
            raise StatusError(INVALID_QUEUE)
        if not cq and c.cdw11 >> 16 not in self.cqs:
            raise StatusError(INVALID_QUEUE)
        queues[qid] = Queue(c.prp1, depth, cqid=0 if cq else c.cdw11 >> 16)

    def _delete_queue(self, c: Command) -> None:
        queues = self.cqs if c.opcode == spec.ADMIN_DELETE_CQ else self.sqs
        if queues.pop(c.cdw10 & 0xFFFF, None) is None:
            raise StatusError(INVALID_QUEUE)

    def _blocks(self, c: Command) -> range:
        lba = c.cdw11 << 32 | c.cdw10
        count = (c.cdw12 & 0xFFFF) + 1
        if c.nsid != 1:
            raise StatusError(INVALID_NAMESPACE)
        if lba + count > self.blocks:
            raise StatusError(LBA_OUT_OF_RANGE)
        return range(lba, lba + count)

    def stored(self, lba: int) -> bytes:
        return self.media.get(lba, block_pattern(lba, self.block_size))

    def _read(self, c: Command) -> None:
        self.to_host(c, b"".join(self.stored(lba) for lba in self._blocks(c)))

    def _compare(self, c: Command) -> None:
        if not self.oncs & ONCS_COMPARE:
            raise StatusError(INVALID_OPCODE)
        blocks = self._blocks(c)
        host = self.from_host(c, len(blocks) * self.block_size)
        if host != b"".join(self.stored(lba) for lba in blocks):
            raise StatusError(COMPARE_FAILURE)

    def _write(self, c: Command) -> None:
        blocks = self._blocks(c)
        host = self.from_host(c, len(blocks) * self.block_size)
        for i, lba in enumerate(blocks):
            self.media[lba] = host[i * self.block_size : (i + 1) * self.block_size]

    ADMIN: ClassVar[Dict[int, Callable[..., Optional[int]]]] = {
        spec.ADMIN_IDENTIFY: _identify,
        spec.ADMIN_GET_LOG_PAGE: _get_log_page,
        spec.ADMIN_SET_FEATURES: _features,
        spec.ADMIN_GET_FEATURES: _features,
        spec.ADMIN_CREATE_CQ: _create_queue,
        spec.ADMIN_CREATE_SQ: _create_queue,
        spec.ADMIN_DELETE_CQ: _delete_queue,
        spec.ADMIN_DELETE_SQ: _delete_queue,
    }
    IO: ClassVar[Dict[int, Callable[..., Optional[int]]]] = {
        spec.NVM_READ: _read,
        spec.NVM_COMPARE: _compare,
        spec.NVM_WRITE: _write,
    }


#: Class code 01:08:02 (NVMe) in the class dword at config offset 0x08.
NVME_CLASS = spec.NVME_CLASS


class FakePciDevice:
    """The VFIO device: config space IDs and class, IRQ info, BAR0 (any object)."""

    def __init__(
        self,
        bar: object,
        *,
        bdf: str = BDF,
        vendor: int = 0x1B36,
        device: int = 0x0010,
        class_code: int = NVME_CLASS,
        revision: int = 0x02,
        irq_counts: Tuple[int, int, int] = (1, 1, 65),  # INTx, MSI, MSI-X
        status: int = 0x0010,  # PCI Status: a capability list, INTx not asserted
    ) -> None:
        self.bar = bar
        self.bdf = bdf
        self.irq_counts = irq_counts
        self.bus_master = False
        self.bars_mapped = 0
        self.config = bytearray(64)
        struct.pack_into("<HH", self.config, 0, vendor, device)
        struct.pack_into("<I", self.config, 8, class_code << 8 | revision)
        struct.pack_into("<H", self.config, 6, status)

    def config_read(self, offset: int, width: int = 4) -> int:
        return int.from_bytes(self.config[offset : offset + width], "little")

    def enable_bus_master(self) -> None:
        self.bus_master = True

    def irq_info(self, index: int) -> IrqInfo:
        return IrqInfo(index, 0, self.irq_counts[index] if index < 3 else 0)

    def map_bar(self, index: int) -> object:
        assert index == 0, f"the driver maps BAR{index}"
        self.bars_mapped += 1
        self.bar.closed = False  # type: ignore[attr-defined]  # a fresh mapping
        return self.bar


class FakeClock:
    """Stands in for the ``time`` module of the driver: sleeping advances a virtual clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    @staticmethod
    def time() -> float:
        return time.time()
