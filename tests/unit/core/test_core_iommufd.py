"""The iommufd backend without a kernel that has iommufd: a recording ioctl function stands in
for the kernel, and the tests assert the call sequence and every structure's bytes, packed
independently of the cffi declarations from the upstream uapi layouts."""

from __future__ import annotations

import errno
import struct
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest
from core_fakes import FakeKernel, fake_pci_device

from vfio_hil.core import (
    BackendUnavailableError,
    Device,
    DmaBuffer,
    Iommufd,
    IommufdBackend,
    IovaRange,
    UnsafeModeError,
    VfioError,
    uapi,
)

BDF = "0000:00:04.0"
IOAS_ID = 7
DEVID = 3
HWPT_ID = 11
U64_MAX = (1 << 64) - 1
MAP_RW_FIXED = (
    uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE
)
#: Allowed ranges the fake kernel reports: more than the first query has room for.
RANGES = [IovaRange(i << 32, (i << 32) + 0xFFFF_FFFF) for i in range(9)]


def _answer_ioas_alloc(arg: Any) -> int:
    arg.out_ioas_id = IOAS_ID
    return 0


def _answer_bind(arg: Any) -> int:
    arg.out_devid = DEVID
    return 0


def _answer_attach(arg: Any) -> int:
    arg.pt_id = HWPT_ID
    return 0


def _answer_iova_ranges(arg: Any) -> int:
    if arg.num_iovas < len(RANGES):
        arg.num_iovas = len(RANGES)
        return -errno.EMSGSIZE
    out = uapi.ffi.cast("struct iommu_iova_range *", arg.allowed_iovas)
    for i, r in enumerate(RANGES):
        out[i].start, out[i].last = r
    arg.num_iovas = len(RANGES)
    arg.out_iova_alignment = 4096
    return 0


def _answer_map(arg: Any) -> int:
    if not arg.flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA:
        arg.iova = 0x4000_0000  # the kernel picks
    return 0


@pytest.fixture
def kernel() -> FakeKernel:
    fake = FakeKernel()
    fake.handlers.update(
        IOMMU_IOAS_ALLOC=_answer_ioas_alloc,
        VFIO_DEVICE_BIND_IOMMUFD=_answer_bind,
        VFIO_DEVICE_ATTACH_IOMMUFD_PT=_answer_attach,
        IOMMU_IOAS_IOVA_RANGES=_answer_iova_ranges,
        IOMMU_IOAS_MAP=_answer_map,
    )
    return fake


@pytest.fixture
def backend(tmp_path: Path, kernel: FakeKernel) -> Iterator[IommufdBackend]:
    fake_pci_device(tmp_path, BDF, group=3, cdev="vfio0")
    with IommufdBackend(
        str(tmp_path / "dev/iommu"),
        cdev_dir=str(tmp_path / "dev/vfio/devices"),
        sysfs_root=str(tmp_path),
        ioctl_fn=kernel,
    ) as backend:
        yield backend


def _calls(kernel: FakeKernel) -> List[Tuple[str, str]]:
    return [(c.node, c.name) for c in kernel.calls]


def test_open_device_binds_and_attaches(backend: IommufdBackend, kernel: FakeKernel) -> None:
    device = backend.open_device("00:04.0")
    assert _calls(kernel) == [
        ("iommu", "IOMMU_IOAS_ALLOC"),
        ("vfio0", "VFIO_DEVICE_BIND_IOMMUFD"),
        ("vfio0", "VFIO_DEVICE_ATTACH_IOMMUFD_PT"),
    ]
    alloc, bind, attach = (c.arg for c in kernel.calls)
    assert alloc == struct.pack("=III", 12, 0, 0)
    assert bind == struct.pack("=IIiI", 16, 0, backend.iommufd.fd, 0)
    assert attach == struct.pack("=III", 12, 0, IOAS_ID)
    assert (device.bdf, device.devid, backend.ioas.id) == (BDF, DEVID, IOAS_ID)


