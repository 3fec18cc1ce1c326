"""What identifies a DUT to a certifier beyond its versions, as vfio_hil_facts reads it: the
digest, length and OEM header fields of the ACPI IOMMU tables (DMAR, IVRS), and each PCIe
device's Device Serial Number from its extended config space."""

from __future__ import annotations

import hashlib
import struct
from types import ModuleType

import pytest
from ansible_fake_sysfs import FakeSysfs, acpi_table

# Extended capability IDs (PCIe base spec 7.6): AER, ARI, vendor-specific, Device Serial Number.
AER, ARI, VSEC, DSN = 0x0001, 0x000E, 0x000B, 0x0003
# The two dwords after a DSN capability's header as `lspci -xxxx` dumps them (little-endian),
# for the serial lspci -vv prints as "Device Serial Number 00-1b-21-ff-ff-a1-b2-c3".
DSN_BYTES = bytes.fromhex("c3b2a1ffff211b00")
DSN_TEXT = "00-1b-21-ff-ff-a1-b2-c3"

IVRS_BODY = struct.pack("<I8x", 0x00203041)


def ext_config(*caps: tuple[int, int, int, bytes], size: int = 0x1000) -> bytes:
    """A config space of ``size`` bytes holding extended capabilities, each given as
    (offset, capability ID, next capability's offset, what follows the header)."""
    config = bytearray(size)
    for offset, cap_id, next_offset, body in caps:
        struct.pack_into("<I", config, offset, cap_id | 1 << 16 | next_offset << 20)
        config[offset + 4 : offset + 4 + len(body)] = body
    return bytes(config[:size])


def test_dsn_is_found_along_the_chain(facts_mod: ModuleType) -> None:
    config = ext_config(
        (0x100, AER, 0x148, bytes(8)), (0x148, ARI, 0x150, bytes(4)), (0x150, DSN, 0, DSN_BYTES)
    )

    assert facts_mod.device_serial_number(config) == DSN_TEXT


def test_dsn_first_in_the_chain(facts_mod: ModuleType) -> None:
    serial = struct.pack("<II", 0x44332211, 0x88776655)

    assert facts_mod.device_serial_number(ext_config((0x100, DSN, 0, serial))) == (
        "88-77-66-55-44-33-22-11"
    )


@pytest.mark.parametrize(
    "config",
    [
        # A chain without the capability.
        ext_config((0x100, AER, 0x148, bytes(8)), (0x148, ARI, 0, bytes(4))),
        # No extended capabilities: a zero header (QEMU's conventional devices behind PCIe).
        bytes(0x1000),
        # All ones: the device did not answer.
        b"\xff" * 0x1000,
        # Conventional config space only: root's 256 bytes of a PCI device, a user's 64.
        ext_config(size=0x100),
        ext_config(size=0x40),
        b"",
        # The capability is there, but the read stopped in it.
        ext_config((0x100, DSN, 0, DSN_BYTES))[:0x108],
    ],
    ids=["no-dsn", "no-ext-caps", "all-ones", "256-bytes", "64-bytes", "empty", "cut-short"],
)
def test_no_dsn(facts_mod: ModuleType, config: bytes) -> None:
    assert facts_mod.device_serial_number(config) is None


@pytest.mark.parametrize(
    "caps",
    [
        [(0x100, AER, 0x100, b"")],
        [(0x100, AER, 0x140, b""), (0x140, VSEC, 0x200, b""), (0x200, ARI, 0x140, b"")],
    ],
    ids=["itself", "back"],
)
def test_a_looping_chain_ends(
    facts_mod: ModuleType, caps: list[tuple[int, int, int, bytes]]
) -> None:
    """A DSN outside the loop is never reached, and the search ends."""
    config = ext_config(*caps, (0x300, DSN, 0, DSN_BYTES))

    assert facts_mod.device_serial_number(config) is None


@pytest.mark.parametrize(
    ("next_offset", "found"),
    [
        (0x40, None),  # into the conventional header: malformed, the search ends
        (0xFFC, None),  # a DSN whose serial would lie past 4 KiB
        (0x152, DSN_TEXT),  # the two low bits are reserved: masked, as the kernel does
    ],
)
def test_malformed_next_offsets(facts_mod: ModuleType, next_offset: int, found: str | None) -> None:
    config = bytearray(ext_config((0x100, AER, next_offset, bytes(8))))
    for at in (0x40, 0x150, 0xFFC):
        struct.pack_into("<I", config, at, DSN | 1 << 16)
    config[0x154:0x15C] = DSN_BYTES

    assert facts_mod.device_serial_number(bytes(config)) == found


