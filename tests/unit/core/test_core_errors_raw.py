"""VfioError, the raw ioctl tier and fd ownership, without any VFIO device."""

from __future__ import annotations

import errno
import os
import pickle
import threading
from pathlib import Path

import pytest

from vfio_hil.core import Container, Group, VfioError, ioctl_raw, uapi
from vfio_hil.core.handle import Registry


def test_message_format() -> None:
    e = VfioError(errno.EPERM, "VFIO_GROUP_SET_CONTAINER", "group 7", {"container_fd": 5})
    assert str(e) == "VFIO_GROUP_SET_CONTAINER on group 7: [Errno 1] Operation not permitted"
    assert isinstance(e, OSError)
    assert (e.errno, e.strerror) == (errno.EPERM, "Operation not permitted")
    assert (e.ioctl, e.target, e.arguments) == (
        "VFIO_GROUP_SET_CONTAINER",
        "group 7",
        {"container_fd": 5},
    )


def test_pickles() -> None:
    e = VfioError(errno.EBUSY, "open", "group 3", {"path": "/dev/vfio/3"})
    copy = pickle.loads(pickle.dumps(e))
    assert type(copy) is VfioError
    assert str(copy) == str(e)
    assert copy.arguments == e.arguments


def test_raw_returns_minus_errno() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        assert ioctl_raw(fd, "VFIO_GET_API_VERSION") == -errno.ENOTTY
        info = uapi.new("vfio_iommu_type1_info")
        assert ioctl_raw(fd, "VFIO_IOMMU_GET_INFO", info) == -errno.ENOTTY
        # A packed request goes through fcntl.ioctl: the same -errno, not an OSError.
        assert ioctl_raw(fd, "VFIO_IOMMU_UNMAP_DMA", bytearray(24)) == -errno.ENOTTY
    finally:
        os.close(fd)
    assert ioctl_raw(fd, "VFIO_GET_API_VERSION") == -errno.EBADF
    assert ioctl_raw(fd, "VFIO_IOMMU_MAP_DMA", bytearray(32)) == -errno.EBADF
    # fcntl itself refuses a negative fd; the answer is the kernel's.
    assert ioctl_raw(-1, "VFIO_IOMMU_MAP_DMA", bytearray(32)) == -errno.EBADF


def test_request_buffers_are_per_thread() -> None:
    buffers = uapi.RequestBuffers()
    mine = buffers.VFIO_IOMMU_MAP_DMA
    assert len(mine) == uapi.ffi.sizeof("struct vfio_iommu_type1_dma_map")
    assert buffers.VFIO_IOMMU_MAP_DMA is mine
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(buffers.VFIO_IOMMU_MAP_DMA))
    worker.start()
    worker.join()
    assert theirs[0] is not mine and len(theirs[0]) == len(mine)
    # One declared attribute per packed request, no more, no less.
    assert set(uapi.RequestBuffers.__annotations__) == set(uapi.PACKED)


def test_strict_raises() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(VfioError) as info:
            uapi.ioctl(fd, "VFIO_CHECK_EXTENSION", 3, target="container", arguments={"ext": 3})
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOTTY
    assert str(info.value).startswith("VFIO_CHECK_EXTENSION on container: [Errno 25]")
    assert info.value.arguments == {"ext": 3}


def test_new_presets_argsz() -> None:
    region = uapi.new("vfio_region_info", index=7)
    assert (region.argsz, region.index) == (32, 7)
    assert uapi.new("vfio_group_status", argsz=3).argsz == 3
    assert uapi.new("vfio_iova_range", start=1).start == 1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_container_on_non_vfio_file_closes_its_fd(tmp_path: Path) -> None:
    fake = tmp_path / "vfio"
    fake.write_bytes(b"")
    before = _open_fds()
    with pytest.raises(VfioError) as info:
        Container(str(fake))
    assert str(info.value) == "VFIO_GET_API_VERSION on container: [Errno 25] " + os.strerror(
        errno.ENOTTY
    )
    assert _open_fds() == before


def test_open_failure_is_a_vfio_error(tmp_path: Path) -> None:
    with pytest.raises(VfioError) as info:
        Group(42, dev_dir=str(tmp_path))
    assert info.value.errno == errno.ENOENT
    assert str(info.value).startswith("open on group 42: [Errno 2]")


def test_group_handle_lifecycle(tmp_path: Path) -> None:
    (tmp_path / "5").write_bytes(b"")
    before = _open_fds()
    with Group(5, dev_dir=str(tmp_path)) as group:
        assert _open_fds() == before + 1
        with pytest.raises(VfioError) as info:
            group.status()
        assert str(info.value).startswith("VFIO_GROUP_GET_STATUS on group 5: [Errno 25]")
        assert group.raw_unset_container() == -errno.ENOTTY
        assert group.raw_get_device_fd("0000:00:04.0") == -errno.ENOTTY
    assert group.closed
    assert _open_fds() == before
    group.close()
    with pytest.raises(ValueError):
        group.fileno()


def test_unclosed_handle_warns_and_closes(tmp_path: Path) -> None:
    (tmp_path / "6").write_bytes(b"")
    before = _open_fds()
    group = Group(6, dev_dir=str(tmp_path))
    with pytest.warns(ResourceWarning):
        del group
    assert _open_fds() == before


def test_registry_keeps_creation_order_and_forgets_in_any_order() -> None:
    registry: Registry[object] = Registry()
    items = [object() for _ in range(5)]
    for item in items:
        registry.add(item)
    registry.remove(items[0])
    registry.remove(items[3])
    assert list(registry) == [items[1], items[2], items[4]] and len(registry) == 3
    assert registry.newest() is items[4]
    # Iterating gives a snapshot: closing (removing) while walking it is safe.
    for item in registry:
        registry.remove(item)
    assert len(registry) == 0
    with pytest.raises(IndexError):
        registry.newest()
    with pytest.raises(KeyError):
        registry.remove(items[0])
