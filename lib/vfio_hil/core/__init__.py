"""Userspace VFIO library for the device under test.

Depends only on the Python standard library and cffi (ABI mode), so it runs on a DUT from
a zip file on ``sys.path``.
"""

from . import sysfs, uapi
from .container import Container
from .device import Bar, Device, DeviceInfo, IrqInfo, RegionInfo
from .dma import DmaBuffer
from .errors import VfioApiVersionError, VfioError
from .group import Group, GroupStatus
from .irq import EventFd
from .uapi import ioctl_raw

__all__ = [
    "Bar",
    "Container",
    "Device",
    "DeviceInfo",
    "DmaBuffer",
    "EventFd",
    "Group",
    "GroupStatus",
    "IrqInfo",
    "RegionInfo",
    "VfioApiVersionError",
    "VfioError",
    "ioctl_raw",
    "sysfs",
    "uapi",
]