def test_map_unmap_and_ranges(backend: IommufdBackend, kernel: FakeKernel) -> None:
    backend.open_device(BDF)
    del kernel.calls[:]
    with DmaBuffer(8192) as buf:
        backend.map_dma(buf.vaddr, 0x10000, 8192, writable=False)
        assert kernel.last("IOMMU_IOAS_MAP").arg == struct.pack(
            "=IIIIQQQ",
            40,
            uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE,
            IOAS_ID,
            0,
            buf.vaddr,
            8192,
            0x10000,
        )
        assert backend.unmap_dma(0x10000, 8192) == 8192
        assert kernel.last("IOMMU_IOAS_UNMAP").arg == struct.pack(
            "=IIQQ", 24, IOAS_ID, 0x10000, 8192
        )
        assert backend.iova_ranges() == RANGES
        first, second = [c.arg for c in kernel.calls if c.name == "IOMMU_IOAS_IOVA_RANGES"]
        assert isinstance(first, bytes) and isinstance(second, bytes)
        # size, ioas_id, num_iovas, reserved (the array pointer differs per call)
        assert struct.unpack_from("=IIII", first) == (32, IOAS_ID, 8, 0)
        assert struct.unpack_from("=IIII", second) == (32, IOAS_ID, len(RANGES), 0)
        with backend.map_buffer(buf) as mapping:
            assert mapping.iova == RANGES[0].start
            assert kernel.last("IOMMU_IOAS_MAP").arg == struct.pack(
                "=IIIIQQQ", 40, MAP_RW_FIXED, IOAS_ID, 0, buf.vaddr, 8192, RANGES[0].start
            )
        assert kernel.last("IOMMU_IOAS_UNMAP").arg == struct.pack(
            "=IIQQ", 24, IOAS_ID, RANGES[0].start, 8192
        )
        backend.map_buffer(buf)
        backend.unmap_all()
        assert kernel.last("IOMMU_IOAS_UNMAP").arg == struct.pack("=IIQQ", 24, IOAS_ID, 0, U64_MAX)
        assert len(backend._mappings) == 0


def _hot_reset_info(devid: int, flags: int) -> Any:
    """A GET_PCI_HOT_RESET_INFO answer for a cdev device: one affected device, 0000:01:00.0,
    reported by iommufd device id with ``flags``."""

    def answer(arg: Any) -> int:
        if arg.argsz < 12 + 8:
            arg.count = 1
            return -errno.ENOSPC
        arg.flags = flags
        arg.count = 1
        arg.devices[0].group_id = devid  # the union with devid (uapi: __u32 either way)
        arg.devices[0].bus = 1
        return 0

    return answer


OWNED = uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED


def test_hot_reset_passes_no_group_fds(backend: IommufdBackend, kernel: FakeKernel) -> None:
    kernel.handlers["VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"] = _hot_reset_info(DEVID, OWNED)
    device = backend.open_device(BDF)
    backend.hot_reset(device)
    assert kernel.last("VFIO_DEVICE_PCI_HOT_RESET") == (
        "vfio0",
        "VFIO_DEVICE_PCI_HOT_RESET",
        struct.pack("=III", 12, 0, 0),
    )


def test_hot_reset_of_a_device_without_one_names_the_info_ioctl(
    backend: IommufdBackend, kernel: FakeKernel
) -> None:
    """As under the container: a device with no bus or slot reset (on a root bus) is reported
    by VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, and no reset is tried (tests/dut met it)."""
    kernel.handlers["VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"] = lambda _arg: -errno.ENODEV
    device = backend.open_device(BDF)
    with pytest.raises(VfioError) as info:
        backend.hot_reset(device)
    assert (info.value.errno, info.value.ioctl) == (
        errno.ENODEV,
        "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
    )
    assert "VFIO_DEVICE_PCI_HOT_RESET" not in kernel.names()


def test_hot_reset_refuses_devices_the_iommufd_does_not_own(
    backend: IommufdBackend, kernel: FakeKernel
) -> None:
    kernel.handlers["VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"] = _hot_reset_info(
        0xFFFF_FFFF, uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID
    )
    device = backend.open_device(BDF)
    with pytest.raises(ValueError, match=r"affects \['0000:01:00.0'\] not bound to this iommufd"):
        backend.hot_reset(device)
    assert "VFIO_DEVICE_PCI_HOT_RESET" not in kernel.names()


def test_close_destroys_the_ioas_and_closes_fds(
    tmp_path: Path, backend: IommufdBackend, kernel: FakeKernel
) -> None:
    device = backend.open_device(BDF)
    backend.close()
    assert kernel.calls[-1] == ("iommu", "IOMMU_DESTROY", struct.pack("=II", 8, IOAS_ID))
    assert device.closed and backend.iommufd.closed and backend.ioas.closed
    backend.close()
    assert kernel.names().count("IOMMU_DESTROY") == 1


