"""Pure logic of the device checks' DUT side: BAR sizing arithmetic, the reach of a bus or
slot reset in a sysfs tree, and the ioctl transcript."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vfio_hil.dut import reset
from vfio_hil.dut.common import Transcript, errno_name
from vfio_hil.dut.regions import _bar_size


@pytest.mark.parametrize(
    ("kind", "low", "high", "size"),
    [
        ("mem32", 0xFFF00000, 0, 0x100000),  # edu BAR0: 1 MiB
        ("mem32", 0xFFFFF000, 0, 0x1000),
        ("mem32", 0xFFFFF008, 0, 0x1000),  # prefetchable bit is not part of the mask
        ("mem64", 0xFFFFC004, 0xFFFFFFFF, 0x4000),  # NVMe BAR0: 16 KiB, 64-bit
        ("mem64", 0x0000000C, 0xFFFFFFFE, 0x200000000),  # 8 GiB above 4 GiB
        ("io", 0xFFFFFF01, 0, 0x100),  # pci-testdev BAR1: 256 ports, 32-bit decoder
        ("io", 0x0000FFE1, 0, 0x20),  # 16-bit decoder with bits 31:16 hardwired to 0
        ("mem32", 0, 0, 0),  # not implemented
        ("io", 0x1, 0, 0),
    ],
)
def test_bar_size(kind: str, low: int, high: int, size: int) -> None:
    assert _bar_size(kind, low, high) == size


def _pci_tree(tmp_path: Path, paths: list[str]) -> Path:
    """A /sys/devices tree and a /sys/bus/pci/devices directory of links into it."""
    devices = tmp_path / "bus" / "pci" / "devices"
    devices.mkdir(parents=True)
    for path in paths:
        target = tmp_path / "devices" / path
        target.mkdir(parents=True)
        os.symlink(target, devices / path.rsplit("/", 1)[-1])
    return devices


def test_reset_domain_behind_a_bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = _pci_tree(
        tmp_path,
        [
            "pci0000:00/0000:00:04.0",
            "pci0000:00/0000:00:08.0",
            "pci0000:00/0000:00:08.0/0000:01:00.0",
            "pci0000:00/0000:00:08.0/0000:01:00.1",
            "pci0000:00/0000:00:08.0/0000:01:01.0",
            "pci0000:00/0000:00:08.0/0000:01:01.0/0000:02:00.0",
        ],
    )
    monkeypatch.setattr(reset, "PCI_DEVICES", str(devices))
    assert reset._reset_domain("0000:01:00.0") == {
        "bus": ["0000:01:00.0", "0000:01:00.1", "0000:01:01.0", "0000:02:00.0"],
        "slot": ["0000:01:00.0", "0000:01:00.1"],
    }
    assert reset._reset_domain("0000:01:01.0")["slot"] == ["0000:01:01.0", "0000:02:00.0"]


def test_transcript() -> None:
    log = Transcript()
    assert log.add("VFIO_GROUP_SET_CONTAINER", -1, group=8) == "-EPERM"
    assert log.add("pwrite", 4, at=8) == "4"
    assert log.open("/nonexistent/vfio/7") == -2
    assert log.entries == [
        {"ioctl": "VFIO_GROUP_SET_CONTAINER", "args": {"group": 8}, "result": "-EPERM"},
        {"ioctl": "pwrite", "args": {"at": 8}, "result": "4"},
        {"ioctl": "open", "args": {"path": "/nonexistent/vfio/7"}, "result": "-ENOENT"},
    ]
    assert errno_name(0) == "0"
