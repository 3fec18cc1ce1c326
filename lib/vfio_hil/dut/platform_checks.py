"""Platform facts the PLAT checks judge beyond what setup gathers: the firmware's IOMMU
description (ACPI DMAR / IVRS tables) and the IOMMU faults in the kernel log.

The table parsers and the fault matcher are pure functions over bytes and strings, so they
are unit-tested on canned input; the DUT entry points only read the files. Python 3.9+,
stdlib only.
"""

from __future__ import annotations

import os
import platform
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

from . import evidence
from .common import parse_fault

ACPI_TABLES = "/sys/firmware/acpi/tables"
ACPI_HEADER = struct.Struct("<4sIBB6s8sI4sI")
PAGE_4K = 0x1000
#: The AMD IOMMU register block is 16 KiB and its base register has no bits below 14.
AMD_MMIO_ALIGN = 0x4000

DMAR_STRUCTS_AT = 48
DMAR_DRHD, DMAR_RMRR, DMAR_ATSR, DMAR_RHSA, DMAR_ANDD, DMAR_SATC, DMAR_SIDP = range(7)
DMAR_NAMES = {0: "DRHD", 1: "RMRR", 2: "ATSR", 3: "RHSA", 4: "ANDD", 5: "SATC", 6: "SIDP"}
#: Smallest legal length of each remapping structure (VT-d spec, chapter 8).
DMAR_MIN_LENGTH = {0: 16, 1: 24, 2: 8, 3: 20, 4: 8, 5: 8, 6: 8}
#: Where the device scopes of a structure start, for the structures that carry them.
DMAR_SCOPES_AT = {DMAR_DRHD: 16, DMAR_RMRR: 24, DMAR_ATSR: 8, DMAR_SATC: 8, DMAR_SIDP: 8}
DMAR_INCLUDE_PCI_ALL = 0x01
SCOPE_TYPES = {1: "PCI endpoint", 2: "PCI sub-hierarchy", 3: "IOAPIC", 4: "HPET", 5: "ACPI"}

IVRS_STRUCTS_AT = 48
IVHD_TYPES = {0x10: 24, 0x11: 40, 0x40: 40}  # IVHD type -> length of its fixed part
IVMD_TYPES = (0x20, 0x21, 0x22)
IVMD_LENGTH = 32
IVHD_ACPI_HID = 0xF0
IVHD_RANGE_START = (0x03, 0x43, 0x47)
IVHD_RANGE_END = 0x04


def _acpi_header(data: bytes, signature: str, problems: List[str]) -> Optional[Dict[str, Any]]:
    """Decode the common ACPI header; append what is wrong with it to ``problems``."""
    if len(data) < ACPI_HEADER.size:
        problems.append(f"{signature}: {len(data)} bytes, shorter than the ACPI header")
        return None
    sig, length, revision, _checksum, oem, oem_table, _oem_rev, _creator, _c_rev = (
        ACPI_HEADER.unpack_from(data)
    )
    if sig != signature.encode():
        problems.append(f"{signature}: signature is {sig!r}")
    if length != len(data):
        problems.append(f"{signature}: header length {length} but the table has {len(data)} bytes")
    if sum(data) % 256:
        problems.append(f"{signature}: checksum does not add up (byte sum {sum(data) % 256:#04x})")
    return {
        "signature": signature,
        "length": length,
        "revision": revision,
        "oem_id": oem.decode("ascii", "replace").strip(),
        "oem_table_id": oem_table.decode("ascii", "replace").strip(),
    }


