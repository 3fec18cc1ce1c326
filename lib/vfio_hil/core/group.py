"""A VFIO group: /dev/vfio/N, the unit of ownership the IOMMU can isolate."""

from __future__ import annotations

import os
from typing import List, NamedTuple, Optional, Tuple

from . import sysfs, uapi
from .container import Container
from .device import Device
from .handle import Handle, open_node

VFIO_DEV_DIR = "/dev/vfio"


class GroupStatus(NamedTuple):
    """Result of VFIO_GROUP_GET_STATUS."""

    viable: bool
    container_set: bool


def group_node(number: int, dev_dir: str = VFIO_DEV_DIR) -> Tuple[str, bool]:
    """Path of group ``number``'s device node and whether it is a no-IOMMU group.

    In no-IOMMU mode (``vfio.enable_unsafe_noiommu_mode``) the kernel names the node
    ``noiommu-N``: the device is not isolated and DMA uses physical addresses.
    """
    plain = os.path.join(dev_dir, str(number))
    unsafe = os.path.join(dev_dir, f"noiommu-{number}")
    if not os.path.exists(plain) and os.path.exists(unsafe):
        return unsafe, True
    return plain, False


class Group(Handle):
    """An open VFIO group.

    Owns only the group fd. Devices obtained through :meth:`device` own their own fds and
    must be closed separately; the group need not outlive them.
    """

    def __init__(
        self,
        number: int,
        *,
        dev_dir: str = VFIO_DEV_DIR,
        sysfs_root: str = "/",
        ioctl_fn: uapi.IoctlFn = uapi.ioctl_raw,
    ) -> None:
        target = f"group {number}"
        path, noiommu = group_node(number, dev_dir)
        super().__init__(open_node(path, target), target, ioctl_fn)
        self.number = number
        #: True for a no-IOMMU group (``/dev/vfio/noiommu-N``): no DMA isolation at all.
        self.noiommu = noiommu
        self._sysfs_root = sysfs_root

    @classmethod
    def of_device(
        cls,
        bdf: str,
        *,
        dev_dir: str = VFIO_DEV_DIR,
        sysfs_root: str = "/",
        ioctl_fn: uapi.IoctlFn = uapi.ioctl_raw,
    ) -> Group:
        """Open the IOMMU group that PCI device ``bdf`` belongs to."""
        number = sysfs.iommu_group(bdf, sysfs_root)
        return cls(number, dev_dir=dev_dir, sysfs_root=sysfs_root, ioctl_fn=ioctl_fn)

    def status(self) -> GroupStatus:
        """Whether the group is viable (all its devices bound to VFIO or unbound) and attached."""
        status = uapi.new("vfio_group_status")
        self._ioctl("VFIO_GROUP_GET_STATUS", status)
        return GroupStatus(
            viable=bool(status.flags & uapi.VFIO_GROUP_FLAGS_VIABLE),
            container_set=bool(status.flags & uapi.VFIO_GROUP_FLAGS_CONTAINER_SET),
        )

    def raw_status(self, argsz: Optional[int] = None) -> int:
        """VFIO_GROUP_GET_STATUS (``argsz`` overridable) returning the flags or ``-errno``."""
        status = uapi.new("vfio_group_status")
        if argsz is not None:
            status.argsz = argsz
        ret = self._ioctl_raw("VFIO_GROUP_GET_STATUS", status)
        return ret if ret < 0 else int(status.flags)

    def set_container(self, container: Container) -> None:
        """Attach the group to ``container``."""
        self._ioctl(
            "VFIO_GROUP_SET_CONTAINER",
            uapi.ffi.new("int32_t *", container.fd),
            container_fd=container.fd,
        )

    def raw_set_container(self, container_fd: int) -> int:
        """VFIO_GROUP_SET_CONTAINER with any fd, returning 0 or ``-errno``."""
        return self._ioctl_raw("VFIO_GROUP_SET_CONTAINER", uapi.ffi.new("int32_t *", container_fd))

    def unset_container(self) -> None:
        """Detach the group from its container; every device fd must be closed first."""
        self._ioctl("VFIO_GROUP_UNSET_CONTAINER")

    def raw_unset_container(self) -> int:
        """VFIO_GROUP_UNSET_CONTAINER returning 0 or ``-errno``."""
        return self._ioctl_raw("VFIO_GROUP_UNSET_CONTAINER")

    def device(self, bdf: str) -> Device:
        """Open device ``bdf`` of this group (the group must be attached to a container)."""
        name = sysfs.normalize_bdf(bdf)
        fd = self._ioctl(
            "VFIO_GROUP_GET_DEVICE_FD", uapi.ffi.new("char[]", name.encode()), name=name
        )
        return Device(fd, name, ioctl_fn=self._ioctl_fn)

    def raw_get_device_fd(self, name: str) -> int:
        """VFIO_GROUP_GET_DEVICE_FD with an arbitrary name, returning an fd or ``-errno``.

        A returned fd belongs to the caller, who must close it.
        """
        return self._ioctl_raw("VFIO_GROUP_GET_DEVICE_FD", uapi.ffi.new("char[]", name.encode()))

    def members(self) -> List[str]:
        """Addresses of the devices in this IOMMU group, from sysfs."""
        return sysfs.group_devices(self.number, self._sysfs_root)
