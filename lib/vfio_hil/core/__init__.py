"""Userspace VFIO library for the device under test.

Depends only on the Python standard library and cffi (ABI mode), so it runs on a DUT from
a zip file on ``sys.path``.

Start with :func:`open_iommu`, which picks the IOMMU backend (iommufd or the legacy VFIO
container) and opens devices in it; the lower-level objects (:class:`Container`,
:class:`Iommufd`, :class:`Group`, :class:`Device`) expose every ioctl in two tiers: strict
methods raise :class:`VfioError`, ``raw_`` methods return ``-errno``.
"""

from . import pci, sysfs, uapi
from .backend import (
    BACKENDS,
    ContainerBackend,
    DmaMapping,
    IommuBackend,
    IommufdBackend,
    available_backends,
    choose_backend,
    open_iommu,
)
from .caps import InfoCap
from .container import Container, IommuInfo, MigrationCap
from .device import DependentDevice, Device, DeviceInfo, HotResetInfo, IrqInfo
from .dma import HUGE_1G, HUGE_2M, PAGE_4K, DmaBuffer
from .errors import (
    BackendUnavailableError,
    CapabilityChainError,
    HugePagesUnavailableError,
    IovaExhaustedError,
    UnsafeModeError,
    VfioApiVersionError,
    VfioError,
)
from .group import Group, GroupStatus
from .iommufd import Ioas, Iommufd
from .iova import IovaAllocator, IovaRange
from .irq import EventFd, IoEventFd, IrqEventFds
from .region import Bar, RegionInfo, RegionType, SparseArea
from .uapi import ioctl_raw

__all__ = [
    "BACKENDS",
    "HUGE_1G",
    "HUGE_2M",
    "PAGE_4K",
    "BackendUnavailableError",
    "Bar",
    "CapabilityChainError",
    "Container",
    "ContainerBackend",
    "DependentDevice",
    "Device",
    "DeviceInfo",
    "DmaBuffer",
    "DmaMapping",
    "EventFd",
    "Group",
    "GroupStatus",
    "HotResetInfo",
    "HugePagesUnavailableError",
    "InfoCap",
    "IoEventFd",
    "Ioas",
    "IommuBackend",
    "IommuInfo",
    "Iommufd",
    "IommufdBackend",
    "IovaAllocator",
    "IovaExhaustedError",
    "IovaRange",
    "IrqEventFds",
    "IrqInfo",
    "MigrationCap",
    "RegionInfo",
    "RegionType",
    "SparseArea",
    "UnsafeModeError",
    "VfioApiVersionError",
    "VfioError",
    "available_backends",
    "choose_backend",
    "ioctl_raw",
    "open_iommu",
    "pci",
    "sysfs",
    "uapi",
]
