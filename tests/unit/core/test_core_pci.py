"""The PCI config space parser on canned config spaces: header fields, the standard
capabilities (PM, MSI, MSI-X, PCIe) and extended ones (AER, ACS, SR-IOV), and malformed
capability lists, which must give a clear error, never a hang."""

from __future__ import annotations

import struct
from typing import Dict

import pytest

from vfio_hil.core import CapabilityChainError, pci


class Config:
    """A config space under construction (little-endian registers)."""

    def __init__(self, size: int = 4096) -> None:
        self.data = bytearray(size)

    def put(self, offset: int, fmt: str, *values: int) -> Config:
        struct.pack_into("<" + fmt, self.data, offset, *values)
        return self

    def bytes(self) -> bytes:
        return bytes(self.data)


def _endpoint() -> Config:
    """A PCIe endpoint: MSI-X at 0x40 -> PM at 0x60 -> PCIe at 0x80 -> MSI at 0xB0; AER at
    0x100 -> ACS at 0x140 -> SR-IOV at 0x160 -> DSN (not decoded) at 0x1A0."""
    c = Config()
    c.put(0x00, "HHHH", 0x1B36, 0x0010, 0x0407, 0x0010)  # ids, command, status: cap list
    c.put(0x08, "I", 0x01080202)  # revision 2, class 01:08:02
    c.put(0x0E, "B", 0x80)  # type 0, multifunction
    c.put(0x34, "B", 0x40)
    c.put(0x3D, "B", 1)  # INTA
    c.put(0x40, "BBHII", 0x11, 0x60, 0x8000 | 63, 0x2000 | 0, 0x3000 | 4)
    c.put(0x60, "BBHH", 0x01, 0x80, 0x0603 | (0x19 << 11), 0x0008 | 3)
    c.put(0x80, "BBH", 0x10, 0xB0, 0x0002)  # v2 endpoint
    c.put(0x84, "I", (1 << 28) | 1)  # FLR, max payload 256
    c.put(0x88, "H", (2 << 12) | (1 << 5))  # max read 512, max payload 256
    c.put(0x8A, "H", 0x4)
    c.put(0x8C, "I", (4 << 4) | 3)  # x4, 8 GT/s
    c.put(0x92, "H", (2 << 4) | 2)  # x2, 5 GT/s
    c.put(
        0xB0, "BBHIIHxxI", 0x05, 0x00, 0x0080 | 0x0100 | (2 << 1) | 1, 0xFEE00000, 0x1, 0x4021, 0x2
    )
    c.put(0x100, "IIIIIII", (0x140 << 20) | (2 << 16) | 0x0001, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60)
    c.put(0x140, "IHH", (0x160 << 20) | (1 << 16) | 0x000D, 0x005F, 0x001D)
    c.put(
        0x160,
        "IIHHHHHBxHHxxHII",
        (0x1A0 << 20) | (1 << 16) | 0x0010,
        2,
        1,
        0,
        8,
        8,
        4,
        0,
        0x80,
        2,
        0x0011,
        0x553,
        1,
    )
    c.put(0x1A0, "III", (1 << 16) | 0x0003, 0x12345678, 0x9ABCDEF0)
    return c


def test_header_fields() -> None:
    config = pci.parse_config(_endpoint().bytes())
    assert (config.vendor_id, config.device_id) == (0x1B36, 0x0010)
    assert (config.command, config.status, config.revision) == (0x0407, 0x0010, 2)
    assert config.class_code == 0x010802
    assert (config.header_type, config.multifunction, config.interrupt_pin) == (0, True, 1)


def test_standard_capabilities_in_list_order() -> None:
    config = pci.parse_config(_endpoint().bytes())
    assert [(c.name, c.offset) for c in config.capabilities] == [
        ("MSIX", 0x40),
        ("PM", 0x60),
        ("EXP", 0x80),
        ("MSI", 0xB0),
    ]


def _fields(cap_id: int, extended: bool = False) -> Dict[str, int]:
    cap = pci.parse_config(_endpoint().bytes()).find(cap_id, extended)
    assert cap is not None
    return cap.fields


def test_msix() -> None:
    assert _fields(pci.PCI_CAP_ID_MSIX) == {
        "table_size": 64,
        "function_mask": 0,
        "enabled": 1,
        "table_bir": 0,
        "table_offset": 0x2000,
        "pba_bir": 4,
        "pba_offset": 0x3000,
    }


def test_pm() -> None:
    assert _fields(pci.PCI_CAP_ID_PM) == {
        "version": 3,
        "d1_support": 1,
        "d2_support": 1,
        "pme_support": 0x19,
        "power_state": 3,
        "no_soft_reset": 1,
        "pme_enable": 0,
    }


def test_pcie() -> None:
    assert _fields(pci.PCI_CAP_ID_EXP) == {
        "version": 2,
        "device_type": 0,
        "max_payload_supported": 256,
        "flr_capable": 1,
        "max_payload": 256,
        "max_read_request": 512,
        "device_status": 0x4,
        "max_link_speed": 3,
        "max_link_width": 4,
        "link_speed": 2,
        "link_width": 2,
    }


def test_pcie_integrated_endpoint_has_no_link_fields() -> None:
    data = _endpoint().put(0x82, "H", 0x0092).bytes()
    fields = pci.parse_config(data).find(pci.PCI_CAP_ID_EXP).fields
    assert fields["device_type"] == 9 and "link_width" not in fields
    assert pci.PCIE_DEVICE_TYPES[9] == "root complex integrated endpoint"


