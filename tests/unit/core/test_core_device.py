"""Device region access (Bar) exercised on an ordinary file standing in for a device fd,
and the device ioctls' structure bytes against a recording ioctl function.

pread/pwrite and mmap(MAP_SHARED) behave the same on a regular file, which is enough to
check width handling, byte order, bounds, sparse mmap areas and the ownership rules.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest
from core_fakes import FakeKernel

from vfio_hil.core import Bar, Device, EventFd, IrqInfo, RegionInfo, SparseArea, VfioError, uapi

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
    device._bars.add(bar)
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
    assert len(device._bars) == 0


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


def test_sparse_areas_are_the_only_mappings(tmp_path: Path) -> None:
    path = tmp_path / "region"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    areas = (SparseArea(0, 4096), SparseArea(8192, 4096), SparseArea(12288, 0))
    with Device(os.open(path, os.O_RDWR), "0000:00:06.0") as device:
        bar = _region_bar(device, RegionInfo(0, RW | MMAP, 16384, 0, sparse_areas=areas))
        assert bar.mapped_areas == [SparseArea(0, 4096), SparseArea(8192, 4096)]
        with open("/proc/self/maps") as f:
            assert sum(str(path) in line for line in f) == 2
        # Inside an area, in the gap (pread/pwrite) and straddling both: all the same file.
        for offset in (0x10, 0x1010, 0x2FF8):
            assert bar.read32(offset) == int.from_bytes(
                path.read_bytes()[offset : offset + 4], "little"
            )
        bar.write64(0x1008, 0x0102030405060708)
        assert path.read_bytes()[0x1008:0x1010] == bytes(range(8, 0, -1))
    with open("/proc/self/maps") as f:
        assert not any(str(path) in line for line in f)


def _region_bar(device: Device, region: RegionInfo) -> Bar:
    bar = Bar(device, region)
    device._bars.add(bar)
    return bar


def test_block_access_and_bounds(device: Device) -> None:
    bar = _bar(device, RW)
    assert bar.read_block(4, 4) == bytes([4, 5, 6, 7])
    bar.write_block(8, b"\xaa\xbb")
    assert bar.read16(8) == 0xBBAA
    with pytest.raises(ValueError, match="outside"):
        bar.read_block(SIZE - 2, 4)


@pytest.fixture
def fake_device(tmp_path: Path) -> Iterator[Tuple[Device, FakeKernel]]:
    path = tmp_path / "device"
    path.write_bytes(bytes(4096))
    kernel = FakeKernel()

    def region_info(arg: Any) -> int:
        arg.size, arg.offset = 0x1000, arg.index << 40
        return 0

    kernel.handlers["VFIO_DEVICE_GET_REGION_INFO"] = region_info
    dev = Device(os.open(path, os.O_RDWR), "0000:00:04.0", ioctl_fn=kernel)
    yield dev, kernel
    dev.close()


def _irq_set(flags: int, index: int, start: int, count: int, data: bytes = b"") -> bytes:
    return struct.pack("=IIIII", 20 + len(data), flags, index, start, count) + data


NONE, BOOL, EVENTFD = (
    uapi.VFIO_IRQ_SET_DATA_NONE,
    uapi.VFIO_IRQ_SET_DATA_BOOL,
    uapi.VFIO_IRQ_SET_DATA_EVENTFD,
)
MASK, UNMASK, TRIGGER = (
    uapi.VFIO_IRQ_SET_ACTION_MASK,
    uapi.VFIO_IRQ_SET_ACTION_UNMASK,
    uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
)


def test_irq_actions_bytes(fake_device: Tuple[Device, FakeKernel]) -> None:
    device, kernel = fake_device
    device.trigger_irqs(2, start=3, count=2)
    device.trigger_irqs(2, values=[True, False, True])
    device.mask_irqs(0)
    device.mask_irqs(0, values=[True])
    device.unmask_irqs(0)
    device.unmask_irqs(0, start=0, values=[False])
    device.unmask_irqs_eventfd(0, 9)
    device.set_irqs_eventfd(1, [5, -1], start=1)
    device.disable_irqs(1)
    assert [c.arg for c in kernel.calls] == [
        _irq_set(NONE | TRIGGER, 2, 3, 2),
        _irq_set(BOOL | TRIGGER, 2, 0, 3, b"\x01\x00\x01"),
        _irq_set(NONE | MASK, 0, 0, 1),
        _irq_set(BOOL | MASK, 0, 0, 1, b"\x01"),
        _irq_set(NONE | UNMASK, 0, 0, 1),
        _irq_set(BOOL | UNMASK, 0, 0, 1, b"\x00"),
        _irq_set(EVENTFD | UNMASK, 0, 0, 1, struct.pack("=i", 9)),
        _irq_set(EVENTFD | TRIGGER, 1, 1, 2, struct.pack("=ii", 5, -1)),
        _irq_set(NONE | TRIGGER, 1, 0, 0),
    ]


@pytest.mark.parametrize(
    ("index", "teardown"),
    [
        (uapi.VFIO_PCI_MSIX_IRQ_INDEX, lambda fds: _irq_set(NONE | TRIGGER, 2, 0, 0)),
        # ERR/REQ refuse a DATA_NONE teardown once the eventfd is gone: de-assign instead.
        (
            uapi.VFIO_PCI_REQ_IRQ_INDEX,
            lambda fds: _irq_set(EVENTFD | TRIGGER, 4, 0, 1, struct.pack("=i", -1)),
        ),
    ],
)
def test_irq_eventfds_set_up_and_tear_down(
    fake_device: Tuple[Device, FakeKernel], index: int, teardown: Any
) -> None:
    device, kernel = fake_device
    count = 2 if index == uapi.VFIO_PCI_MSIX_IRQ_INDEX else 1
    with device.irq_eventfds(index, count=count) as irqs:
        fds = [e.fd for e in irqs.eventfds]
        assert kernel.calls[-1].arg == _irq_set(
            EVENTFD | TRIGGER, index, 0, count, struct.pack(f"={count}i", *fds)
        )
        irqs[0].signal()
        assert irqs.wait(0, 1.0) == 1
    assert kernel.calls[-1].arg == teardown(fds)
    assert all(e.closed for e in irqs.eventfds)


def test_irq_eventfds_failure_closes_the_eventfds(fake_device: Tuple[Device, FakeKernel]) -> None:
    device, kernel = fake_device
    kernel.handlers["VFIO_DEVICE_SET_IRQS"] = lambda _arg: -errno.EINVAL
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(VfioError) as info:
        device.irq_eventfds(1, count=3)
    assert info.value.arguments["count"] == 3
    assert len(os.listdir("/proc/self/fd")) == before
    assert len(device._irqs) == 0


def test_hot_reset_info_grows_its_buffer(fake_device: Tuple[Device, FakeKernel]) -> None:
    device, kernel = fake_device

    def answer(arg: Any) -> int:
        if arg.argsz < 12 + 2 * 8:
            arg.count = 2
            return -errno.ENOSPC
        arg.count = 2
        for i, (group, bus, devfn) in enumerate([(9, 1, 0), (10, 1, 0x9)]):
            arg.devices[i].group_id, arg.devices[i].bus, arg.devices[i].devfn = group, bus, devfn
        return 0

    kernel.handlers["VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"] = answer
    info = device.hot_reset_info()
    assert [d.bdf for d in info.devices] == ["0000:01:00.0", "0000:01:01.1"]
    assert [d.group_id for d in info.devices] == [9, 10]
    assert [c.arg for c in kernel.calls] == [
        struct.pack("=III", 12, 0, 0),
        struct.pack("=III16x", 28, 0, 0),
    ]
    assert device.raw_hot_reset([7, 8]) == 0
    assert kernel.calls[-1].arg == struct.pack("=IIIii", 20, 0, 2, 7, 8)


def test_ioeventfd_request_and_removal(fake_device: Tuple[Device, FakeKernel]) -> None:
    device, kernel = fake_device
    with device.ioeventfd(1, 0x83, 1, 0xFA) as ioeventfd:
        efd = ioeventfd.eventfd.fd
        assert kernel.calls[-1].arg == struct.pack(
            "=IIQQi4x", 32, uapi.VFIO_DEVICE_IOEVENTFD_8, (1 << 40) + 0x83, 0xFA, efd
        )
    assert kernel.calls[-1].arg == struct.pack(
        "=IIQQi4x", 32, uapi.VFIO_DEVICE_IOEVENTFD_8, (1 << 40) + 0x83, 0xFA, -1
    )
    assert ioeventfd.eventfd.closed
    with pytest.raises(ValueError, match="width"):
        device.set_ioeventfd(0, 0, 3, 0, -1)
    with pytest.raises(ValueError, match="fit"):
        device.set_ioeventfd(0, 0, 1, 0x100, -1)


def test_features(fake_device: Tuple[Device, FakeKernel]) -> None:
    device, kernel = fake_device
    probe, get, set_ = (
        uapi.VFIO_DEVICE_FEATURE_PROBE,
        uapi.VFIO_DEVICE_FEATURE_GET,
        uapi.VFIO_DEVICE_FEATURE_SET,
    )
    kernel.handlers["VFIO_DEVICE_FEATURE"] = lambda arg: (
        0
        if arg.flags & 0xFFFF == uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY and not arg.flags & get
        else -errno.ENOTTY
        if arg.flags & 0xFFFF != uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
        else -errno.EINVAL
    )
    assert device.probe_feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, set=True)
    assert kernel.calls[-1].arg == struct.pack(
        "=II", 8, uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY | probe | set_
    )
    assert not device.probe_feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, get=True)
    assert device.migration_flags() is None
    with EventFd() as wakeup:
        kernel.handlers["VFIO_DEVICE_FEATURE"] = lambda _arg: 0
        device.low_power_entry(wakeup)
        assert kernel.calls[-1].arg == struct.pack(
            "=IIiI", 16, uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP | set_, wakeup.fd, 0
        )

    def migration(arg: Any) -> int:
        if not arg.flags & probe:
            uapi.ffi.cast("uint64_t *", arg.data)[0] = uapi.VFIO_MIGRATION_STOP_COPY
        return 0

    kernel.handlers["VFIO_DEVICE_FEATURE"] = migration
    assert device.migration_flags() == uapi.VFIO_MIGRATION_STOP_COPY
    kernel.handlers["VFIO_DEVICE_FEATURE"] = lambda _arg: -errno.EIO
    with pytest.raises(VfioError) as info:
        device.probe_feature(uapi.VFIO_DEVICE_FEATURE_MIGRATION)
    assert info.value.errno == errno.EIO


def test_device_info_capabilities_and_properties(fake_device: Tuple[Device, FakeKernel]) -> None:
    device, kernel = fake_device

    def answer(arg: Any) -> int:
        if arg.argsz < 32:
            arg.argsz = 32
            return 0
        arg.flags = (
            uapi.VFIO_DEVICE_FLAGS_PCI | uapi.VFIO_DEVICE_FLAGS_RESET | uapi.VFIO_DEVICE_FLAGS_CAPS
        )
        arg.num_regions, arg.num_irqs, arg.cap_offset = 9, 5, 24
        uapi.ffi.memmove(uapi.ffi.cast("uint8_t *", arg) + 24, struct.pack("=HHI", 5, 1, 0), 8)
        return 0

    kernel.handlers["VFIO_DEVICE_GET_INFO"] = answer
    info = device.info()
    assert (info.num_regions, info.num_irqs, info.is_pci, info.resettable) == (9, 5, True, True)
    assert [(c.id, c.offset) for c in info.caps] == [(5, 24)]
    irq = IrqInfo(0, uapi.VFIO_IRQ_INFO_EVENTFD | uapi.VFIO_IRQ_INFO_AUTOMASKED, 1)
    assert (irq.eventfd, irq.maskable, irq.automasked, irq.noresize) == (True, False, True, False)
