"""DMAR and IVRS parsing (vfio_hil.dut.platform_checks) on canned tables: the ones QEMU 7.2
builds for the virtual rack, and broken variants of them."""

from __future__ import annotations

import struct

import pytest

from vfio_hil.dut.platform_checks import ivhd_entry_length, parse_dmar, parse_ivrs

# /sys/firmware/acpi/tables/DMAR of the default virtual DUT (QEMU 7.2 q35, intel-iommu,
# intremap=on): one DRHD at 0xfed90000 with an IOAPIC scope and one scope per PCI function.
QEMU_DMAR = bytes.fromhex(
    "444d4152b0000000012a424f434853204258504320202020010000004258"
    "50430100000026010000000000000000000000008000000000000000d9fe"
    "000000000308000000ff0000010800000000000001080000000002000108"
    "000000000300010800000000040001080000000005000108000000000600"
    "010800000000070002080000000008000108000000000900010800000000"
    "09010108000000001f000108000000001f020108000000001f03"
)

# /sys/firmware/acpi/tables/IVRS of the virtual DUT with vm_iommu: amd (QEMU 7.2 amd-iommu):
# one type 0x10 IVHD at 0xfed80000 selecting each function, a range for bus 1, the IOAPIC.
QEMU_IVRS = bytes.fromhex(
    "4956525390000000014a424f434853204258504320202020010000004258"
    "50430100000000280000000000000000000010d16000080040000000d8fe"
    "000000000000000044000000020000000208000002100000021800000220"
    "0000022800000230000002380000024000000300010004ff010002480000"
    "0249000002f8000002fa000002fb00004800000000a00001"
)


def _fix_checksum(table: bytearray) -> bytes:
    table[9] = 0
    table[9] = (-sum(table)) % 256
    return bytes(table)


def _acpi(signature: bytes, body: bytes) -> bytes:
    header = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), 1, 0, b"TEST", b"TESTTBL",
                         1, b"TEST", 1)  # fmt: skip
    return _fix_checksum(bytearray(header + body))


def _dmar(*structures: bytes, haw: int = 38, flags: int = 1) -> bytes:
    return _acpi(b"DMAR", struct.pack("<BB10x", haw, flags) + b"".join(structures))


def _scope(kind: int, bus: int, *path: tuple[int, int], length: int | None = None) -> bytes:
    hops = b"".join(struct.pack("<BB", d, f) for d, f in path)
    return struct.pack("<BBBBBB", kind, length or 6 + len(hops), 0, 0, 0, bus) + hops


def _drhd(base: int, *scopes: bytes, flags: int = 0, segment: int = 0) -> bytes:
    body = b"".join(scopes)
    return struct.pack("<HHBBHQ", 0, 16 + len(body), flags, 0, segment, base) + body


def _rmrr(base: int, limit: int, *scopes: bytes) -> bytes:
    body = b"".join(scopes)
    return struct.pack("<HHHHQQ", 1, 24 + len(body), 0, 0, base, limit) + body


def test_qemu_dmar_is_clean() -> None:
    r = parse_dmar(QEMU_DMAR)
    assert r["problems"] == []
    assert r["host_address_width"] == 39
    assert r["flags"] & 1  # INTR_REMAP
    (drhd,) = r["structures"]
    assert drhd["type"] == "DRHD" and drhd["register_base"] == 0xFED90000
    ioapic = {"type": "IOAPIC", "enumeration_id": 0, "start_bus": 0xFF, "path": ["00.0"]}
    bridge = {"type": "PCI sub-hierarchy", "enumeration_id": 0, "start_bus": 0, "path": ["08.0"]}
    assert drhd["scopes"][0] == ioapic
    assert bridge in drhd["scopes"]
    assert len(drhd["scopes"]) == 14


def test_synthetic_dmar_is_clean() -> None:
    table = _dmar(
        _drhd(0xFED90000, _scope(1, 0, (4, 0)), _scope(2, 0, (8, 0), (0, 0))),
        _drhd(0xFED91000, flags=1),
        _rmrr(0x7F000000, 0x7F0FFFFF, _scope(1, 0, (0x1D, 0))),
    )
    r = parse_dmar(table)
    assert r["problems"] == []
    assert [s["type"] for s in r["structures"]] == ["DRHD", "DRHD", "RMRR"]
    assert r["structures"][0]["scopes"][1]["path"] == ["08.0", "00.0"]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (QEMU_DMAR[:-2], "header length 176 but the table has 174 bytes"),
        (QEMU_DMAR[:-1] + b"\x04", "checksum does not add up"),
        (_dmar(_drhd(0xFED90800)), "register base 0xfed90800 is not a 4 KiB aligned address"),
        (_dmar(_drhd(0)), "register base 0x0 is not a 4 KiB aligned address"),
        (_dmar(_drhd(0xFED90000, _scope(1, 0, (4, 0), length=7))), "length 7"),
        (_dmar(_drhd(0xFED90000, _scope(1, 0, length=6))), "length 6"),
        (_dmar(_drhd(0xFED90000, _scope(9, 0, (4, 0)))), "unknown device scope type 9"),
        (_dmar(_drhd(0xFED90000, _scope(1, 0, (40, 0)))), "path entries out of range: 28.0"),
        (_dmar(_drhd(0xFED90000, _scope(1, 0, (4, 0), length=10))), "length 10"),
        (_dmar(_rmrr(0x7F000800, 0x7F0FFFFF), _drhd(0xFED90000)), "not whole 4 KiB pages"),
        (_dmar(_rmrr(0x7F000000, 0x7F000FFE), _drhd(0xFED90000)), "not whole 4 KiB pages"),
        (_dmar(_rmrr(0x7F001000, 0x7F000FFF), _drhd(0xFED90000)), "not whole 4 KiB pages"),
        (_dmar(_drhd(0xFED90000, flags=1), _drhd(0xFED91000, flags=1)), "2 INCLUDE_PCI_ALL"),
        (_dmar(), "no DRHD"),
        (_dmar(_drhd(0xFED90000), haw=8), "host address width 9 bits"),
        (_dmar(_drhd(0xFED90000) + b"\x00\x00"), "2 stray bytes"),
        (_dmar(struct.pack("<HH", 0, 40) + bytes(12)), "length 40 overruns"),
        (_dmar(struct.pack("<HH12x", 1, 16), _drhd(0xFED90000)), "RMRR at 0x30: length 16"),
        (
            _dmar(_drhd(0xFED90000), struct.pack("<HHIQI", 3, 20, 0, 0xFED99000, 0)),
            "RHSA names unit 0xfed99000",
        ),
        (b"DMAR", "shorter than the ACPI header"),
    ],
)
def test_broken_dmar(table: bytes, problem: str) -> None:
    problems = parse_dmar(table)["problems"]
    assert any(problem in p for p in problems), problems


