"""PCI config space parser: header fields and the standard and extended capability lists.

Works on the bytes of a config space (as :meth:`Device.config_space` returns them), so it can
be tested on canned data. Both lists are walked with every pointer bounds-checked and a
revisited offset treated as corruption: a malformed list raises
:class:`~vfio_hil.core.errors.CapabilityChainError` instead of hanging.

Decoded capabilities: Power Management, MSI, MSI-X, PCI Express, AER, ACS and SR-IOV; others
are listed with their id and offset only.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, List, NamedTuple, Optional

from .errors import CapabilityChainError

PCI_STD_HEADER_SIZE = 0x40
PCI_CFG_SPACE_SIZE = 0x100
PCI_CFG_SPACE_EXP_SIZE = 0x1000

PCI_STATUS_CAP_LIST = 1 << 4
PCI_CAPABILITY_LIST = 0x34
PCI_CB_CAPABILITY_LIST = 0x14

PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
PCI_EXT_CAP_ID_ERR = 0x0001
PCI_EXT_CAP_ID_ACS = 0x000D
PCI_EXT_CAP_ID_SRIOV = 0x0010

CAP_NAMES: Dict[int, str] = {
    0x01: "PM",
    0x02: "AGP",
    0x03: "VPD",
    0x04: "SLOTID",
    0x05: "MSI",
    0x06: "CHSWP",
    0x07: "PCIX",
    0x08: "HT",
    0x09: "VNDR",
    0x0A: "DBG",
    0x0B: "CCRC",
    0x0C: "SHPC",
    0x0D: "SSVID",
    0x0E: "AGP3",
    0x0F: "SECDEV",
    0x10: "EXP",
    0x11: "MSIX",
    0x12: "SATA",
    0x13: "AF",
    0x14: "EA",
}
EXT_CAP_NAMES: Dict[int, str] = {
    0x01: "ERR",
    0x02: "VC",
    0x03: "DSN",
    0x04: "PWR",
    0x05: "RCLD",
    0x06: "RCILC",
    0x07: "RCEC",
    0x08: "MFVC",
    0x09: "VC9",
    0x0A: "RCRB",
    0x0B: "VNDR",
    0x0D: "ACS",
    0x0E: "ARI",
    0x0F: "ATS",
    0x10: "SRIOV",
    0x13: "PRI",
    0x15: "REBAR",
    0x17: "TPH",
    0x18: "LTR",
    0x19: "SECPCI",
    0x1B: "PASID",
    0x1E: "L1SS",
    0x1F: "PTM",
    0x23: "DVSEC",
    0x24: "VF_REBAR",
    0x25: "DLF",
    0x26: "PL_16GT",
    0x2E: "DOE",
}

#: PCI Express capability "device/port type" field values.
PCIE_DEVICE_TYPES: Dict[int, str] = {
    0x0: "endpoint",
    0x1: "legacy endpoint",
    0x4: "root port",
    0x5: "upstream port",
    0x6: "downstream port",
    0x7: "PCIe to PCI bridge",
    0x8: "PCI to PCIe bridge",
    0x9: "root complex integrated endpoint",
    0xA: "root complex event collector",
}


class Capability(NamedTuple):
    """One capability: ``id``, where it is, and the decoded ``fields`` (empty when this parser
    does not decode that id). ``version`` is the extended-capability version (0 for
    standard capabilities)."""

    id: int
    offset: int
    extended: bool
    name: str
    version: int
    fields: Dict[str, int]


class ConfigSpace(NamedTuple):
    """A parsed config space."""

    vendor_id: int
    device_id: int
    command: int
    status: int
    revision: int
    class_code: int
    header_type: int
    multifunction: bool
    interrupt_pin: int
    capabilities: List[Capability]
    extended_capabilities: List[Capability]

    def find(self, cap_id: int, extended: bool = False) -> Optional[Capability]:
        """The first capability with ``cap_id`` in the standard (or extended) list."""
        caps = self.extended_capabilities if extended else self.capabilities
        return next((cap for cap in caps if cap.id == cap_id), None)


class _Reader:
    """Little-endian register reads from config bytes, bounds-checked with context."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def u8(self, offset: int) -> int:
        return self._unpack("<B", offset)

    def u16(self, offset: int) -> int:
        return self._unpack("<H", offset)

    def u32(self, offset: int) -> int:
        return self._unpack("<I", offset)

    def _unpack(self, fmt: str, offset: int) -> int:
        size = struct.calcsize(fmt)
        if offset < 0 or offset + size > len(self.data):
            raise CapabilityChainError(
                f"config space: {size}-byte register at {offset:#x} is beyond the "
                f"{len(self.data):#x} bytes available"
            )
        return int(struct.unpack_from(fmt, self.data, offset)[0])