def test_msi_64bit_with_masking() -> None:
    assert _fields(pci.PCI_CAP_ID_MSI) == {
        "enabled": 1,
        "multiple_message_capable": 4,
        "multiple_message_enabled": 1,
        "is_64bit": 1,
        "per_vector_masking": 1,
        "address": 0x1_FEE00000,
        "data": 0x4021,
        "mask": 0x2,
    }


def test_msi_32bit() -> None:
    data = _endpoint().put(0xB2, "H", 0x0001).put(0xB8, "H", 0x4055).bytes()
    fields = pci.parse_config(data).find(pci.PCI_CAP_ID_MSI).fields
    assert (fields["is_64bit"], fields["address"], fields["data"]) == (0, 0xFEE00000, 0x4055)
    assert "mask" not in fields


def test_extended_capabilities() -> None:
    config = pci.parse_config(_endpoint().bytes())
    assert [(c.name, c.offset, c.version) for c in config.extended_capabilities] == [
        ("ERR", 0x100, 2),
        ("ACS", 0x140, 1),
        ("SRIOV", 0x160, 1),
        ("DSN", 0x1A0, 1),
    ]
    assert config.find(0x0003, extended=True).fields == {}  # listed, not decoded
    assert config.find(pci.PCI_CAP_ID_MSI, extended=True) is None


def test_aer() -> None:
    assert _fields(pci.PCI_EXT_CAP_ID_ERR, extended=True) == {
        "uncorrectable_status": 0x10,
        "uncorrectable_mask": 0x20,
        "uncorrectable_severity": 0x30,
        "correctable_status": 0x40,
        "correctable_mask": 0x50,
        "capabilities_control": 0x60,
    }


def test_acs() -> None:
    fields = _fields(pci.PCI_EXT_CAP_ID_ACS, extended=True)
    assert (fields["capability"], fields["control"]) == (0x5F, 0x1D)
    assert fields["source_validation"] == 1 and fields["source_validation_enabled"] == 1
    assert fields["translation_blocking"] == 1 and fields["translation_blocking_enabled"] == 0
    assert fields["p2p_egress_control"] == 0 and fields["direct_translated_p2p"] == 1


def test_sriov() -> None:
    assert _fields(pci.PCI_EXT_CAP_ID_SRIOV, extended=True) == {
        "capabilities": 2,
        "control": 1,
        "status": 0,
        "initial_vfs": 8,
        "total_vfs": 8,
        "num_vfs": 4,
        "function_dependency_link": 0,
        "vf_offset": 0x80,
        "vf_stride": 2,
        "vf_device_id": 0x0011,
        "supported_page_sizes": 0x553,
        "system_page_size": 1,
    }


def test_conventional_device_has_no_extended_space() -> None:
    data = _endpoint().bytes()[:256]
    config = pci.parse_config(data)
    assert len(config.capabilities) == 4 and config.extended_capabilities == []
    assert pci.parse_config(data + b"\xff" * 3840).extended_capabilities == []


def test_no_capability_list_bit() -> None:
    data = _endpoint().put(0x06, "H", 0).bytes()
    assert pci.parse_config(data).capabilities == []


def test_first_extended_capability_hidden_by_vfio() -> None:
    # vfio-pci leaves an id-0 header at 0x100 that links to the capabilities it exposes.
    data = _endpoint().put(0x100, "I", 0x140 << 20).bytes()
    assert [c.name for c in pci.parse_config(data).extended_capabilities] == ["ACS", "SRIOV", "DSN"]


def test_cardbus_capability_pointer() -> None:
    data = Config(256).put(0x06, "H", 0x10).put(0x0E, "B", 2).put(0x14, "B", 0x80)
    data.put(0x80, "BBHH", 0x01, 0, 3, 0)
    assert [c.name for c in pci.parse_config(data.bytes()).capabilities] == ["PM"]


@pytest.mark.parametrize(
    ("case", "config", "message"),
    [
        ("standard loop", _endpoint().put(0xB1, "B", 0x40), "capability list loops back to 0x40"),
        ("self loop", _endpoint().put(0x41, "B", 0x40), "loops back to 0x40"),
        ("pointer into the header", _endpoint().put(0x34, "B", 0x20), "pointer 0x20 outside"),
        ("next into the header", _endpoint().put(0xB1, "B", 0x3C), "pointer 0x3c outside"),
        ("extended loop", _endpoint().put(0x1A0, "I", (0x100 << 20) | 3), "loops back to 0x100"),
        ("extended below 0x100", _endpoint().put(0x1A0, "I", (0x0C0 << 20) | 3), "0xc0 outside"),
        (
            "extended beyond the data",
            Config(0x200).put(0x100, "I", 0x400 << 20 | 1),
            "0x400 outside",
        ),
    ],
)
def test_malformed_lists_raise(case: str, config: Config, message: str) -> None:
    with pytest.raises(CapabilityChainError, match=message):
        pci.parse_config(config.bytes())


def test_capability_cut_by_the_end_of_data() -> None:
    data = _endpoint().bytes()[:0x48]  # MSI-X at 0x40 needs 12 bytes
    with pytest.raises(CapabilityChainError, match="beyond the 0x48 bytes"):
        pci.parse_config(data)


def test_too_short_for_a_header() -> None:
    with pytest.raises(ValueError, match="at least 64 bytes"):
        pci.parse_config(b"\x00" * 32)


def test_a_full_ring_of_capabilities_ends() -> None:
    # 48 capabilities in a row (the most a 256-byte space holds), the last ending the list.
    c = Config(256).put(0x06, "H", 0x10).put(0x34, "B", 0x40)
    for offset in range(0x40, 0x100, 4):
        c.put(offset, "BB", 0x09, 0 if offset == 0xFC else offset + 4)
    assert len(pci.parse_config(c.bytes()).capabilities) == 48