def test_reserved_dmar_structure_is_skipped() -> None:
    r = parse_dmar(_dmar(_drhd(0xFED90000), struct.pack("<HH4x", 0x20, 8)))
    assert r["problems"] == []
    assert r["structures"][1] == {"type": "32", "offset": 64, "length": 8}


@pytest.mark.parametrize(
    ("entry", "length"),
    [
        (b"\x00\x00\x00\x00", 4),  # padding
        (b"\x02\x08\x00\x00", 4),  # select
        (b"\x42" + bytes(7), 8),  # alias select
        (b"\x48" + bytes(7), 8),  # special device (IOAPIC, HPET)
        (b"\xf0" + bytes(20) + b"\x05" + bytes(5), 27),  # ACPI HID with a 5-byte UID
        (b"\x80" + bytes(7), 0),  # variable-length type nobody can size
    ],
)
def test_ivhd_entry_length(entry: bytes, length: int) -> None:
    assert ivhd_entry_length(entry, 0) == length


def _ivhd(base: int, entries: bytes, kind: int = 0x11, devid: int = 0x10) -> bytes:
    fixed = {0x10: 24, 0x11: 40, 0x40: 40}[kind]
    head = struct.pack("<BBHHHQHH", kind, 0, fixed + len(entries), devid, 0x40, base, 0, 0)
    return head + bytes(fixed - len(head)) + entries


def _ivrs(*blocks: bytes) -> bytes:
    return _acpi(b"IVRS", struct.pack("<I8x", 0x00203041) + b"".join(blocks))


def _ivmd(start: int, size: int, length: int = 32) -> bytes:
    return struct.pack("<BBHHHQQQ", 0x21, 0, length, 0x20, 0, 0, start, size)[:length]


def test_qemu_ivrs_is_clean() -> None:
    r = parse_ivrs(QEMU_IVRS)
    assert r["problems"] == []
    (ivhd,) = r["blocks"]
    assert ivhd["kind"] == "IVHD" and ivhd["type"] == "0x10"
    assert ivhd["base"] == 0xFED80000 and ivhd["device_id"] == 0x0008
    assert ivhd["entries"] == 17


def test_synthetic_ivrs_is_clean() -> None:
    entries = b"\x03\x00\x00\x00" + b"\x04\xff\x00\x00" + b"\x48\x00\x00\xd7\x00\xa0\x00\x01"
    legacy = _ivhd(0xFED80000, b"\x01\x00\x00\x00", kind=0x10)
    r = parse_ivrs(_ivrs(_ivhd(0xFED80000, entries), legacy, _ivmd(0x1000, 0x1000)))
    assert r["problems"] == []
    assert [b["kind"] for b in r["blocks"]] == ["IVHD", "IVHD", "IVMD"]
    assert r["blocks"][0]["entries"] == 3


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (_ivrs(_ivhd(0xFED81000, b"\x01\x00\x00\x00")), "IOMMU base 0xfed81000 is not 16 KiB"),
        (_ivrs(_ivhd(0, b"\x01\x00\x00\x00")), "IOMMU base 0x0"),
        (_ivrs(_ivhd(0xFED80000, b"\x03\x00\x00\x00")), "has no end entry"),
        (_ivrs(_ivhd(0xFED80000, b"\x04\x00\x00\x00")), "range end at 0x58 without a start"),
        (_ivrs(_ivhd(0xFED80000, b"\x80" + bytes(7))), "has no defined length"),
        (_ivrs(_ivhd(0xFED80000, b"\x42\x00\x00\x00")), "(length 8) overruns"),
        (_ivrs(_ivhd(0xFED80000, b"")[:20]), "length 40 overruns"),
        (_ivrs(_ivhd(0xFED80000, b""), _ivmd(0x1000, 0x1000, length=24)), "IVMD length 24"),
        (_ivrs(_ivhd(0xFED80000, b""), _ivmd(0x1000, 0)), "empty memory block"),
        (_ivrs(_ivmd(0x1000, 0x1000)), "no IVHD"),
    ],
)
def test_broken_ivrs(table: bytes, problem: str) -> None:
    problems = parse_ivrs(table)["problems"]
    assert any(problem in p for p in problems), problems
