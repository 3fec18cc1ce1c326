"""PCI sysfs helpers against a fake sysfs tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vfio_hil.core import sysfs


def _device(root: Path, bdf: str, group: int, driver: str | None, ids: dict[str, str]) -> None:
    dev = root / "sys/devices/pci0000:00" / bdf
    dev.mkdir(parents=True)
    for name, value in ids.items():
        (dev / name).write_text(value + "\n")
    groups = root / "sys/kernel/iommu_groups" / str(group) / "devices"
    groups.mkdir(parents=True, exist_ok=True)
    (groups / bdf).symlink_to(os.path.relpath(dev, groups))
    (dev / "iommu_group").symlink_to(os.path.relpath(groups.parent, dev))
    if driver is not None:
        drv = root / "sys/bus/pci/drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        (dev / "driver").symlink_to(os.path.relpath(drv, dev))
    links = root / "sys/bus/pci/devices"
    links.mkdir(parents=True, exist_ok=True)
    (links / bdf).symlink_to(os.path.relpath(dev, links))


EDU_IDS = {
    "vendor": "0x1234",
    "device": "0x11e8",
    "class": "0x00ff00",
    "subsystem_vendor": "0x1af4",
    "subsystem_device": "0x1100",
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _device(tmp_path, "0000:00:04.0", 3, "vfio-pci", EDU_IDS)
    _device(tmp_path, "0000:00:1f.3", 8, None, {**EDU_IDS, "vendor": "0x8086"})
    _device(tmp_path, "0000:00:1f.0", 8, "lpc_ich", EDU_IDS)
    return tmp_path


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("00:04.0", "0000:00:04.0"),
        ("0000:00:04.0", "0000:00:04.0"),
        ("0:0:4.0", "0000:00:04.0"),
        ("0000:0A:1F.7", "0000:0a:1f.7"),
        (" 01:00.0\n", "0000:01:00.0"),
        ("10000:00:02.0", "10000:00:02.0"),
    ],
)
def test_normalize_bdf(given: str, expected: str) -> None:
    assert sysfs.normalize_bdf(given) == expected


@pytest.mark.parametrize("bad", ["", "00:04", "00:04.8", "00:20.0", "xx:04.0", "0000:00:04.0.1"])
def test_normalize_bdf_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        sysfs.normalize_bdf(bad)


def test_iommu_group(root: Path) -> None:
    assert sysfs.iommu_group("00:04.0", str(root)) == 3
    assert sysfs.iommu_group("0000:00:1f.3", str(root)) == 8


def test_iommu_group_of_missing_device(root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sysfs.iommu_group("00:09.0", str(root))


def test_group_devices_sorted(root: Path) -> None:
    assert sysfs.group_devices(8, str(root)) == ["0000:00:1f.0", "0000:00:1f.3"]
    assert sysfs.group_devices(3, str(root)) == ["0000:00:04.0"]


def test_driver(root: Path) -> None:
    assert sysfs.driver("00:04.0", str(root)) == "vfio-pci"
    assert sysfs.driver("00:1f.0", str(root)) == "lpc_ich"
    assert sysfs.driver("00:1f.3", str(root)) is None


def test_pci_ids(root: Path) -> None:
    ids = sysfs.pci_ids("00:04.0", str(root))
    assert ids == sysfs.PciIds(0x1234, 0x11E8, 0x00FF00, 0x1AF4, 0x1100)
    assert sysfs.pci_ids("00:1f.3", str(root)).vendor == 0x8086


def test_group_members_use_sysfs_root(root: Path, tmp_path: Path) -> None:
    from vfio_hil.core import Group

    dev_dir = tmp_path / "dev-vfio"
    dev_dir.mkdir()
    (dev_dir / "8").write_bytes(b"")
    with Group.of_device("00:1f.3", dev_dir=str(dev_dir), sysfs_root=str(root)) as group:
        assert group.number == 8
        assert group.members() == ["0000:00:1f.0", "0000:00:1f.3"]