def _pm(r: _Reader, off: int) -> Dict[str, int]:
    pmc, pmcsr = r.u16(off + 2), r.u16(off + 4)
    return {
        "version": pmc & 0x7,
        "d1_support": (pmc >> 9) & 1,
        "d2_support": (pmc >> 10) & 1,
        "pme_support": (pmc >> 11) & 0x1F,
        "power_state": pmcsr & 0x3,
        "no_soft_reset": (pmcsr >> 3) & 1,
        "pme_enable": (pmcsr >> 8) & 1,
    }


def _msi(r: _Reader, off: int) -> Dict[str, int]:
    control = r.u16(off + 2)
    is_64bit = (control >> 7) & 1
    data_off = off + (0xC if is_64bit else 0x8)
    fields = {
        "enabled": control & 1,
        "multiple_message_capable": 1 << ((control >> 1) & 0x7),
        "multiple_message_enabled": 1 << ((control >> 4) & 0x7),
        "is_64bit": is_64bit,
        "per_vector_masking": (control >> 8) & 1,
        "address": r.u32(off + 4) | ((r.u32(off + 8) << 32) if is_64bit else 0),
        "data": r.u16(data_off),
    }
    if fields["per_vector_masking"]:
        fields["mask"] = r.u32(data_off + 4)
    return fields


def _msix(r: _Reader, off: int) -> Dict[str, int]:
    control, table, pba = r.u16(off + 2), r.u32(off + 4), r.u32(off + 8)
    return {
        "table_size": (control & 0x7FF) + 1,
        "function_mask": (control >> 14) & 1,
        "enabled": (control >> 15) & 1,
        "table_bir": table & 0x7,
        "table_offset": table & ~0x7,
        "pba_bir": pba & 0x7,
        "pba_offset": pba & ~0x7,
    }


def _pcie(r: _Reader, off: int) -> Dict[str, int]:
    flags, devcap, devctl = r.u16(off + 2), r.u32(off + 4), r.u16(off + 8)
    fields = {
        "version": flags & 0xF,
        "device_type": (flags >> 4) & 0xF,
        "max_payload_supported": 128 << (devcap & 0x7),
        "flr_capable": (devcap >> 28) & 1,
        "max_payload": 128 << ((devctl >> 5) & 0x7),
        "max_read_request": 128 << ((devctl >> 12) & 0x7),
        "device_status": r.u16(off + 0xA),
    }
    # Endpoints integrated in the root complex have no link registers worth reading.
    if fields["device_type"] not in (0x9, 0xA):
        linkcap, linksta = r.u32(off + 0xC), r.u16(off + 0x12)
        fields.update(
            max_link_speed=linkcap & 0xF,
            max_link_width=(linkcap >> 4) & 0x3F,
            link_speed=linksta & 0xF,
            link_width=(linksta >> 4) & 0x3F,
        )
    return fields


def _aer(r: _Reader, off: int) -> Dict[str, int]:
    return {
        "uncorrectable_status": r.u32(off + 0x4),
        "uncorrectable_mask": r.u32(off + 0x8),
        "uncorrectable_severity": r.u32(off + 0xC),
        "correctable_status": r.u32(off + 0x10),
        "correctable_mask": r.u32(off + 0x14),
        "capabilities_control": r.u32(off + 0x18),
    }


def _acs(r: _Reader, off: int) -> Dict[str, int]:
    cap, ctrl = r.u16(off + 4), r.u16(off + 6)
    fields = {"capability": cap, "control": ctrl}
    for bit, name in enumerate(
        ("source_validation", "translation_blocking", "p2p_request_redirect",
         "p2p_completion_redirect", "upstream_forwarding", "p2p_egress_control",
         "direct_translated_p2p")
    ):  # fmt: skip
        fields[name] = (cap >> bit) & 1
        fields[f"{name}_enabled"] = (ctrl >> bit) & 1
    return fields


def _sriov(r: _Reader, off: int) -> Dict[str, int]:
    return {
        "capabilities": r.u32(off + 0x4),
        "control": r.u16(off + 0x8),
        "status": r.u16(off + 0xA),
        "initial_vfs": r.u16(off + 0xC),
        "total_vfs": r.u16(off + 0xE),
        "num_vfs": r.u16(off + 0x10),
        "function_dependency_link": r.u8(off + 0x12),
        "vf_offset": r.u16(off + 0x14),
        "vf_stride": r.u16(off + 0x16),
        "vf_device_id": r.u16(off + 0x1A),
        "supported_page_sizes": r.u32(off + 0x1C),
        "system_page_size": r.u32(off + 0x20),
    }


