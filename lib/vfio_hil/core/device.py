"""A VFIO device fd: regions (config space, BARs), interrupts, resets, ioeventfds and device
features, opened through a group (legacy) or through its cdev (iommufd)."""

from __future__ import annotations

import errno
import os
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from . import caps, pci, sysfs, uapi
from .errors import BackendUnavailableError, VfioError
from .handle import Handle, Registry, checked, open_node
from .irq import EventFd, IoEventFd, IrqEventFds
from .region import Bar, RegionInfo, check_access, check_value, parse_region_info

__all__ = [
    "Bar",
    "DependentDevice",
    "Device",
    "DeviceInfo",
    "HotResetInfo",
    "IrqInfo",
    "RegionInfo",
]

PCI_COMMAND = 0x04
PCI_COMMAND_MASTER = 1 << 2
PCI_STATUS = 0x06
#: The device asserts INTx (PCI 2.3 Interrupt Status).
PCI_STATUS_INTERRUPT = 1 << 3
# Upper bound only: the kernel rejects accesses beyond the device's real config size.
_PCI_CFG_SPACE_EXP_SIZE = 4096
_CONFIG_WIDTHS = (1, 2, 4)
#: Where VFIO device cdevs live (Linux 6.6+).
VFIO_CDEV_DIR = "/dev/vfio/devices"

_IOEVENTFD_WIDTHS = {
    1: uapi.VFIO_DEVICE_IOEVENTFD_8,
    2: uapi.VFIO_DEVICE_IOEVENTFD_16,
    4: uapi.VFIO_DEVICE_IOEVENTFD_32,
    8: uapi.VFIO_DEVICE_IOEVENTFD_64,
}
# What the kernel answers a feature probe it does not support: ENOTTY for an unknown
# feature, EINVAL for a GET/SET direction the feature lacks.
_FEATURE_UNSUPPORTED = (errno.ENOTTY, errno.EINVAL)


class DeviceInfo(NamedTuple):
    """Result of VFIO_DEVICE_GET_INFO (``caps``: its capability chain, if any)."""

    flags: int
    num_regions: int
    num_irqs: int
    caps: Tuple[caps.InfoCap, ...] = ()

    @property
    def resettable(self) -> bool:
        """VFIO_DEVICE_FLAGS_RESET: the device supports VFIO_DEVICE_RESET."""
        return bool(self.flags & uapi.VFIO_DEVICE_FLAGS_RESET)

    @property
    def is_pci(self) -> bool:
        """VFIO_DEVICE_FLAGS_PCI: a vfio-pci device (fixed region and IRQ indices)."""
        return bool(self.flags & uapi.VFIO_DEVICE_FLAGS_PCI)


class IrqInfo(NamedTuple):
    """Result of VFIO_DEVICE_GET_IRQ_INFO for one IRQ index."""

    index: int
    flags: int
    count: int

    @property
    def eventfd(self) -> bool:
        """Interrupts can be signalled through eventfds."""
        return bool(self.flags & uapi.VFIO_IRQ_INFO_EVENTFD)

    @property
    def maskable(self) -> bool:
        """The MASK/UNMASK actions are supported."""
        return bool(self.flags & uapi.VFIO_IRQ_INFO_MASKABLE)

    @property
    def automasked(self) -> bool:
        """The interrupt is masked when it fires (level-triggered INTx) until unmasked."""
        return bool(self.flags & uapi.VFIO_IRQ_INFO_AUTOMASKED)

    @property
    def noresize(self) -> bool:
        """Vectors cannot be added without disabling the index first (MSI, MSI-X)."""
        return bool(self.flags & uapi.VFIO_IRQ_INFO_NORESIZE)


class DependentDevice(NamedTuple):
    """A device affected by a hot reset (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO).

    ``group_id`` is the IOMMU group, or the iommufd device id when the info was returned
    with VFIO_PCI_HOT_RESET_FLAG_DEV_ID (cdev).
    """

    group_id: int
    segment: int
    bus: int
    devfn: int

    @property
    def bdf(self) -> str:
        """The device's PCI address."""
        return f"{self.segment:04x}:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


