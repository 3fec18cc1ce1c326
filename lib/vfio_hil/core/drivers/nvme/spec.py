"""NVM Express definitions the driver uses: controller registers, commands, completions,
status codes, Identify data, and which opcodes change no media.

From the NVM Express Base Specification 2.0 (sections 3.1 "Controller Registers", 4.2
"Submission Queue Entry", 4.6 "Completion Queue Entry", 5 "Admin Command Set") and the NVM
Command Set Specification 1.0 (section 3 "I/O Commands").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional

#: The PCI class code of an NVMe controller (mass storage, non-volatile memory, NVMe).
NVME_CLASS = 0x010802

# -- controller registers (BAR0) --------------------------------------------------------------
REG_CAP = 0x00
REG_VS = 0x08
REG_INTMS = 0x0C
REG_INTMC = 0x10
REG_CC = 0x14
REG_CSTS = 0x1C
REG_AQA = 0x24
REG_ASQ = 0x28
REG_ACQ = 0x30
REG_DOORBELLS = 0x1000

CC_EN = 1 << 0
#: 64-byte submission and 16-byte completion queue entries, NVM command set, 4 KiB pages.
CC_IO_ENTRY_SIZES = (6 << 16) | (4 << 20)
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1
#: AQA's defined bits (ACQS 27:16, ASQS 11:0); the rest is reserved and reads 0.
AQA_MASK = 0x0FFF0FFF

SQE_SIZE = 64
CQE_SIZE = 16
PAGE = 4096


@dataclass(frozen=True)
class Cap:
    """The Controller Capabilities register."""

    raw: int

    @property
    def mqes(self) -> int:
        """Maximum queue entries supported (1-based)."""
        return (self.raw & 0xFFFF) + 1

    @property
    def timeout_s(self) -> float:
        """How long the controller may take to become ready (CAP.TO, 500 ms units)."""
        return ((self.raw >> 24) & 0xFF) * 0.5

    @property
    def doorbell_stride(self) -> int:
        """Bytes between doorbell registers (4 << CAP.DSTRD)."""
        return 4 << ((self.raw >> 32) & 0xF)

    @property
    def mps_min(self) -> int:
        """Smallest memory page size the controller supports, in bytes."""
        return 1 << (12 + ((self.raw >> 48) & 0xF))

    @property
    def nvm_command_set(self) -> bool:
        """CAP.CSS bit 0: the NVM command set is supported."""
        return bool((self.raw >> 37) & 1)


def version_text(vs: int) -> str:
    """``1.4.0`` for a VS register value."""
    return f"{vs >> 16}.{(vs >> 8) & 0xFF}.{vs & 0xFF}"


def version_problem(vs: int) -> str:
    """Why a VS register value is not one an NVMe controller reports ("" when it is)."""
    major, minor = vs >> 16, (vs >> 8) & 0xFF
    if major not in (1, 2) or (major == 1 and minor > 4):
        return f"VS {vs:#010x} ({version_text(vs)}) is no NVMe version"
    return ""


# -- opcodes -----------------------------------------------------------------------------

ADMIN_DELETE_SQ = 0x00
ADMIN_CREATE_SQ = 0x01
ADMIN_GET_LOG_PAGE = 0x02
ADMIN_DELETE_CQ = 0x04
ADMIN_CREATE_CQ = 0x05
ADMIN_IDENTIFY = 0x06
ADMIN_ABORT = 0x08
ADMIN_SET_FEATURES = 0x09
ADMIN_GET_FEATURES = 0x0A
ADMIN_KEEP_ALIVE = 0x18
ADMIN_FORMAT_NVM = 0x80
ADMIN_SANITIZE = 0x84

NVM_FLUSH = 0x00
NVM_WRITE = 0x01
NVM_READ = 0x02
NVM_WRITE_UNCORRECTABLE = 0x04
NVM_COMPARE = 0x05
NVM_WRITE_ZEROES = 0x08
NVM_DATASET_MANAGEMENT = 0x09

FEATURE_NUMBER_OF_QUEUES = 0x07
FEATURE_TIMESTAMP = 0x0E

IDENTIFY_NAMESPACE = 0x00
IDENTIFY_CONTROLLER = 0x01

#: Admin opcodes that change no media and no persistent state: queue management, reads of
#: controller data, and the features below. Everything else (Format NVM, Sanitize,
#: Namespace Management, Firmware Download/Commit, Security Send, Set Features with Save,
#: vendor commands) is issued only to a device the inventory marks scratch.
SAFE_ADMIN: FrozenSet[int] = frozenset(
    {
        ADMIN_DELETE_SQ,
        ADMIN_CREATE_SQ,
        ADMIN_GET_LOG_PAGE,
        ADMIN_DELETE_CQ,
        ADMIN_CREATE_CQ,
        ADMIN_IDENTIFY,
        ADMIN_ABORT,
        ADMIN_GET_FEATURES,
        ADMIN_KEEP_ALIVE,
        ADMIN_SET_FEATURES,  # only with a feature of SAFE_FEATURES, never saved (see below)
    }
)
#: Features a non-scratch device may be told, without saving them across power cycles: the
#: queue count (volatile, needed to create I/O queues) and the timestamp (the controller's
#: wall clock; the driver sets it back to the host's time when it closes).
SAFE_FEATURES: FrozenSet[int] = frozenset({FEATURE_NUMBER_OF_QUEUES, FEATURE_TIMESTAMP})
#: I/O opcodes that change no media: Read, and Compare (it reads the media and the host's
#: data and only compares them).
SAFE_IO: FrozenSet[int] = frozenset({NVM_READ, NVM_COMPARE})
#: The Save bit of Set Features CDW10.
SET_FEATURES_SAVE = 1 << 31


def media_safe(admin: bool, opcode: int, cdw10: int = 0) -> bool:
    """True when the command changes neither media nor persistent controller state."""
    if not admin:
        return opcode in SAFE_IO
    if opcode == ADMIN_SET_FEATURES:
        return (cdw10 & 0xFF) in SAFE_FEATURES and not cdw10 & SET_FEATURES_SAVE
    return opcode in SAFE_ADMIN


OPCODE_NAMES: Dict[bool, Dict[int, str]] = {
    True: {
        ADMIN_DELETE_SQ: "Delete I/O SQ",
        ADMIN_CREATE_SQ: "Create I/O SQ",
        ADMIN_GET_LOG_PAGE: "Get Log Page",
        ADMIN_DELETE_CQ: "Delete I/O CQ",
        ADMIN_CREATE_CQ: "Create I/O CQ",
        ADMIN_IDENTIFY: "Identify",
        ADMIN_ABORT: "Abort",
        ADMIN_SET_FEATURES: "Set Features",
        ADMIN_GET_FEATURES: "Get Features",
        ADMIN_KEEP_ALIVE: "Keep Alive",
        ADMIN_FORMAT_NVM: "Format NVM",
        ADMIN_SANITIZE: "Sanitize",
    },
    False: {
        NVM_FLUSH: "Flush",
        NVM_WRITE: "Write",
        NVM_READ: "Read",
        NVM_WRITE_UNCORRECTABLE: "Write Uncorrectable",
        NVM_COMPARE: "Compare",
        NVM_WRITE_ZEROES: "Write Zeroes",
        NVM_DATASET_MANAGEMENT: "Dataset Management",
    },
}


def opcode_name(admin: bool, opcode: int) -> str:
    """``Identify`` or ``admin opcode 0x84``."""
    name = OPCODE_NAMES[admin].get(opcode)
    return name or f"{'admin' if admin else 'I/O'} opcode {opcode:#04x}"


# -- commands and completions --------------------------------------------------------------

_SQE = struct.Struct("<BBHIQQQQIIIIII")


@dataclass(frozen=True)
class Command:
    """One submission queue entry (the command identifier is set at submission)."""

    opcode: int
    nsid: int = 0
    prp1: int = 0
    prp2: int = 0
    cdw10: int = 0
    cdw11: int = 0
    cdw12: int = 0
    cdw13: int = 0
    cdw14: int = 0
    cdw15: int = 0

    def pack(self, cid: int) -> bytes:
        """The 64-byte entry with command identifier ``cid`` (PRPs for the data pointer)."""
        return _SQE.pack(
            self.opcode,
            0,  # FUSE 0, PSDT 0: PRPs
            cid,
            self.nsid,
            0,  # CDW2-3
            0,  # MPTR
            self.prp1,
            self.prp2,
            self.cdw10,
            self.cdw11,
            self.cdw12,
            self.cdw13,
            self.cdw14,
            self.cdw15,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> tuple:
        """``(command, cid)`` from a 64-byte entry (what a fake controller reads)."""
        f = _SQE.unpack(raw)
        return cls(f[0], f[3], f[6], f[7], *f[8:]), f[2]


_CQE = struct.Struct("<IIHHHH")

STATUS_SUCCESS = (0, 0x00)
#: Generic status codes and command-specific / media ones the driver names.
STATUS_NAMES: Dict[tuple, str] = {
    (0, 0x00): "Successful Completion",
    (0, 0x01): "Invalid Command Opcode",
    (0, 0x02): "Invalid Field in Command",
    (0, 0x04): "Data Transfer Error",
    (0, 0x06): "Internal Error",
    (0, 0x07): "Command Abort Requested",
    (0, 0x0B): "Invalid Namespace or Format",
    (0, 0x0C): "Command Sequence Error",
    (0, 0x0D): "Invalid SGL Segment Descriptor",
    (0, 0x13): "Invalid PRP Offset",
    (0, 0x80): "LBA Out of Range",
    (1, 0x01): "Invalid Queue Identifier",
    (1, 0x02): "Invalid Queue Size",
    (1, 0x08): "Invalid Interrupt Vector",
    (1, 0x0D): "Feature Identifier Not Saveable",
    (1, 0x0E): "Feature Not Changeable",
    (2, 0x81): "Unrecovered Read Error",
    (2, 0x85): "Compare Failure",
    (2, 0x86): "Access Denied",
}


@dataclass(frozen=True)
class Completion:
    """One completion queue entry."""

    result: int
    sq_head: int
    sq_id: int
    cid: int
    phase: int
    status_code_type: int
    status_code: int
    do_not_retry: bool

    @classmethod
    def unpack(cls, raw: bytes) -> Completion:
        """Decode a 16-byte entry."""
        result, _rsvd, sq_head, sq_id, cid, status = _CQE.unpack(raw)
        return cls(
            result=result,
            sq_head=sq_head,
            sq_id=sq_id,
            cid=cid,
            phase=status & 1,
            status_code=(status >> 1) & 0xFF,
            status_code_type=(status >> 9) & 0x7,
            do_not_retry=bool(status >> 15),
        )

    @staticmethod
    def pack(
        result: int, sq_head: int, sq_id: int, cid: int, phase: int, sct: int = 0, sc: int = 0
    ) -> bytes:
        """Encode a 16-byte entry (what a fake controller writes)."""
        status = phase | (sc << 1) | (sct << 9) | ((1 << 15) if (sct, sc) != (0, 0) else 0)
        return _CQE.pack(result, 0, sq_head, sq_id, cid, status)

    @property
    def ok(self) -> bool:
        """True for a successful completion."""
        return (self.status_code_type, self.status_code) == STATUS_SUCCESS

    @property
    def status_text(self) -> str:
        """``"ok"``, or the status named: ``Data Transfer Error (SCT 0, SC 0x04, DNR)``."""
        if self.ok:
            return "ok"
        key = (self.status_code_type, self.status_code)
        name = STATUS_NAMES.get(key, "status")
        dnr = ", DNR" if self.do_not_retry else ""
        return f"{name} (SCT {key[0]}, SC {key[1]:#04x}{dnr})"


# -- Identify data --------------------------------------------------------------------------


def _ascii(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


@dataclass(frozen=True)
class ControllerIdentity:
    """The Identify Controller fields the driver and the records use."""

    vid: int
    ssvid: int
    serial: str
    model: str
    firmware: str
    #: Maximum data transfer size in bytes (None: no limit reported).
    mdts: Optional[int]
    oncs: int
    namespaces: int

    @classmethod
    def parse(cls, data: bytes, page_size: int = PAGE) -> ControllerIdentity:
        """Decode the 4096-byte Identify Controller data structure."""
        vid, ssvid = struct.unpack_from("<HH", data, 0)
        mdts_exp = data[77]
        oncs = struct.unpack_from("<H", data, 520)[0]
        namespaces = struct.unpack_from("<I", data, 516)[0]
        return cls(
            vid=vid,
            ssvid=ssvid,
            serial=_ascii(data[4:24]),
            model=_ascii(data[24:64]),
            firmware=_ascii(data[64:72]),
            mdts=page_size << mdts_exp if mdts_exp else None,
            oncs=oncs,
            namespaces=namespaces,
        )

    @property
    def compare(self) -> bool:
        """ONCS bit 0: the Compare command is supported."""
        return bool(self.oncs & 1)

    @property
    def timestamp(self) -> bool:
        """ONCS bit 6: the Timestamp feature is supported."""
        return bool(self.oncs & (1 << 6))


@dataclass(frozen=True)
class NamespaceIdentity:
    """The Identify Namespace fields the driver uses."""

    size_blocks: int
    block_size: int

    @classmethod
    def parse(cls, data: bytes) -> NamespaceIdentity:
        """Decode the Identify Namespace data structure (its in-use LBA format)."""
        nsze = struct.unpack_from("<Q", data, 0)[0]
        lbaf = struct.unpack_from("<I", data, 128 + 4 * (data[26] & 0xF))[0]
        return cls(size_blocks=nsze, block_size=1 << ((lbaf >> 16) & 0xFF))
