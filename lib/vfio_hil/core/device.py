"""A VFIO device fd: regions (config space, BARs), interrupts and reset."""

from __future__ import annotations

import errno
import mmap
import os
import struct
from types import TracebackType
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Type

from . import uapi
from .errors import VfioError
from .handle import Handle

PCI_COMMAND = 0x04
PCI_COMMAND_MASTER = 1 << 2
# Upper bound only: the kernel rejects accesses beyond the device's real config size.
_PCI_CFG_SPACE_EXP_SIZE = 4096
_CONFIG_WIDTHS = (1, 2, 4)

_PAGE_SIZE = mmap.PAGESIZE
_WIDTHS = (1, 2, 4, 8)
_CTYPES = {1: "uint8_t *", 2: "uint16_t *", 4: "uint32_t *", 8: "uint64_t *"}


class DeviceInfo(NamedTuple):
    """Result of VFIO_DEVICE_GET_INFO."""

    flags: int
    num_regions: int
    num_irqs: int


class RegionInfo(NamedTuple):
    """Result of VFIO_DEVICE_GET_REGION_INFO for one region index."""

    index: int
    flags: int
    size: int
    offset: int

    @property
    def readable(self) -> bool:
        """The region supports read(2)."""
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_READ)

    @property
    def writable(self) -> bool:
        """The region supports write(2)."""
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_WRITE)

    @property
    def mmappable(self) -> bool:
        """The region (or parts of it) supports mmap(2)."""
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP)


class IrqInfo(NamedTuple):
    """Result of VFIO_DEVICE_GET_IRQ_INFO for one IRQ index."""

    index: int
    flags: int
    count: int


def _check_access(offset: int, width: int, size: int) -> None:
    if width not in _WIDTHS:
        raise ValueError(f"access width must be one of {_WIDTHS}, not {width}")
    if offset % width:
        raise ValueError(f"offset {offset:#x} is not aligned to the {width}-byte access")
    if offset < 0 or offset + width > size:
        raise ValueError(f"{width}-byte access at {offset:#x} outside region of size {size:#x}")


def _check_value(value: int, width: int) -> None:
    if not 0 <= value < 1 << (8 * width):
        raise ValueError(f"value {value:#x} does not fit in {width} bytes")