class HotResetInfo(NamedTuple):
    """Result of VFIO_DEVICE_GET_PCI_HOT_RESET_INFO."""

    flags: int
    devices: List[DependentDevice]


def _pack_fds(fds: Sequence[int]) -> bytes:
    return struct.pack(f"={len(fds)}i", *fds)


class Device(Handle):
    """An open VFIO device; from :meth:`Group.device`, :meth:`open_cdev` or a backend's
    ``open_device``.

    Owns the device fd and every :class:`Bar`, :class:`IrqEventFds` and :class:`IoEventFd`
    created from it. Each ioctl has a strict method raising
    :class:`~vfio_hil.core.errors.VfioError` and a ``raw_`` one returning ``-errno``.
    """

    def __init__(self, fd: int, bdf: str, *, ioctl_fn: uapi.IoctlFn = uapi.ioctl_raw) -> None:
        super().__init__(fd, f"device {bdf}", ioctl_fn)
        self.bdf = bdf
        #: The iommufd device id once bound (:meth:`bind_iommufd`), else None.
        self.devid: Optional[int] = None
        self._bars: Registry[Bar] = Registry()
        self._irqs: Registry[IrqEventFds] = Registry()
        self._ioeventfds: Registry[IoEventFd] = Registry()
        self._region_offsets: Dict[int, int] = {}

    @classmethod
    def open_cdev(
        cls,
        bdf: str,
        *,
        dev_dir: str = VFIO_CDEV_DIR,
        sysfs_root: str = "/",
        ioctl_fn: uapi.IoctlFn = uapi.ioctl_raw,
    ) -> Device:
        """Open ``bdf`` through its VFIO device cdev; it must then be bound to an iommufd
        (:meth:`bind_iommufd`) before anything else."""
        bdf = sysfs.normalize_bdf(bdf)
        name = sysfs.vfio_cdev(bdf, sysfs_root)
        if name is None:
            raise BackendUnavailableError(
                f"{bdf} has no VFIO device cdev ({sysfs.device_path(bdf, sysfs_root)}/vfio-dev "
                "is missing: the device is not bound to vfio-pci or the kernel lacks "
                "CONFIG_VFIO_DEVICE_CDEV)"
            )
        return cls(open_node(os.path.join(dev_dir, name), f"device {bdf}"), bdf, ioctl_fn=ioctl_fn)

    def _release(self) -> None:
        # Owned objects first: they may still need the fd (IRQ disable, ioeventfd removal).
        try:
            while self._ioeventfds:
                self._ioeventfds.newest().close()
            while self._irqs:
                self._irqs.newest().close()
        finally:
            while self._bars:
                self._bars.newest().close()

    # -- info ------------------------------------------------------------------------------

    def info(self) -> DeviceInfo:
        """VFIO_DEVICE_GET_INFO: flags, the number of regions and IRQ indices, capabilities."""
        buf = self._info("VFIO_DEVICE_GET_INFO", "vfio_device_info")
        info = uapi.ffi.from_buffer("struct vfio_device_info *", buf)
        chain: List[caps.InfoCap] = []
        if info.flags & uapi.VFIO_DEVICE_FLAGS_CAPS:
            fixed = uapi.ffi.sizeof("struct vfio_device_info")
            chain = caps.walk(buf, int(info.cap_offset), fixed, f"info of {self.target}")
        return DeviceInfo(int(info.flags), int(info.num_regions), int(info.num_irqs), tuple(chain))

    def raw_info(self, argsz: Optional[int] = None) -> int:
        """VFIO_DEVICE_GET_INFO (``argsz`` overridable) returning 0 or ``-errno``."""
        info = uapi.new("vfio_device_info")
        if argsz is not None:
            info.argsz = argsz
        return self._ioctl_raw("VFIO_DEVICE_GET_INFO", info)

    def region_info(self, index: int) -> RegionInfo:
        """VFIO_DEVICE_GET_REGION_INFO for region ``index`` (see ``VFIO_PCI_*_REGION_INDEX``),
        with its capabilities (sparse mmap areas, region type, MSI-X mappable)."""
        buf = self._info("VFIO_DEVICE_GET_REGION_INFO", "vfio_region_info", index=index)
        region = parse_region_info(buf, f"region {index} info of {self.target}")
        self._region_offsets[index] = region.offset
        return region

    def raw_region_info(self, index: int, argsz: Optional[int] = None) -> int:
        """VFIO_DEVICE_GET_REGION_INFO (``argsz`` overridable) returning 0 or ``-errno``."""
        info = uapi.new("vfio_region_info", index=index)
        if argsz is not None:
            info.argsz = argsz
        return self._ioctl_raw("VFIO_DEVICE_GET_REGION_INFO", info)

    def irq_info(self, index: int) -> IrqInfo:
        """VFIO_DEVICE_GET_IRQ_INFO for IRQ ``index`` (see ``VFIO_PCI_*_IRQ_INDEX``)."""
        info = uapi.new("vfio_irq_info", index=index)
        self._ioctl("VFIO_DEVICE_GET_IRQ_INFO", info, index=index)
        return IrqInfo(index, int(info.flags), int(info.count))

    def raw_irq_info(self, index: int, argsz: Optional[int] = None) -> int:
        """VFIO_DEVICE_GET_IRQ_INFO (``argsz`` overridable) returning 0 or ``-errno``."""
        info = uapi.new("vfio_irq_info", index=index)
        if argsz is not None:
            info.argsz = argsz
        return self._ioctl_raw("VFIO_DEVICE_GET_IRQ_INFO", info)

    # -- region access -----------------------------------------------------------------------

    def _pread_bytes(self, offset: int, length: int, **arguments: Any) -> bytes:
        where = {**arguments, "offset": offset, "length": length}
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as e:
            raise VfioError(e.errno, "pread", self.target, where) from None
        if len(data) != length:
            # vfio-pci never returns a short read for an in-range access; report it as EIO.
            raise VfioError(errno.EIO, "pread", self.target, where)
        return data

    def _pwrite_bytes(self, offset: int, data: bytes, **arguments: Any) -> None:
        where = {**arguments, "offset": offset, "length": len(data)}
        try:
            written = os.pwrite(self.fd, data, offset)
        except OSError as e:
            raise VfioError(e.errno, "pwrite", self.target, where) from None
        if written != len(data):
            raise VfioError(errno.EIO, "pwrite", self.target, where)

    def _pread(self, offset: int, width: int, **arguments: Any) -> int:
        return int.from_bytes(self._pread_bytes(offset, width, **arguments), "little")

    def _pwrite(self, offset: int, value: int, width: int, **arguments: Any) -> None:
        self._pwrite_bytes(offset, value.to_bytes(width, "little"), **arguments, value=value)

    def _region_offset(self, index: int) -> int:
        if index not in self._region_offsets:
            self.region_info(index)
        return self._region_offsets[index]

    @staticmethod
    def _check_config_access(offset: int, width: int) -> None:
        if width not in _CONFIG_WIDTHS:
            raise ValueError(f"config access width must be one of {_CONFIG_WIDTHS}, not {width}")
        check_access(offset, width, _PCI_CFG_SPACE_EXP_SIZE)

    def config_read(self, offset: int, width: int = 4) -> int:
        """Read ``width`` (1, 2 or 4) bytes of PCI config space at ``offset``."""
        self._check_config_access(offset, width)
        base = self._region_offset(uapi.VFIO_PCI_CONFIG_REGION_INDEX)
        return self._pread(base + offset, width, region="config")

    def config_write(self, offset: int, value: int, width: int = 4) -> None:
        """Write ``width`` (1, 2 or 4) bytes of PCI config space at ``offset``."""
        self._check_config_access(offset, width)
        check_value(value, width)
        base = self._region_offset(uapi.VFIO_PCI_CONFIG_REGION_INDEX)
        self._pwrite(base + offset, value, width, region="config")

    def config_space(self) -> bytes:
        """The whole config space as VFIO presents it (256 or 4096 bytes).

        vfio-pci virtualizes parts of it (BARs, some capability registers), so this is what
        userspace drivers see, not necessarily the raw hardware registers.
        """
        region = self.region_info(uapi.VFIO_PCI_CONFIG_REGION_INDEX)
        return self._pread_bytes(region.offset, region.size, region="config")

    def pci_config(self) -> pci.ConfigSpace:
        """The config space parsed: header fields and standard and extended capabilities."""
        return pci.parse_config(self.config_space())

    def enable_bus_master(self) -> None:
        """Set Bus Master Enable in the command register, so the device may issue DMA."""
        command = self.config_read(PCI_COMMAND, 2)
        if not command & PCI_COMMAND_MASTER:
            self.config_write(PCI_COMMAND, command | PCI_COMMAND_MASTER, 2)

    def map_bar(self, index: int) -> Bar:
        """Give access to region ``index``; see :class:`Bar`."""
        region = self.region_info(index)
        if region.size == 0:
            raise ValueError(f"{self.target} has no region {index} (size 0)")
        bar = Bar(self, region)
        self._bars.add(bar)
        return bar

    # -- interrupts --------------------------------------------------------------------------

    @staticmethod
    def _irq_set(index: int, flags: int, start: int, count: int, data: bytes) -> Any:
        irq_set = uapi.new_var(
            "vfio_irq_set", len(data), flags=flags, index=index, start=start, count=count
        )
        uapi.ffi.memmove(irq_set.data, data, len(data))
        return irq_set

    def set_irqs(
        self, index: int, flags: int, start: int = 0, count: int = 0, data: bytes = b""
    ) -> None:
        """VFIO_DEVICE_SET_IRQS with caller-built ``flags`` and payload ``data``."""
        self._ioctl(
            "VFIO_DEVICE_SET_IRQS",
            self._irq_set(index, flags, start, count, data),
            index=index,
            flags=flags,
            start=start,
            count=count,
            data=data.hex(),
        )

    def raw_set_irqs(
        self, index: int, flags: int, start: int = 0, count: int = 0, data: bytes = b""
    ) -> int:
        """VFIO_DEVICE_SET_IRQS returning 0 or ``-errno``."""
        return self._ioctl_raw(
            "VFIO_DEVICE_SET_IRQS", self._irq_set(index, flags, start, count, data)
        )

    def set_irqs_eventfd(self, index: int, fds: Sequence[int], start: int = 0) -> None:
        """Signal the eventfds ``fds`` for vectors ``start``.. of IRQ ``index``.

        For MSI/MSI-X this also enables the capability on the device. An fd of -1
        de-assigns that vector.
        """
        self.set_irqs(
            index,
            uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
            start,
            len(fds),
            _pack_fds(fds),
        )

    def disable_irqs(self, index: int) -> None:
        """Tear down every trigger of IRQ ``index`` (and disable MSI/MSI-X)."""
        self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER)

    def _irq_action(
        self, index: int, action: int, start: int, count: int, values: Optional[Sequence[bool]]
    ) -> None:
        if values is None:
            self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_NONE | action, start, count)
        else:
            data = bytes(bool(v) for v in values)
            self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_BOOL | action, start, len(data), data)

    def trigger_irqs(
        self, index: int, start: int = 0, count: int = 1, values: Optional[Sequence[bool]] = None
    ) -> None:
        """ACTION_TRIGGER: make the kernel signal the vectors' eventfds as if they fired.

        Without ``values`` (DATA_NONE) vectors ``start..start+count-1`` fire; with
        ``values`` (DATA_BOOL) only those whose value is true.
        """
        self._irq_action(index, uapi.VFIO_IRQ_SET_ACTION_TRIGGER, start, count, values)

    def mask_irqs(
        self, index: int, start: int = 0, count: int = 1, values: Optional[Sequence[bool]] = None
    ) -> None:
        """ACTION_MASK the vectors (DATA_NONE), or those whose ``values`` is true (DATA_BOOL)."""
        self._irq_action(index, uapi.VFIO_IRQ_SET_ACTION_MASK, start, count, values)

    def unmask_irqs(
        self, index: int, start: int = 0, count: int = 1, values: Optional[Sequence[bool]] = None
    ) -> None:
        """ACTION_UNMASK the vectors (DATA_NONE), or those whose ``values`` is true."""
        self._irq_action(index, uapi.VFIO_IRQ_SET_ACTION_UNMASK, start, count, values)

    def unmask_irqs_eventfd(self, index: int, fd: int, start: int = 0) -> None:
        """ACTION_UNMASK with DATA_EVENTFD: the kernel unmasks the vector each time ``fd`` is
        signalled (an irqfd-style resampler; -1 removes it)."""
        self.set_irqs(
            index,
            uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_UNMASK,
            start,
            1,
            _pack_fds([fd]),
        )

    def irq_eventfds(self, index: int, count: int = 1, start: int = 0) -> IrqEventFds:
        """Route vectors ``start..start+count-1`` of IRQ ``index`` to new eventfds.

        Returns a context manager; closing it disables the index and closes the eventfds.
        """
        irqs = IrqEventFds(self, index, count, start)
        self._irqs.add(irqs)
        return irqs

    # -- resets ------------------------------------------------------------------------------

    def reset(self) -> None:
        """VFIO_DEVICE_RESET (function-level reset)."""
        self._ioctl("VFIO_DEVICE_RESET")

    def raw_reset(self) -> int:
        """VFIO_DEVICE_RESET returning 0 or ``-errno``."""
        return self._ioctl_raw("VFIO_DEVICE_RESET")

    def hot_reset_info(self) -> HotResetInfo:
        """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: the devices a bus/slot reset would affect.

        Raises VfioError ENODEV when the device cannot be hot reset (e.g. it sits on a root
        bus, with no bridge to reset it).
        """
        count = 0
        while True:
            request = uapi.new_var("vfio_pci_hot_reset_info", count)
            ret = self._ioctl_raw("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", request)
            if ret == -errno.ENOSPC and request.count > count:
                # The kernel wrote back how many devices there are: ask again with room.
                count = int(request.count)
                continue
            checked(ret, "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", self.target, {"count": count})
            devices = [
                DependentDevice(int(d.group_id), int(d.segment), int(d.bus), int(d.devfn))
                for d in (request.devices[i] for i in range(request.count))
            ]
            return HotResetInfo(int(request.flags), devices)

    def raw_hot_reset_info(self, count: int = 0) -> int:
        """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO with room for ``count`` devices; returns 0 or
        ``-errno`` (``-ENOSPC`` when more devices are affected)."""
        request = uapi.new_var("vfio_pci_hot_reset_info", count)
        return self._ioctl_raw("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", request)

    @staticmethod
    def _hot_reset(group_fds: Sequence[int]) -> Any:
        request = uapi.new_var("vfio_pci_hot_reset", len(group_fds), count=len(group_fds))
        for i, fd in enumerate(group_fds):
            request.group_fds[i] = fd
        return request

    def hot_reset(self, groups: Sequence[Handle]) -> None:
        """VFIO_DEVICE_PCI_HOT_RESET: reset the bus or slot.

        ``groups`` must be every group :meth:`hot_reset_info` lists (legacy), or empty for a
        cdev device bound to an iommufd that owns all the affected devices.
        """
        fds = [g.fd for g in groups]
        self._ioctl(
            "VFIO_DEVICE_PCI_HOT_RESET",
            self._hot_reset(fds),
            groups=[g.target for g in groups],
        )

    def raw_hot_reset(self, group_fds: Sequence[int]) -> int:
        """VFIO_DEVICE_PCI_HOT_RESET with any fds, returning 0 or ``-errno``."""
        return self._ioctl_raw("VFIO_DEVICE_PCI_HOT_RESET", self._hot_reset(group_fds))

    # -- ioeventfd ---------------------------------------------------------------------------

    def _ioeventfd_request(self, index: int, offset: int, width: int, data: int, fd: int) -> Any:
        if width not in _IOEVENTFD_WIDTHS:
            raise ValueError(f"ioeventfd width must be one of {tuple(_IOEVENTFD_WIDTHS)}")
        check_value(data, width)
        return uapi.new(
            "vfio_device_ioeventfd",
            flags=_IOEVENTFD_WIDTHS[width],
            offset=self._region_offset(index) + offset,
            data=data,
            fd=fd,
        )

    def set_ioeventfd(self, index: int, offset: int, width: int, data: int, fd: int) -> None:
        """VFIO_DEVICE_IOEVENTFD: when eventfd ``fd`` is signalled, the kernel writes ``data``
        (``width`` bytes) at ``offset`` of region ``index``. ``fd`` -1 removes the ioeventfd
        with that offset, width and data."""
        self._ioctl(
            "VFIO_DEVICE_IOEVENTFD",
            self._ioeventfd_request(index, offset, width, data, fd),
            index=index,
            offset=offset,
            width=width,
            data=data,
            fd=fd,
        )

    def raw_ioeventfd(self, device_offset: int, data: int, flags: int, fd: int) -> int:
        """VFIO_DEVICE_IOEVENTFD with a raw device-fd offset and flags; 0 or ``-errno``."""
        request = uapi.new(
            "vfio_device_ioeventfd", flags=flags, offset=device_offset, data=data, fd=fd
        )
        return self._ioctl_raw("VFIO_DEVICE_IOEVENTFD", request)

    def ioeventfd(self, index: int, offset: int, width: int, data: int) -> IoEventFd:
        """Register a new eventfd as an ioeventfd (see :meth:`set_ioeventfd`).

        Returns a context manager whose :meth:`IoEventFd.signal` makes the kernel do the
        write; closing it removes the ioeventfd and closes the eventfd.
        """
        ioeventfd = IoEventFd(self, index, offset, width, data)
        self._ioeventfds.add(ioeventfd)
        return ioeventfd

    # -- device features ---------------------------------------------------------------------

    def feature(self, flags: int, data: bytes = b"", out_size: int = 0) -> bytes:
        """VFIO_DEVICE_FEATURE with ``flags`` (feature index | GET/SET/PROBE) and payload
        ``data``; return the first ``out_size`` bytes the kernel wrote back (for GET)."""
        request = self._feature(flags, data, out_size)
        self._ioctl("VFIO_DEVICE_FEATURE", request, flags=flags, data=data.hex())
        return bytes(uapi.ffi.buffer(request.data, out_size))

    def raw_feature(self, flags: int, data: bytes = b"") -> int:
        """VFIO_DEVICE_FEATURE returning 0 (or 1 for some GETs) or ``-errno``."""
        return self._ioctl_raw("VFIO_DEVICE_FEATURE", self._feature(flags, data, 0))

    @staticmethod
    def _feature(flags: int, data: bytes, out_size: int) -> Any:
        request = uapi.new_var("vfio_device_feature", max(len(data), out_size), flags=flags)
        uapi.ffi.memmove(request.data, data, len(data))
        return request

    def probe_feature(self, feature: int, get: bool = False, set: bool = False) -> bool:
        """Whether the device supports ``feature`` (with GET and/or SET if asked), through
        VFIO_DEVICE_FEATURE_PROBE. Errors other than "unsupported" raise VfioError."""
        flags = (
            feature
            | uapi.VFIO_DEVICE_FEATURE_PROBE
            | (uapi.VFIO_DEVICE_FEATURE_GET if get else 0)
            | (uapi.VFIO_DEVICE_FEATURE_SET if set else 0)
        )
        ret = self.raw_feature(flags)
        if ret >= 0:
            return True
        if -ret in _FEATURE_UNSUPPORTED:
            return False
        raise VfioError(-ret, "VFIO_DEVICE_FEATURE", self.target, {"flags": flags})

    def migration_flags(self) -> Optional[int]:
        """VFIO_DEVICE_FEATURE_MIGRATION GET: the ``VFIO_MIGRATION_*`` flags, or None when the
        device has no migration driver."""
        flags = uapi.VFIO_DEVICE_FEATURE_MIGRATION | uapi.VFIO_DEVICE_FEATURE_GET
        size = uapi.ffi.sizeof("struct vfio_device_feature_migration")
        if not self.probe_feature(uapi.VFIO_DEVICE_FEATURE_MIGRATION, get=True):
            return None
        return int.from_bytes(self.feature(flags, out_size=size), "little")

    def low_power_entry(self, wakeup: Optional[EventFd] = None) -> None:
        """Let the kernel put the device in a low power state (D3) while unused.

        With ``wakeup`` (LOW_POWER_ENTRY_WITH_WAKEUP) the eventfd is signalled when an access
        wakes it. mmap'ed BARs are unusable until :meth:`low_power_exit`.
        """
        set_ = uapi.VFIO_DEVICE_FEATURE_SET
        if wakeup is None:
            self.feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY | set_)
        else:
            data = struct.pack("=iI", wakeup.fd, 0)
            self.feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP | set_, data)

    def low_power_exit(self) -> None:
        """Bring the device back from :meth:`low_power_entry`."""
        self.feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT | uapi.VFIO_DEVICE_FEATURE_SET)

    # -- iommufd (cdev) ----------------------------------------------------------------------

    def bind_iommufd(self, iommufd: Handle) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD: make this cdev device part of ``iommufd``; return (and
        keep in :attr:`devid`) its iommufd device id."""
        request = uapi.new("vfio_device_bind_iommufd", iommufd=iommufd.fd)
        self._ioctl("VFIO_DEVICE_BIND_IOMMUFD", request, iommufd=iommufd.target)
        self.devid = int(request.out_devid)
        return self.devid

    def raw_bind_iommufd(self, iommufd_fd: int, flags: int = 0) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD with any fd, returning the device id or ``-errno``."""
        request = uapi.new("vfio_device_bind_iommufd", flags=flags, iommufd=iommufd_fd)
        ret = self._ioctl_raw("VFIO_DEVICE_BIND_IOMMUFD", request)
        return ret if ret < 0 else int(request.out_devid)

    def attach_ioas(self, pt_id: int) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT: attach to the IOAS (or HWPT) ``pt_id``; return the
        id of the hardware page table the kernel attached."""
        request = uapi.new("vfio_device_attach_iommufd_pt", pt_id=pt_id)
        self._ioctl("VFIO_DEVICE_ATTACH_IOMMUFD_PT", request, pt_id=pt_id)
        return int(request.pt_id)

    def raw_attach_ioas(self, pt_id: int, flags: int = 0) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT returning the attached id or ``-errno``."""
        request = uapi.new("vfio_device_attach_iommufd_pt", flags=flags, pt_id=pt_id)
        ret = self._ioctl_raw("VFIO_DEVICE_ATTACH_IOMMUFD_PT", request)
        return ret if ret < 0 else int(request.pt_id)

    def detach_ioas(self) -> None:
        """VFIO_DEVICE_DETACH_IOMMUFD_PT: leave the attached address space (DMA is blocked)."""
        self._ioctl("VFIO_DEVICE_DETACH_IOMMUFD_PT", uapi.new("vfio_device_detach_iommufd_pt"))

    def raw_detach_ioas(self, flags: int = 0) -> int:
        """VFIO_DEVICE_DETACH_IOMMUFD_PT returning 0 or ``-errno``."""
        request = uapi.new("vfio_device_detach_iommufd_pt", flags=flags)
        return self._ioctl_raw("VFIO_DEVICE_DETACH_IOMMUFD_PT", request)
