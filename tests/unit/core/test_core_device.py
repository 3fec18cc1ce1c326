"""Device region access (Bar) exercised on an ordinary file standing in for a device fd.

pread/pwrite and mmap(MAP_SHARED) behave the same on a regular file, which is enough to
check width handling, byte order, bounds and the ownership rules.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Iterator

import pytest
from vfio_hil.core import Bar, Device, RegionInfo, VfioError, uapi

RW = uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_WRITE
MMAP = uapi.VFIO_REGION_INFO_FLAG_MMAP
SIZE = 4096


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    path = tmp_path / "region"
    path.write_bytes(bytes(range(256)) * (SIZE // 256))
    dev = Device(os.open(path, os.O_RDWR), "0000:00:04.0")
    yield dev
    dev.close()


def _bar(device: Device, flags: int) -> Bar:
    bar = Bar(device, RegionInfo(0, flags, SIZE, 0))
    device._bars.append(bar)
    return bar


@pytest.mark.parametrize("flags", [RW, RW | MMAP], ids=["pread", "mmap"])
def test_accessors(device: Device, flags: int) -> None:
    bar = _bar(device, flags)
    assert bar.mmapped == bool(flags & MMAP)
    assert bar.read8(3) == 3
    assert bar.read16(2) == 0x0302
    assert bar.read32(4) == 0x07060504
    assert bar.read64(8) == 0x0F0E0D0C0B0A0908
    bar.write32(0x10, 0xDEADBEEF)
    bar.write64(0x18, 0x1122334455667788)
    bar.write16(0x20, 0xCAFE)
    bar.write8(0x22, 0x5A)
    assert os.pread(device.fd, 0x13, 0x10) == (
        struct.pack("<IIQ", 0xDEADBEEF, 0x17161514, 0x1122334455667788)
        + struct.pack("<HB", 0xCAFE, 0x5A)
    )
    assert bar.read32(0x10) == 0xDEADBEEF


@pytest.mark.parametrize("flags", [RW, RW | MMAP], ids=["pread", "mmap"])
def test_access_checks(device: Device, flags: int) -> None:
    bar = _bar(device, flags)
    with pytest.raises(ValueError, match="aligned"):
        bar.read32(2)
    with pytest.raises(ValueError, match="outside"):
        bar.read64(SIZE)
    with pytest.raises(ValueError, match="outside"):
        bar.write8(-1, 0)
    with pytest.raises(ValueError, match="fit"):
        bar.write16(0, 0x10000)
    with pytest.raises(ValueError, match="width"):
        bar.read(0, 3)


def test_device_close_unmaps_bars(device: Device) -> None:
    mapped = _bar(device, RW | MMAP)
    plain = _bar(device, RW)
    device.close()
    assert mapped.closed and plain.closed
    assert not mapped.mmapped
    with pytest.raises(ValueError, match="closed"):
        mapped.read32(0)
    mapped.close()


def test_bar_close_leaves_device_open(device: Device) -> None:
    with _bar(device, RW | MMAP) as bar:
        bar.read32(0)
    assert bar.closed and not device.closed
    assert device._bars == []


def test_ioctls_on_a_non_vfio_fd_raise(device: Device) -> None:
    with pytest.raises(VfioError) as info:
        device.region_info(uapi.VFIO_PCI_CONFIG_REGION_INDEX)
    assert str(info.value).startswith(
        "VFIO_DEVICE_GET_REGION_INFO on device 0000:00:04.0: [Errno 25]"
    )
    assert info.value.arguments == {"index": uapi.VFIO_PCI_CONFIG_REGION_INDEX}
    assert device.raw_reset() == -errno.ENOTTY
    flags = uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
    assert device.raw_set_irqs(uapi.VFIO_PCI_MSI_IRQ_INDEX, flags) == -errno.ENOTTY
    with pytest.raises(VfioError):
        device.set_irqs_eventfd(uapi.VFIO_PCI_MSI_IRQ_INDEX, [5, -1])


def test_irq_set_payload() -> None:
    irq_set = Device._irq_set(1, uapi.VFIO_IRQ_SET_DATA_EVENTFD, 2, 2, struct.pack("=2i", 7, -1))
    assert irq_set.argsz == 20 + 8
    assert (irq_set.index, irq_set.start, irq_set.count) == (1, 2, 2)
    assert bytes(uapi.ffi.buffer(irq_set.data, 8)) == struct.pack("=2i", 7, -1)


def test_config_access_checks(device: Device) -> None:
    with pytest.raises(ValueError, match="width"):
        device.config_read(0, 8)
    with pytest.raises(ValueError, match="aligned"):
        device.config_read(2, 4)
    with pytest.raises(ValueError, match="fit"):
        device.config_write(4, 0x10000, 2)