def test_devices_carry_their_dsn(facts_mod: ModuleType, fake_sysfs: FakeSysfs) -> None:
    fake_sysfs.add_device("0000:3b:00.0", config=ext_config((0x100, DSN, 0, DSN_BYTES)))
    fake_sysfs.add_device("0000:3c:00.0", config=ext_config((0x100, AER, 0, bytes(8))))
    fake_sysfs.add_device("0000:00:04.0", config=bytes(0x100))
    fake_sysfs.add_device("0000:00:05.0")  # no config file to read

    devices = facts_mod.read_devices(str(fake_sysfs.root))

    assert {bdf: dev["dsn"] for bdf, dev in devices.items()} == {
        "0000:00:04.0": None,
        "0000:00:05.0": None,
        "0000:3b:00.0": DSN_TEXT,
        "0000:3c:00.0": None,
    }


def test_table_digest_is_sha256_of_its_bytes(facts_mod: ModuleType, fake_sysfs: FakeSysfs) -> None:
    table = acpi_table("IVRS", IVRS_BODY, ("AMD   ", "AmdTable", 0x00000001))
    fake_sysfs.add_acpi_table("IVRS", table)
    root = str(fake_sysfs.root)

    first = facts_mod.read_acpi_iommu_tables(root)
    changed = bytearray(table)
    changed[40] ^= 0x01
    fake_sysfs.add_acpi_table("IVRS", bytes(changed))
    second = facts_mod.read_acpi_iommu_tables(root)

    assert first == {
        "IVRS": {
            "sha256": hashlib.sha256(table).hexdigest(),
            "length": 48,
            "oem_id": "AMD",
            "oem_table_id": "AmdTable",
            "oem_revision": 1,
        }
    }
    assert second["IVRS"]["sha256"] == hashlib.sha256(bytes(changed)).hexdigest()
    assert second["IVRS"]["sha256"] != first["IVRS"]["sha256"]
    assert {k: v for k, v in second["IVRS"].items() if k != "sha256"} == {
        k: v for k, v in first["IVRS"].items() if k != "sha256"
    }


def test_every_iommu_table_and_only_those(facts_mod: ModuleType, fake_sysfs: FakeSysfs) -> None:
    """Several DMAR tables are numbered by sysfs; other tables are left out; a table that cannot
    be read is there, as None; one shorter than its header has no OEM fields."""
    fake_sysfs.add_acpi_table("DMAR1", acpi_table("DMAR", bytes(12), ("INTEL ", "EDK2    ", 2)))
    fake_sysfs.add_acpi_table("DMAR2", b"DMAR\x14\x00\x00\x00")
    fake_sysfs.add_acpi_table("FACP", acpi_table("FACP", bytes(8)))
    fake_sysfs.add_acpi_table("SSDT1", acpi_table("SSDT", bytes(8)))
    # A directory where the table should be: open() fails as it would for a user.
    (fake_sysfs.root / "sys/firmware/acpi/tables/IVRS").mkdir()

    tables = facts_mod.read_acpi_iommu_tables(str(fake_sysfs.root))

    assert sorted(tables) == ["DMAR1", "DMAR2", "IVRS"]
    assert tables["DMAR1"]["oem_id"] == "INTEL"
    assert tables["DMAR1"]["oem_table_id"] == "EDK2"
    assert tables["DMAR1"]["oem_revision"] == 2
    assert tables["DMAR2"] == {
        "sha256": hashlib.sha256(b"DMAR\x14\x00\x00\x00").hexdigest(),
        "length": 8,
        "oem_id": None,
        "oem_table_id": None,
        "oem_revision": None,
    }
    assert tables["IVRS"] is None


def test_acpi_without_iommu_tables(facts_mod: ModuleType, fake_sysfs: FakeSysfs) -> None:
    fake_sysfs.add_acpi_table("APIC", acpi_table("APIC", bytes(8)))

    assert facts_mod.read_acpi_iommu_tables(str(fake_sysfs.root)) == {}