def test_ioas_kernel_chosen_iova_copy_and_allow(
    backend: IommufdBackend, kernel: FakeKernel
) -> None:
    ioas = backend.ioas
    assert ioas.map(0x7000_0000, 4096) == 0x4000_0000
    assert kernel.last("IOMMU_IOAS_MAP").arg == struct.pack(
        "=IIIIQQQ",
        40,
        uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE,
        IOAS_ID,
        0,
        0x7000_0000,
        4096,
        0,
    )
    with backend.iommufd.alloc_ioas() as other:
        assert other.copy_from(ioas, 0x4000_0000, 4096, iova=0x9000) == 0x9000
        assert kernel.last("IOMMU_IOAS_COPY").arg == struct.pack(
            "=IIIIQQQ", 40, MAP_RW_FIXED, IOAS_ID, IOAS_ID, 4096, 0x9000, 0x4000_0000
        )
    seen: List[Tuple[int, int]] = []

    def answer_allow(arg: Any) -> int:
        out = uapi.ffi.cast("struct iommu_iova_range *", arg.allowed_iovas)
        seen.extend((int(out[i].start), int(out[i].last)) for i in range(arg.num_iovas))
        return 0

    kernel.handlers["IOMMU_IOAS_ALLOW_IOVAS"] = answer_allow
    ioas.allow_iovas([IovaRange(0x1000, 0x1FFF), IovaRange(0x8000, 0xFFFF)])
    assert struct.unpack_from("=IIII", kernel.last("IOMMU_IOAS_ALLOW_IOVAS").arg) == (
        24,
        IOAS_ID,
        2,
        0,
    )
    assert seen == [(0x1000, 0x1FFF), (0x8000, 0xFFFF)]


def test_raw_tier_returns_errno_and_strict_tier_names_the_ioas(
    backend: IommufdBackend, kernel: FakeKernel
) -> None:
    ioas = backend.ioas
    for name in ("IOMMU_IOAS_MAP", "IOMMU_IOAS_UNMAP", "IOMMU_IOAS_ALLOW_IOVAS", "IOMMU_DESTROY"):
        kernel.handlers[name] = lambda _arg: -errno.ENOENT
    assert ioas.raw_map(0x7000_0000, 4096, 0x1000, MAP_RW_FIXED) == -errno.ENOENT
    assert ioas.raw_unmap(0x1000, 4096) == -errno.ENOENT
    assert ioas.raw_allow_iovas([]) == -errno.ENOENT
    assert backend.iommufd.raw_destroy(99) == -errno.ENOENT
    kernel.handlers["IOMMU_IOAS_COPY"] = lambda _arg: -errno.EINVAL
    assert ioas.raw_copy_from(ioas, 0x1000, 4096, None, MAP_RW_FIXED) == -errno.EINVAL
    assert kernel.last("IOMMU_IOAS_COPY").arg == struct.pack(
        "=IIIIQQQ", 40, MAP_RW_FIXED, IOAS_ID, IOAS_ID, 4096, 0, 0x1000
    )
    del kernel.handlers["IOMMU_DESTROY"]
    with pytest.raises(VfioError) as info:
        ioas.unmap(0x1000, 4096)
    assert (
        str(info.value) == "IOMMU_IOAS_UNMAP on iommufd IOAS 7: [Errno 2] No such file or directory"
    )
    assert info.value.arguments == {"iova": 0x1000, "size": 4096}
    kernel.handlers["IOMMU_IOAS_IOVA_RANGES"] = lambda _arg: -errno.EMSGSIZE
    assert ioas.raw_iova_ranges(1) == -errno.EMSGSIZE
    assert backend.iommufd.raw_alloc_ioas() == IOAS_ID
    kernel.handlers["IOMMU_IOAS_ALLOC"] = lambda _arg: -errno.EOPNOTSUPP
    assert backend.iommufd.raw_alloc_ioas(flags=1) == -errno.EOPNOTSUPP


def test_device_cdev_raw_tier(backend: IommufdBackend, kernel: FakeKernel) -> None:
    device = backend.open_device(BDF)
    kernel.handlers["VFIO_DEVICE_DETACH_IOMMUFD_PT"] = lambda _arg: -errno.EINVAL
    assert device.raw_detach_ioas(flags=1) == -errno.EINVAL
    assert kernel.last("VFIO_DEVICE_DETACH_IOMMUFD_PT").arg == struct.pack("=II", 8, 1)
    assert device.raw_attach_ioas(IOAS_ID) == HWPT_ID
    assert device.raw_bind_iommufd(-1) == DEVID
    assert kernel.last("VFIO_DEVICE_BIND_IOMMUFD").arg == struct.pack("=IIiI", 16, 0, -1, 0)
    kernel.handlers["VFIO_DEVICE_DETACH_IOMMUFD_PT"] = lambda _arg: 0
    device.detach_ioas()