class Bar:
    """Access to one region (normally a PCI BAR) of a device.

    The region is mmap'ed when the kernel allows it; each accessor then performs a single
    load or store of exactly the requested width, as device registers require. Regions
    without the MMAP flag (I/O port BARs, for instance) go through pread/pwrite on the
    device fd instead, which vfio-pci also turns into single accesses of that width.

    Obtained from :meth:`Device.map_bar`; the device unmaps it when it is closed.
    """

    def __init__(self, device: Device, region: RegionInfo) -> None:
        self._device = device
        self.region = region
        self._length = 0
        self._base: Any = None
        self._views: Dict[int, Any] = {}
        if region.mmappable:
            self._map()

    def _map(self) -> None:
        prot = (mmap.PROT_READ if self.region.readable else 0) | (
            mmap.PROT_WRITE if self.region.writable else 0
        )
        length = -(-self.region.size // _PAGE_SIZE) * _PAGE_SIZE
        addr = uapi.libc.mmap(
            uapi.ffi.NULL, length, prot, mmap.MAP_SHARED, self._device.fd, self.region.offset
        )
        if int(uapi.ffi.cast("intptr_t", addr)) == -1:
            raise VfioError(
                uapi.ffi.errno,
                "mmap",
                self._device.target,
                {"index": self.region.index, "length": length},
            )
        self._base, self._length = addr, length
        self._views = {w: uapi.ffi.cast(t, addr) for w, t in _CTYPES.items()}

    @property
    def index(self) -> int:
        """Region index (0-5 for BAR0-5)."""
        return self.region.index

    @property
    def size(self) -> int:
        """Region size in bytes."""
        return self.region.size

    @property
    def mmapped(self) -> bool:
        """True if accesses go through a memory mapping rather than pread/pwrite."""
        return self._base is not None

    @property
    def closed(self) -> bool:
        """True once the BAR (or its device) has been closed."""
        return self._device is None

    def _live_device(self) -> Device:
        if self._device is None:
            raise ValueError(f"BAR{self.region.index} is closed")
        return self._device

    def read(self, offset: int, width: int) -> int:
        """Read a ``width``-byte little-endian register at ``offset``."""
        device = self._live_device()
        _check_access(offset, width, self.region.size)
        if self._base is not None:
            return int(self._views[width][offset // width])
        return device._pread(self.region.offset + offset, width, index=self.region.index)

    def write(self, offset: int, value: int, width: int) -> None:
        """Write a ``width``-byte little-endian register at ``offset``."""
        device = self._live_device()
        _check_access(offset, width, self.region.size)
        _check_value(value, width)
        if self._base is not None:
            self._views[width][offset // width] = value
        else:
            device._pwrite(self.region.offset + offset, value, width, index=self.region.index)

    def read8(self, offset: int) -> int:
        """Read one byte."""
        return self.read(offset, 1)

    def read16(self, offset: int) -> int:
        """Read a 16-bit register."""
        return self.read(offset, 2)

    def read32(self, offset: int) -> int:
        """Read a 32-bit register."""
        return self.read(offset, 4)

    def read64(self, offset: int) -> int:
        """Read a 64-bit register."""
        return self.read(offset, 8)

    def write8(self, offset: int, value: int) -> None:
        """Write one byte."""
        self.write(offset, value, 1)

    def write16(self, offset: int, value: int) -> None:
        """Write a 16-bit register."""
        self.write(offset, value, 2)

    def write32(self, offset: int, value: int) -> None:
        """Write a 32-bit register."""
        self.write(offset, value, 4)

    def write64(self, offset: int, value: int) -> None:
        """Write a 64-bit register."""
        self.write(offset, value, 8)

    def close(self) -> None:
        """Unmap the region. Idempotent; the device fd stays open."""
        device, self._device = self._device, None
        if device is None:
            return
        device._bars.remove(self)
        if self._base is not None:
            base, self._base, self._views = self._base, None, {}
            if uapi.libc.munmap(base, self._length) != 0:
                raise VfioError(uapi.ffi.errno, "munmap", device.target, {"index": self.index})

    def __enter__(self) -> Bar:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        how = "mmap" if self.mmapped else "pread/pwrite"
        return f"<Bar {self.region.index} size={self.region.size:#x} {how}>"


class Device(Handle):
    """An open VFIO device; normally obtained from :meth:`Group.device`.

    Owns the device fd and every :class:`Bar` mapped from it.
    """

    def __init__(self, fd: int, bdf: str) -> None:
        super().__init__(fd, f"device {bdf}")
        self.bdf = bdf
        self._bars: List[Bar] = []
        self._config_offset: Optional[int] = None

    def _release(self) -> None:
        while self._bars:
            self._bars[-1].close()

    def info(self) -> DeviceInfo:
        """VFIO_DEVICE_GET_INFO: device flags and the number of regions and IRQ indices."""
        info = uapi.new("vfio_device_info")
        self._ioctl("VFIO_DEVICE_GET_INFO", info)
        return DeviceInfo(int(info.flags), int(info.num_regions), int(info.num_irqs))

    def region_info(self, index: int) -> RegionInfo:
        """VFIO_DEVICE_GET_REGION_INFO for region ``index`` (see ``VFIO_PCI_*_REGION_INDEX``)."""
        info = uapi.new("vfio_region_info", index=index)
        self._ioctl("VFIO_DEVICE_GET_REGION_INFO", info, index=index)
        return RegionInfo(index, int(info.flags), int(info.size), int(info.offset))

    def irq_info(self, index: int) -> IrqInfo:
        """VFIO_DEVICE_GET_IRQ_INFO for IRQ ``index`` (see ``VFIO_PCI_*_IRQ_INDEX``)."""
        info = uapi.new("vfio_irq_info", index=index)
        self._ioctl("VFIO_DEVICE_GET_IRQ_INFO", info, index=index)
        return IrqInfo(index, int(info.flags), int(info.count))

    def _pread(self, offset: int, width: int, **arguments: Any) -> int:
        where = {**arguments, "offset": offset, "width": width}
        try:
            data = os.pread(self.fd, width, offset)
        except OSError as e:
            raise VfioError(e.errno, "pread", self.target, where) from None
        if len(data) != width:
            # vfio-pci never returns a short read for an in-range access; report it as EIO.
            raise VfioError(errno.EIO, "pread", self.target, where)
        return int.from_bytes(data, "little")

    def _pwrite(self, offset: int, value: int, width: int, **arguments: Any) -> None:
        where = {**arguments, "offset": offset, "width": width, "value": value}
        try:
            written = os.pwrite(self.fd, value.to_bytes(width, "little"), offset)
        except OSError as e:
            raise VfioError(e.errno, "pwrite", self.target, where) from None
        if written != width:
            raise VfioError(errno.EIO, "pwrite", self.target, where)

    def _config_base(self) -> int:
        if self._config_offset is None:
            self._config_offset = self.region_info(uapi.VFIO_PCI_CONFIG_REGION_INDEX).offset
        return self._config_offset

    @staticmethod
    def _check_config_access(offset: int, width: int) -> None:
        if width not in _CONFIG_WIDTHS:
            raise ValueError(f"config access width must be one of {_CONFIG_WIDTHS}, not {width}")
        _check_access(offset, width, _PCI_CFG_SPACE_EXP_SIZE)

    def config_read(self, offset: int, width: int = 4) -> int:
        """Read ``width`` (1, 2 or 4) bytes of PCI config space at ``offset``."""
        self._check_config_access(offset, width)
        return self._pread(self._config_base() + offset, width, region="config")

    def config_write(self, offset: int, value: int, width: int = 4) -> None:
        """Write ``width`` (1, 2 or 4) bytes of PCI config space at ``offset``."""
        self._check_config_access(offset, width)
        _check_value(value, width)
        self._pwrite(self._config_base() + offset, value, width, region="config")

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
        self._bars.append(bar)
        return bar

    @staticmethod
    def _irq_set(index: int, flags: int, start: int, count: int, data: bytes) -> Any:
        irq_set = uapi.ffi.new("struct vfio_irq_set *", {"data": len(data)})
        irq_set.argsz = uapi.ffi.sizeof(irq_set[0])
        irq_set.flags = flags
        irq_set.index = index
        irq_set.start = start
        irq_set.count = count
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
            struct.pack(f"={len(fds)}i", *fds),
        )

    def disable_irqs(self, index: int) -> None:
        """Tear down every trigger of IRQ ``index`` (and disable MSI/MSI-X)."""
        self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER)

    def reset(self) -> None:
        """VFIO_DEVICE_RESET (function-level reset)."""
        self._ioctl("VFIO_DEVICE_RESET")

    def raw_reset(self) -> int:
        """VFIO_DEVICE_RESET returning 0 or ``-errno``."""
        return self._ioctl_raw("VFIO_DEVICE_RESET")