_Decoder = Callable[[_Reader, int], Dict[str, int]]
_DECODERS: Dict[int, _Decoder] = {
    PCI_CAP_ID_PM: _pm,
    PCI_CAP_ID_MSI: _msi,
    PCI_CAP_ID_MSIX: _msix,
    PCI_CAP_ID_EXP: _pcie,
}
_EXT_DECODERS: Dict[int, _Decoder] = {
    PCI_EXT_CAP_ID_ERR: _aer,
    PCI_EXT_CAP_ID_ACS: _acs,
    PCI_EXT_CAP_ID_SRIOV: _sriov,
}


def _standard_caps(r: _Reader, first: int) -> List[Capability]:
    caps: List[Capability] = []
    seen = set()
    # The low two bits of capability pointers are reserved.
    offset = first & ~0x3
    while offset:
        if offset in seen:
            raise CapabilityChainError(
                f"config space: capability list loops back to {offset:#x} after {len(caps)} "
                "capabilities"
            )
        if offset < PCI_STD_HEADER_SIZE or offset + 2 > min(len(r.data), PCI_CFG_SPACE_SIZE):
            raise CapabilityChainError(
                f"config space: capability pointer {offset:#x} outside "
                f"[{PCI_STD_HEADER_SIZE:#x}, {PCI_CFG_SPACE_SIZE:#x})"
            )
        seen.add(offset)
        cap_id, next_ptr = r.u8(offset), r.u8(offset + 1)
        decoder = _DECODERS.get(cap_id)
        fields = decoder(r, offset) if decoder else {}
        caps.append(Capability(cap_id, offset, False, CAP_NAMES.get(cap_id, ""), 0, fields))
        offset = next_ptr & ~0x3
    return caps


def _extended_caps(r: _Reader) -> List[Capability]:
    caps: List[Capability] = []
    if len(r.data) < PCI_CFG_SPACE_SIZE + 4:
        return caps
    seen = set()
    offset = PCI_CFG_SPACE_SIZE
    while offset:
        if offset in seen:
            raise CapabilityChainError(
                f"config space: extended capability list loops back to {offset:#x} after "
                f"{len(caps)} capabilities"
            )
        if offset < PCI_CFG_SPACE_SIZE or offset + 4 > len(r.data):
            raise CapabilityChainError(
                f"config space: extended capability pointer {offset:#x} outside "
                f"[{PCI_CFG_SPACE_SIZE:#x}, {len(r.data):#x})"
            )
        seen.add(offset)
        header = r.u32(offset)
        # All zeros or all ones at 0x100: no extended capabilities (conventional PCI device,
        # or config space beyond 256 bytes not accessible).
        if header in (0, 0xFFFFFFFF):
            break
        cap_id, version, next_ptr = header & 0xFFFF, (header >> 16) & 0xF, header >> 20
        # vfio-pci hides capabilities it does not virtualize; when the first one is hidden
        # it leaves a header with id 0 at 0x100 that only links to the rest.
        if cap_id:
            decoder = _EXT_DECODERS.get(cap_id)
            fields = decoder(r, offset) if decoder else {}
            name = EXT_CAP_NAMES.get(cap_id, "")
            caps.append(Capability(cap_id, offset, True, name, version, fields))
        offset = next_ptr & ~0x3
    return caps


def parse_config(data: bytes) -> ConfigSpace:
    """Parse a config space (at least the 64-byte header; 256 or 4096 bytes normally).

    Raises :class:`~vfio_hil.core.errors.CapabilityChainError` for a malformed capability
    list (loop, pointer outside the config space, capability cut off by the end of data)
    and ValueError for data shorter than the header.
    """
    if len(data) < PCI_STD_HEADER_SIZE:
        raise ValueError(
            f"config space needs at least {PCI_STD_HEADER_SIZE} bytes, not {len(data)}"
        )
    r = _Reader(data)
    status = r.u16(0x06)
    header_type = r.u8(0x0E)
    caps: List[Capability] = []
    if status & PCI_STATUS_CAP_LIST:
        pointer = PCI_CB_CAPABILITY_LIST if header_type & 0x7F == 2 else PCI_CAPABILITY_LIST
        caps = _standard_caps(r, r.u8(pointer))
    return ConfigSpace(
        vendor_id=r.u16(0x00),
        device_id=r.u16(0x02),
        command=r.u16(0x04),
        status=status,
        revision=r.u8(0x08),
        class_code=r.u32(0x08) >> 8,
        header_type=header_type & 0x7F,
        multifunction=bool(header_type & 0x80),
        interrupt_pin=r.u8(0x3D),
        capabilities=caps,
        extended_capabilities=_extended_caps(r),
    )
