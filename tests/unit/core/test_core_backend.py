"""Backend choice, and the legacy container backend's call sequence and structure bytes
against a recording ioctl function."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from core_fakes import FakeKernel, fake_pci_device

from vfio_hil.core import (
    BackendUnavailableError,
    Container,
    ContainerBackend,
    DmaBuffer,
    IovaRange,
    UnsafeModeError,
    VfioError,
    available_backends,
    choose_backend,
    open_iommu,
    uapi,
)

V2 = {"VFIO_TYPE1v2_IOMMU": True, "VFIO_TYPE1_IOMMU": True}
V1 = {"VFIO_TYPE1v2_IOMMU": False, "VFIO_TYPE1_IOMMU": True}
NOIOMMU = {"VFIO_NOIOMMU_IOMMU": True}


@pytest.mark.parametrize(
    ("requested", "iommufd", "cdev", "extensions", "allow", "expected"),
    [
        ("auto", True, True, V2, False, "iommufd"),
        ("auto", True, False, V2, False, "type1v2"),  # /dev/iommu but no device cdevs
        ("auto", False, False, V2, False, "type1v2"),
        ("auto", False, False, V1, False, "type1"),
        ("auto", False, False, {**V2, **NOIOMMU}, False, "type1v2"),
        ("auto", False, False, NOIOMMU, True, "noiommu"),
        ("type1", True, True, V2, False, "type1"),
        ("noiommu", False, False, NOIOMMU, False, "noiommu"),
        ("iommufd", True, True, {}, False, "iommufd"),
    ],
)
def test_choose_backend(
    requested: str,
    iommufd: bool,
    cdev: bool,
    extensions: Dict[str, bool],
    allow: bool,
    expected: str,
) -> None:
    chosen = choose_backend(
        requested, iommufd=iommufd, cdev=cdev, extensions=extensions, allow_noiommu=allow
    )
    assert chosen == expected


def test_noiommu_is_never_chosen_silently() -> None:
    with pytest.raises(UnsafeModeError, match="no-IOMMU"):
        choose_backend("auto", iommufd=False, cdev=False, extensions=NOIOMMU)


@pytest.mark.parametrize(
    ("requested", "iommufd", "cdev", "extensions", "message"),
    [
        ("iommufd", False, False, V2, "both are missing"),
        ("iommufd", True, False, V2, "/dev/vfio/devices is missing; the device cdevs appear "),
        ("iommufd", False, True, V2, "/dev/iommu is missing; /dev/iommu appears once the"),
        ("type1v2", False, False, V1, "does not offer VFIO_TYPE1v2_IOMMU"),
        ("noiommu", False, False, V2, "does not offer VFIO_NOIOMMU_IOMMU"),
        ("auto", False, False, {}, "no /dev/vfio/vfio"),
        ("type1", False, False, {}, "no /dev/vfio/vfio"),
    ],
)
def test_unavailable_backends(
    requested: str, iommufd: bool, cdev: bool, extensions: Dict[str, bool], message: str
) -> None:
    with pytest.raises(BackendUnavailableError, match=message):
        choose_backend(requested, iommufd=iommufd, cdev=cdev, extensions=extensions)


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match="'auto' or one of"):
        choose_backend("vfio", iommufd=True, cdev=True, extensions=V2)


def test_open_iommu_without_any_vfio_node(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="no /dev/vfio/vfio"):
        open_iommu(
            container_path=str(tmp_path / "vfio"),
            iommufd_path=str(tmp_path / "iommu"),
            cdev_dir=str(tmp_path / "devices"),
        )


def test_available_backends_says_which_iommufd_node_is_missing_and_when_it_appears(
    tmp_path: Path,
) -> None:
    # /dev/iommu comes with the iommufd module; the device cdevs only once vfio-pci binds one.
    (tmp_path / "iommu").touch()
    reasons = available_backends(
        container_path=str(tmp_path / "vfio"),
        iommufd_path=str(tmp_path / "iommu"),
        cdev_dir=str(tmp_path / "devices"),
    )
    assert reasons["iommufd"].endswith(
        "/dev/vfio/devices is missing; the device cdevs appear once vfio-pci binds a device (on "
        "a kernel with CONFIG_VFIO_DEVICE_CDEV, and never for a no-IOMMU device)"
    )
    assert "only one of them" not in reasons["iommufd"]
    assert all("no /dev/vfio/vfio" in reasons[n] for n in ("type1v2", "type1", "noiommu"))


BDF = "0000:00:04.0"


class LegacyKernel(FakeKernel):
    """A fake type1 kernel: device fds are /dev/null, the IOMMU info has a range chain."""

    def __init__(self) -> None:
        super().__init__()
        self.device_fds: List[int] = []
        self.handlers.update(
            VFIO_GROUP_GET_DEVICE_FD=self._device_fd,
            VFIO_IOMMU_GET_INFO=self._iommu_info,
            VFIO_DEVICE_GET_PCI_HOT_RESET_INFO=self._hot_reset_info,
        )

    def _device_fd(self, _arg: Any) -> int:
        fd = os.open("/dev/null", os.O_RDWR)
        self.device_fds.append(fd)
        return fd

    @staticmethod
    def _iommu_info(arg: Any) -> int:
        # Fixed part (24 bytes with padding), then one IOVA range capability.
        chain = struct.pack("=HHIII", uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 0, 1, 0)
        chain += struct.pack("=QQ", 0x1000, 0xFEDFFFFF)
        total = 24 + len(chain)
        if arg.argsz < total:
            arg.argsz = total
            arg.flags = uapi.VFIO_IOMMU_INFO_CAPS | uapi.VFIO_IOMMU_INFO_PGSIZES
            return 0
        arg.flags = uapi.VFIO_IOMMU_INFO_CAPS | uapi.VFIO_IOMMU_INFO_PGSIZES
        arg.iova_pgsizes = 0x40201000
        arg.cap_offset = 24
        uapi.ffi.memmove(uapi.ffi.cast("uint8_t *", arg) + 24, chain, len(chain))
        return 0

    @staticmethod
    def _hot_reset_info(arg: Any) -> int:
        if arg.argsz < 12 + 8:
            arg.count = 1
            return -errno.ENOSPC
        arg.count = 1
        arg.devices[0].group_id = 3
        arg.devices[0].bus = 1
        return 0


@pytest.fixture
def kernel() -> LegacyKernel:
    return LegacyKernel()


def container_backend(
    tmp_path: Path, kernel: LegacyKernel, name: str = "type1v2", **options: Any
) -> ContainerBackend:
    """A :class:`ContainerBackend` of ``name`` over the fake kernel and sysfs of ``tmp_path``."""
    container = Container(str(tmp_path / "dev/vfio/vfio"), ioctl_fn=kernel)
    return ContainerBackend(
        container,
        name,
        dev_dir=str(tmp_path / "dev/vfio"),
        sysfs_root=str(tmp_path),
        **options,
    )


@pytest.fixture
def backend(tmp_path: Path, kernel: LegacyKernel) -> Iterator[ContainerBackend]:
    fake_pci_device(tmp_path, BDF, group=3)
    fake_pci_device(tmp_path, "0000:00:04.1", group=3)
    with container_backend(tmp_path, kernel) as backend:
        yield backend


def test_open_device_attaches_the_group_once(
    backend: ContainerBackend, kernel: LegacyKernel
) -> None:
    container_fd = backend.container.fd
    device = backend.open_device(BDF)
    other = backend.open_device("0000:00:04.1")
    assert [(c.node, c.name, c.arg) for c in kernel.calls] == [
        ("vfio", "VFIO_GET_API_VERSION", None),
        ("3", "VFIO_GROUP_SET_CONTAINER", struct.pack("=i", container_fd)),
        ("vfio", "VFIO_SET_IOMMU", uapi.VFIO_TYPE1v2_IOMMU),
        ("3", "VFIO_GROUP_GET_DEVICE_FD", BDF.encode() + b"\0"),
        ("3", "VFIO_GROUP_GET_DEVICE_FD", b"0000:00:04.1\0"),
    ]
    assert device.fd == kernel.device_fds[0] and other.fd == kernel.device_fds[1]
    assert list(backend.groups) == [3]


def test_iova_ranges_need_a_device_then_come_from_the_info_chain(
    backend: ContainerBackend, kernel: LegacyKernel
) -> None:
    with pytest.raises(RuntimeError, match="open one first"):
        backend.iova_ranges()
    backend.open_device(BDF)
    assert backend.iova_ranges() == [IovaRange(0x1000, 0xFEDFFFFF)]
    first, second = [c.arg for c in kernel.calls if c.name == "VFIO_IOMMU_GET_INFO"]
    assert first == struct.pack("=IIQI4x", 24, 0, 0, 0)
    assert isinstance(second, bytes) and len(second) == 24 + 32
    assert struct.unpack_from("=I", second) == (56,)


def test_map_buffer_and_unmap_all_bytes(backend: ContainerBackend, kernel: LegacyKernel) -> None:
    backend.open_device(BDF)
    with DmaBuffer(8192) as buf:
        mapping = backend.map_buffer(buf, readable=True, writable=False)
        assert mapping.iova == 0x1000
        assert kernel.last("VFIO_IOMMU_MAP_DMA").arg == struct.pack(
            "=IIQQQ", 32, uapi.VFIO_DMA_MAP_FLAG_READ, buf.vaddr, 0x1000, 8192
        )
        backend.unmap_all()
        assert kernel.last("VFIO_IOMMU_UNMAP_DMA").arg == struct.pack(
            "=IIQQ", 24, uapi.VFIO_DMA_UNMAP_FLAG_ALL, 0, 0
        )
        assert mapping.closed
        assert backend.iovas.allocated == []


def test_map_on_a_closed_container_says_so(tmp_path: Path, kernel: LegacyKernel) -> None:
    # The hot path skips the fd property's check and leaves it to the error path.
    fake_pci_device(tmp_path, BDF, group=3)
    container = Container(str(tmp_path / "dev/vfio/vfio"), ioctl_fn=kernel)
    container.close()
    for call in (
        lambda: container.map_dma(0x1000, 0x1000, 4096),
        lambda: container.unmap_dma(0x1000, 4096),
    ):
        with pytest.raises(ValueError, match="container is closed"):
            call()


def test_hot_reset_collects_the_group_fds(backend: ContainerBackend, kernel: LegacyKernel) -> None:
    device = backend.open_device(BDF)
    backend.hot_reset(device)
    info_calls = [c.arg for c in kernel.calls if c.name == "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"]
    assert info_calls == [struct.pack("=III", 12, 0, 0), struct.pack("=III8x", 20, 0, 0)]
    assert kernel.last("VFIO_DEVICE_PCI_HOT_RESET").arg == struct.pack(
        "=IIIi", 16, 0, 1, backend.groups[3].fd
    )


def test_hot_reset_refuses_groups_it_does_not_own(
    backend: ContainerBackend, kernel: LegacyKernel
) -> None:
    device = backend.open_device(BDF)

    def other_group(arg: Any) -> int:
        if arg.argsz < 20:
            arg.count = 1
            return -errno.ENOSPC
        arg.count = 1
        arg.devices[0].group_id = 9
        return 0

    kernel.handlers["VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"] = other_group
    with pytest.raises(ValueError, match=r"groups \[9\] are not open"):
        backend.hot_reset(device)
    assert "VFIO_DEVICE_PCI_HOT_RESET" not in kernel.names()


def test_close_order_devices_groups_container(
    backend: ContainerBackend, kernel: LegacyKernel
) -> None:
    device = backend.open_device(BDF)
    group = backend.groups[3]
    backend.close()
    assert device.closed and group.closed and backend.container.closed


@pytest.mark.parametrize(("noiommu", "name"), [(True, "type1v2"), (False, "noiommu")])
def test_group_kind_must_match_the_backend(
    tmp_path: Path, kernel: LegacyKernel, noiommu: bool, name: str
) -> None:
    fake_pci_device(tmp_path, BDF, group=3, noiommu=noiommu)
    before = len(os.listdir("/proc/self/fd"))
    with container_backend(tmp_path, kernel, name) as backend:
        with pytest.raises(UnsafeModeError, match="no-IOMMU group") as info:
            backend.open_device(BDF)
        assert backend.groups == {}
        assert ("open_iommu('noiommu') or open_iommu(allow_noiommu=True)" in str(info.value)) == (
            noiommu
        )
        assert backend.name == name
    assert "VFIO_GROUP_SET_CONTAINER" not in kernel.names()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_no_iommu_group_asked_for_by_name_makes_a_no_iommu_container(
    tmp_path: Path, kernel: LegacyKernel
) -> None:
    fake_pci_device(tmp_path, BDF, group=3, noiommu=True)
    with container_backend(tmp_path, kernel, allow_noiommu=True) as backend:
        backend.open_device(BDF)
        assert backend.name == "noiommu"
        assert kernel.last("VFIO_SET_IOMMU").arg == uapi.VFIO_NOIOMMU_IOMMU
        assert kernel.last("VFIO_GROUP_SET_CONTAINER").node == "noiommu-3"


def test_allow_noiommu_does_not_turn_a_container_that_has_a_model(
    tmp_path: Path, kernel: LegacyKernel
) -> None:
    fake_pci_device(tmp_path, BDF, group=3)
    fake_pci_device(tmp_path, "0000:00:05.0", group=4, noiommu=True)
    with container_backend(tmp_path, kernel, allow_noiommu=True) as backend:
        backend.open_device(BDF)
        with pytest.raises(UnsafeModeError, match="group 4 is a no-IOMMU group"):
            backend.open_device("0000:00:05.0")
        assert backend.name == "type1v2" and list(backend.groups) == [3]


def test_a_failed_set_iommu_releases_the_group(
    backend: ContainerBackend, kernel: LegacyKernel
) -> None:
    kernel.handlers["VFIO_SET_IOMMU"] = lambda _arg: -errno.EPERM
    with pytest.raises(VfioError, match=r"VFIO_SET_IOMMU on container: \[Errno 1\]"):
        backend.open_device(BDF)
    assert backend.groups == {} and backend.container.iommu_type is None


def test_a_device_without_iommu_group_is_reported(tmp_path: Path, kernel: LegacyKernel) -> None:
    fake_pci_device(tmp_path, BDF, group=3)
    (tmp_path / "sys/devices/pci0000:00" / BDF / "iommu_group").unlink()
    with container_backend(tmp_path, kernel) as backend:
        with pytest.raises(BackendUnavailableError, match="no IOMMU group"):
            backend.open_device(BDF)
        with pytest.raises(FileNotFoundError, match=r"no PCI device 0000:00:1f\.0"):
            backend.open_device("00:1f.0")


def test_dirty_page_tracking_bytes(backend: ContainerBackend, kernel: LegacyKernel) -> None:
    backend.open_device(BDF)
    container = backend.container
    flags = (
        uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
        uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
        uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
    )

    def answer(arg: Any) -> int:
        if arg.flags & flags[2]:
            query = uapi.ffi.cast("struct vfio_iommu_type1_dirty_bitmap_get *", arg.data)
            query.bitmap.data[1] = 1 << 3  # page 67 dirty
            query.bitmap.data[0] = 1  # page 0 dirty
        return 0

    kernel.handlers["VFIO_IOMMU_DIRTY_PAGES"] = answer
    container.set_dirty_tracking(True)
    assert kernel.calls[-1].arg == struct.pack("=II", 8, flags[0])
    assert container.dirty_pages(0x100000, 100 * 4096, 4096) == [0x100000, 0x100000 + 67 * 4096]
    get = kernel.calls[-1].arg
    assert isinstance(get, bytes) and len(get) == 8 + 40
    # argsz, flags, then iova, size, bitmap page size and bytes (2 words for 100 pages)
    assert struct.unpack_from("=IIQQQQ", get) == (48, flags[2], 0x100000, 100 * 4096, 4096, 16)
    container.set_dirty_tracking(False)
    assert kernel.calls[-1].arg == struct.pack("=II", 8, flags[1])
    kernel.handlers["VFIO_IOMMU_DIRTY_PAGES"] = lambda _arg: -errno.EINVAL
    assert container.raw_dirty_pages(flags[2], 0x100000, 4096) == -errno.EINVAL


def test_raw_tier_in_vfio_terms(backend: ContainerBackend, kernel: LegacyKernel) -> None:
    """The backend's raw tier is the container's: VFIO flags in, 0 or -errno out."""
    backend.open_device(BDF)
    assert backend.raw_map_dma(0x7000_0000, 0x2000, 4096, uapi.VFIO_DMA_MAP_FLAG_READ) == 0
    assert kernel.last("VFIO_IOMMU_MAP_DMA").arg == struct.pack(
        "=IIQQQ", 32, uapi.VFIO_DMA_MAP_FLAG_READ, 0x7000_0000, 0x2000, 4096
    )
    kernel.handlers["VFIO_IOMMU_UNMAP_DMA"] = lambda _arg: -errno.EINVAL
    assert backend.raw_unmap_dma(0x2000, 4096) == -errno.EINVAL