def test_a_failed_attach_closes_the_device(
    tmp_path: Path, backend: IommufdBackend, kernel: FakeKernel
) -> None:
    kernel.handlers["VFIO_DEVICE_ATTACH_IOMMUFD_PT"] = lambda _arg: -errno.EBUSY
    with pytest.raises(VfioError, match="VFIO_DEVICE_ATTACH_IOMMUFD_PT"):
        backend.open_device(BDF)
    assert backend._devices == []


def test_a_no_iommu_device_is_refused_before_its_cdev(tmp_path: Path, kernel: FakeKernel) -> None:
    # The kernel lists a no-IOMMU device's vfio-dev entry but gives it no cdev node.
    fake_pci_device(tmp_path, BDF, group=3, noiommu=True)
    (tmp_path / "sys/devices/pci0000:00" / BDF / "vfio-dev/vfio0").mkdir(parents=True)
    with IommufdBackend(
        str(tmp_path / "dev/iommu"),
        cdev_dir=str(tmp_path / "dev/vfio/devices"),
        dev_dir=str(tmp_path / "dev/vfio"),
        sysfs_root=str(tmp_path),
        ioctl_fn=kernel,
    ) as backend:
        with pytest.raises(UnsafeModeError, match=r"no VFIO device cdev.*open_iommu\('noiommu'\)"):
            backend.open_device(BDF)
        assert backend._devices == []
    assert "VFIO_DEVICE_BIND_IOMMUFD" not in kernel.names()


def test_device_without_cdev_is_reported(tmp_path: Path) -> None:
    fake_pci_device(tmp_path, BDF, group=3)
    with pytest.raises(BackendUnavailableError, match="vfio-dev"):
        Device.open_cdev(BDF, dev_dir=str(tmp_path / "dev/vfio/devices"), sysfs_root=str(tmp_path))


def test_closed_ioas_refuses_calls(tmp_path: Path, kernel: FakeKernel) -> None:
    (tmp_path / "iommu").touch()
    with Iommufd(str(tmp_path / "iommu"), ioctl_fn=kernel) as iommufd:
        ioas = iommufd.alloc_ioas()
    assert ioas.closed
    with pytest.raises(ValueError, match="closed"):
        ioas.map(0, 4096)
    ioas.close()
    assert "IOMMU_DESTROY" not in kernel.names()  # the kernel frees it with the fd


def test_backend_raw_tier_takes_vfio_flags(backend: IommufdBackend, kernel: FakeKernel) -> None:
    """The backend-neutral raw tier speaks VFIO's READ/WRITE flags and returns 0 or -errno,
    as the container's does, so one transcript serves every backend."""
    backend.open_device(BDF)
    assert backend.raw_map_dma(0x7000_0000, 0x20000, 4096, uapi.VFIO_DMA_MAP_FLAG_READ) == 0
    assert kernel.last("IOMMU_IOAS_MAP").arg == struct.pack(
        "=IIIIQQQ",
        40,
        uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE,
        IOAS_ID,
        0,
        0x7000_0000,
        4096,
        0x20000,
    )
    assert backend.raw_unmap_dma(0x20000, 4096, uapi.VFIO_DMA_UNMAP_FLAG_ALL) == -errno.EINVAL
    kernel.handlers["IOMMU_IOAS_MAP"] = lambda _arg: -errno.EEXIST
    assert backend.raw_map_dma(0x7000_0000, 0x20000, 4096) == -errno.EEXIST


def test_backend_raw_map_refuses_vfio_flags_iommufd_lacks(
    backend: IommufdBackend, kernel: FakeKernel
) -> None:
    """A VFIO map flag with no IOMMU_IOAS_MAP meaning (VADDR, an unknown bit) is -EINVAL, as
    the container answers it, not dropped: the map would otherwise succeed (DMA-002 under
    iommufd on a real kernel)."""
    backend.open_device(BDF)
    for flag in (uapi.VFIO_DMA_MAP_FLAG_VADDR, 1 << 8):
        flags = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE | flag
        assert backend.raw_map_dma(0x7000_0000, 0x20000, 4096, flags) == -errno.EINVAL
    assert "IOMMU_IOAS_MAP" not in kernel.names()