def _device_scopes(
    data: bytes, start: int, end: int, where: str, problems: List[str]
) -> List[Dict[str, Any]]:
    """Decode the device scope entries in ``data[start:end]`` (VT-d spec 8.3.1)."""
    scopes = []
    offset = start
    while offset < end:
        if offset + 6 > end:
            problems.append(f"{where}: {end - offset} stray bytes after the device scopes")
            break
        kind, length, _flags, _reserved, enum_id, bus = struct.unpack_from("<BBBBBB", data, offset)
        what = f"{where} scope at {offset:#x}"
        if length < 8 or length % 2 or offset + length > end:
            problems.append(
                f"{what}: length {length} (needs an even length >= 8 inside the structure)"
            )
            break
        if kind not in SCOPE_TYPES:
            problems.append(f"{what}: unknown device scope type {kind}")
        # (device, function) hops from the start bus down to the function or bridge.
        path = [(data[i], data[i + 1]) for i in range(offset + 6, offset + length, 2)]
        bad = [f"{d:02x}.{f:x}" for d, f in path if d > 31 or f > 7]
        if bad:
            problems.append(f"{what}: path entries out of range: {', '.join(bad)}")
        scopes.append(
            {
                "type": SCOPE_TYPES.get(kind, str(kind)),
                "enumeration_id": enum_id,
                "start_bus": bus,
                "path": [f"{d:02x}.{f:x}" for d, f in path],
            }
        )
        offset += length
    return scopes


def _dmar_structure(
    data: bytes, offset: int, kind: int, length: int, problems: List[str]
) -> Dict[str, Any]:
    name = DMAR_NAMES[kind]
    where = f"DMAR {name} at {offset:#x}"
    entry: Dict[str, Any] = {"type": name, "offset": offset, "length": length}
    if kind == DMAR_DRHD:
        flags, _size, segment, base = struct.unpack_from("<BBHQ", data, offset + 4)
        entry.update(flags=flags, segment=segment, register_base=base)
        if base == 0 or base % PAGE_4K:
            problems.append(f"{where}: register base {base:#x} is not a 4 KiB aligned address")
    elif kind == DMAR_RMRR:
        segment, base, limit = struct.unpack_from("<HQQ", data, offset + 6)
        entry.update(segment=segment, base=base, limit=limit)
        if base % PAGE_4K or (limit + 1) % PAGE_4K or limit <= base:
            problems.append(
                f"{where}: reserved range [{base:#x}, {limit:#x}] is not whole 4 KiB pages"
            )
    elif kind == DMAR_RHSA:
        base, proximity = struct.unpack_from("<QI", data, offset + 8)
        entry.update(register_base=base, proximity_domain=proximity)
    elif kind in (DMAR_ATSR, DMAR_SATC, DMAR_SIDP):
        (segment,) = struct.unpack_from("<H", data, offset + 6)
        entry["segment"] = segment
    if kind in DMAR_SCOPES_AT:
        entry["scopes"] = _device_scopes(
            data, offset + DMAR_SCOPES_AT[kind], offset + length, where, problems
        )
    return entry


def parse_dmar(data: bytes) -> Dict[str, Any]:
    """Decode an ACPI DMAR table (Intel VT-d) and list what is wrong with it.

    Checked: header length and checksum, host address width, every remapping structure
    within the table and at least its minimum length, DRHD register bases non-zero and
    4 KiB aligned, at most one INCLUDE_PCI_ALL unit per segment, RMRR ranges made of whole
    pages, RHSA naming an existing unit, and every device scope's type and length.
    """
    problems: List[str] = []
    header = _acpi_header(data, "DMAR", problems)
    result: Dict[str, Any] = {"header": header, "structures": [], "problems": problems}
    if header is None or len(data) < DMAR_STRUCTS_AT:
        if header is not None:
            problems.append(f"DMAR: {len(data)} bytes, too short for the DMAR fields")
        return result
    haw, flags = data[36], data[37]
    result.update(host_address_width=haw + 1, flags=flags)
    if not 12 <= haw + 1 <= 64:
        problems.append(f"DMAR: host address width {haw + 1} bits is not in 12..64")
    offset = DMAR_STRUCTS_AT
    end = min(len(data), header["length"])
    while offset < end:
        if offset + 4 > end:
            problems.append(f"DMAR: {end - offset} stray bytes at {offset:#x}")
            break
        kind, length = struct.unpack_from("<HH", data, offset)
        if length < 4 or offset + length > end:
            problems.append(f"DMAR structure type {kind} at {offset:#x}: length {length} overruns")
            break
        if kind not in DMAR_NAMES:
            # Reserved types are for future use: the spec tells the OS to skip them.
            result["structures"].append({"type": str(kind), "offset": offset, "length": length})
        elif length < DMAR_MIN_LENGTH[kind]:
            problems.append(
                f"DMAR {DMAR_NAMES[kind]} at {offset:#x}: length {length}, "
                f"below its minimum {DMAR_MIN_LENGTH[kind]}"
            )
        else:
            result["structures"].append(_dmar_structure(data, offset, kind, length, problems))
        offset += length
    _dmar_cross_checks(result["structures"], problems)
    return result


