"""VFIO groups against the real kernel: status, container attach/detach, device fds by name,
member devices, and the raw tier's errnos."""

from __future__ import annotations

import errno
import os

import pytest

from vfio_hil.core import Container, Group, VfioError, sysfs, uapi


def test_status_follows_the_container(edu_bdf: str) -> None:
    with Container() as container, Group.of_device(edu_bdf) as group:
        assert group.number == sysfs.iommu_group(edu_bdf)
        assert not group.noiommu
        assert tuple(group.status()) == (True, False)
        assert group.raw_status() == uapi.VFIO_GROUP_FLAGS_VIABLE
        group.set_container(container)
        assert tuple(group.status()) == (True, True)
        group.unset_container()
        assert tuple(group.status()) == (True, False)
        assert group.raw_unset_container() == -errno.EINVAL  # not attached any more
        assert group.raw_status(argsz=4) == -errno.EINVAL


def _not_a_container_errno() -> int:
    # Linux 6.2 made the container optional (iommufd may stand in for it) and answers an fd
    # that is neither with EBADFD instead of EINVAL.
    release = tuple(int(x) for x in os.uname().release.split(".")[:2])
    return -errno.EBADFD if release >= (6, 2) else -errno.EINVAL


def test_set_container_raw_errnos(edu_bdf: str) -> None:
    with Container() as container, Group.of_device(edu_bdf) as group:
        assert group.raw_set_container(-1) == -errno.EBADF
        assert group.raw_set_container(group.fd) == _not_a_container_errno()
        assert group.raw_set_container(container.fd) == 0


def test_device_fd_by_name(edu_bdf: str, nvme_bdf: str) -> None:
    with Container() as container, Group.of_device(edu_bdf) as group:
        assert group.raw_get_device_fd(edu_bdf) == -errno.EINVAL  # no container yet
        group.set_container(container)
        container.set_iommu(uapi.VFIO_TYPE1v2_IOMMU)
        assert group.raw_get_device_fd(nvme_bdf) == -errno.ENODEV  # not in this group
        assert group.raw_get_device_fd("garbage") == -errno.ENODEV
        with pytest.raises(VfioError) as info:
            group.device(nvme_bdf)
        assert (info.value.ioctl, info.value.arguments) == (
            "VFIO_GROUP_GET_DEVICE_FD",
            {"name": nvme_bdf},
        )
        with group.device(edu_bdf) as device:
            assert device.bdf == edu_bdf
            assert group.raw_unset_container() == -errno.EBUSY  # a device is still open
        group.unset_container()


def test_members_come_from_sysfs(edu_bdf: str) -> None:
    with Group.of_device(edu_bdf) as group:
        assert edu_bdf in group.members()
        assert group.members() == sysfs.group_devices(group.number)


def test_a_group_opens_only_once(edu_bdf: str) -> None:
    with Group.of_device(edu_bdf) as group:
        with pytest.raises(VfioError) as info:
            Group(group.number)
        assert (info.value.errno, info.value.ioctl) == (errno.EBUSY, "open")