def _dmar_cross_checks(structures: List[Dict[str, Any]], problems: List[str]) -> None:
    units = [s for s in structures if s["type"] == "DRHD"]
    if not units:
        problems.append("DMAR: no DRHD, so no remapping unit is described")
    catch_all: Dict[int, int] = {}
    for unit in units:
        if unit["flags"] & DMAR_INCLUDE_PCI_ALL:
            catch_all[unit["segment"]] = catch_all.get(unit["segment"], 0) + 1
    for segment, count in sorted(catch_all.items()):
        if count > 1:
            problems.append(f"DMAR: {count} INCLUDE_PCI_ALL units for PCI segment {segment}")
    bases = {unit["register_base"] for unit in units}
    for rhsa in (s for s in structures if s["type"] == "RHSA"):
        if rhsa["register_base"] not in bases:
            problems.append(f"DMAR RHSA names unit {rhsa['register_base']:#x}, not a DRHD")


def ivhd_entry_length(data: bytes, offset: int) -> int:
    """Length of the IVHD device entry at ``offset``; 0 for a type no one can size.

    Types below 0x80 encode their size in bits 7:6 (4 or 8 bytes); the ACPI HID entry
    (0xF0) has 22 fixed bytes and a UID whose length is at byte 21.
    """
    kind = data[offset]
    if kind < 0x80:
        return 4 << (kind >> 6)
    if kind == IVHD_ACPI_HID and offset + 22 <= len(data):
        return 22 + data[offset + 21]
    return 0


def _ivhd_entries(data: bytes, start: int, end: int, where: str, problems: List[str]) -> int:
    """Walk the device entries of an IVHD; return how many there are."""
    count = 0
    open_range: Optional[int] = None
    offset = start
    while offset < end:
        length = ivhd_entry_length(data, offset)
        kind = data[offset]
        if length == 0 or offset + length > end:
            problems.append(
                f"{where}: device entry type {kind:#04x} at {offset:#x} "
                + ("has no defined length" if length == 0 else f"(length {length}) overruns")
            )
            return count
        if kind in IVHD_RANGE_START:
            if open_range is not None:
                problems.append(f"{where}: range at {open_range:#x} has no end entry")
            open_range = offset
        elif kind == IVHD_RANGE_END:
            if open_range is None:
                problems.append(f"{where}: range end at {offset:#x} without a start")
            open_range = None
        count += 1
        offset += length
    if open_range is not None:
        problems.append(f"{where}: range at {open_range:#x} has no end entry")
    return count


def parse_ivrs(data: bytes) -> Dict[str, Any]:
    """Decode an ACPI IVRS table (AMD-Vi) and list what is wrong with it.

    Checked: header length and checksum, every IVHD/IVMD block within the table and of a
    legal length, IOMMU register bases non-zero and 16 KiB aligned, every IVHD device entry
    of a known size with ranges closed, at least one IVHD.
    """
    problems: List[str] = []
    header = _acpi_header(data, "IVRS", problems)
    result: Dict[str, Any] = {"header": header, "blocks": [], "problems": problems}
    if header is None or len(data) < IVRS_STRUCTS_AT:
        if header is not None:
            problems.append(f"IVRS: {len(data)} bytes, too short for the IVRS fields")
        return result
    (result["iv_info"],) = struct.unpack_from("<I", data, 36)
    offset = IVRS_STRUCTS_AT
    end = min(len(data), header["length"])
    while offset < end:
        if offset + 4 > end:
            problems.append(f"IVRS: {end - offset} stray bytes at {offset:#x}")
            break
        kind, flags, length = struct.unpack_from("<BBH", data, offset)
        where = f"IVRS block type {kind:#04x} at {offset:#x}"
        if length < 4 or offset + length > end:
            problems.append(f"{where}: length {length} overruns")
            break
        block: Dict[str, Any] = {"type": f"{kind:#04x}", "offset": offset, "length": length}
        if kind in IVHD_TYPES:
            fixed = IVHD_TYPES[kind]
            if length < fixed:
                problems.append(f"{where}: length {length}, below the IVHD header {fixed}")
            else:
                devid, _cap, base, segment = struct.unpack_from("<HHQH", data, offset + 4)
                block.update(kind="IVHD", flags=flags, device_id=devid, base=base, segment=segment)
                if base == 0 or base % AMD_MMIO_ALIGN:
                    problems.append(f"{where}: IOMMU base {base:#x} is not 16 KiB aligned")
                block["entries"] = _ivhd_entries(
                    data, offset + fixed, offset + length, where, problems
                )
        elif kind in IVMD_TYPES:
            block["kind"] = "IVMD"
            if length != IVMD_LENGTH:
                problems.append(f"{where}: IVMD length {length}, must be {IVMD_LENGTH}")
            else:
                start, size = struct.unpack_from("<QQ", data, offset + 16)
                block.update(start=start, size=size)
                if size == 0:
                    problems.append(f"{where}: IVMD describes an empty memory block")
        result["blocks"].append(block)
        offset += length
    if not any(b.get("kind") == "IVHD" for b in result["blocks"]):
        problems.append("IVRS: no IVHD, so no IOMMU is described")
    return result


def _read_table(name: str) -> Optional[bytes]:
    try:
        with open(os.path.join(ACPI_TABLES, name), "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def acpi_iommu_tables() -> Dict[str, Any]:
    """The DMAR and IVRS tables of this host, decoded (None where a table is absent)."""
    dmar = _read_table("DMAR")
    ivrs = _read_table("IVRS")
    return {
        "machine": platform.machine(),
        "acpi": os.path.isdir(ACPI_TABLES),
        "DMAR": parse_dmar(dmar) if dmar is not None else None,
        "IVRS": parse_ivrs(ivrs) if ivrs is not None else None,
    }


# -- IOMMU faults in the kernel log ----------------------------------------------------------


def iommu_fault(line: str) -> Optional[Dict[str, Any]]:
    """The IOMMU fault a kernel log line reports, as {kind, device, line}, or None.

    ``device`` is the faulting PCI function (``0000:00:04.0``), None when the line names
    none (SMMU stream IDs, virtio-iommu endpoints).
    """
    fault = parse_fault(line)
    if fault is None:
        return None
    return {"kind": fault.kind, "device": fault.device, "line": line}


def iommu_faults(lines: List[str]) -> List[Dict[str, Any]]:
    """Every IOMMU fault reported in ``lines``."""
    return [f for f in map(iommu_fault, lines) if f is not None]


def judge_faults(
    history: List[str], idle: List[str], driven: List[str]
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Split the faults of a kernel log into (foreign, idle, unjudged).

    ``history`` is the log since boot, ``idle`` the lines logged while nothing was driven,
    ``driven`` the functions the suite drives (devices under test and their groups).
    Foreign: faults from any other function, which no check can have caused. Idle: every
    fault of the idle window. Unjudged: the other faults before the window, from driven
    functions (DMA isolation checks cause them on purpose) or naming no PCI function.
    """
    driven_set = set(driven)
    foreign, unjudged = [], []
    for fault in iommu_faults(history):
        if fault["device"] is not None and fault["device"] not in driven_set:
            foreign.append(fault)
        else:
            unjudged.append(fault)
    return foreign, iommu_faults(idle), unjudged


def fault_survey(driven: List[str], idle_s: float = 2.0) -> Dict[str, Any]:
    """Read the kernel log since boot, then watch it for ``idle_s`` seconds while nothing is
    driven, and sort the IOMMU faults it reports (see :func:`judge_faults`)."""
    history = evidence.kmsg_since(-1)["lines"]
    cursor = evidence.kmsg_cursor()
    time.sleep(idle_s)
    idle = evidence.kmsg_since(cursor)["lines"]
    foreign, idle_faults, unjudged = judge_faults(history, idle, driven)
    return {
        "foreign": foreign,
        "idle": idle_faults,
        "unjudged": unjudged,
        "idle_s": idle_s,
        "log_lines": len(history),
        # The kernel's first record is its banner; without it the ring buffer has wrapped
        # and faults from early boot are no longer visible.
        "log_from_boot": bool(history) and history[0].startswith("Linux version"),
    }
