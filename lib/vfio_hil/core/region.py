"""Device regions (PCI BARs, ROM, config space): their info and access through mmap or
pread/pwrite."""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple

from . import caps, uapi
from .errors import CapabilityChainError, VfioError
from .handle import Owned

if TYPE_CHECKING:
    from .device import Device

_PAGE_SIZE = mmap.PAGESIZE
WIDTHS = (1, 2, 4, 8)
_CTYPES = {1: "uint8_t *", 2: "uint16_t *", 4: "uint32_t *", 8: "uint64_t *"}


class SparseArea(NamedTuple):
    """An mmap-able area of a region (VFIO_REGION_INFO_CAP_SPARSE_MMAP), region-relative."""

    offset: int
    size: int


class RegionType(NamedTuple):
    """VFIO_REGION_INFO_CAP_TYPE: what a device-specific region is."""

    type: int
    subtype: int

    @property
    def pci_vendor(self) -> Optional[int]:
        """The PCI vendor id for vendor-defined region types, else None."""
        if self.type & uapi.VFIO_REGION_TYPE_PCI_VENDOR_TYPE:
            return self.type & uapi.VFIO_REGION_TYPE_PCI_VENDOR_MASK
        return None


class RegionInfo(NamedTuple):
    """Result of VFIO_DEVICE_GET_REGION_INFO for one region index, capabilities decoded.

    ``sparse_areas`` is None without a sparse-mmap capability (then the whole region is
    mmap-able if ``mmappable``), otherwise the only areas that may be mmap'ed.
    """

    index: int
    flags: int
    size: int
    offset: int
    sparse_areas: Optional[Tuple[SparseArea, ...]] = None
    region_type: Optional[RegionType] = None
    msix_mappable: bool = False
    caps: Tuple[caps.InfoCap, ...] = ()

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

    @property
    def mmap_areas(self) -> List[SparseArea]:
        """The areas that may be mmap'ed: none, the sparse areas, or the whole region."""
        if not self.mmappable or self.size == 0:
            return []
        if self.sparse_areas is None:
            return [SparseArea(0, self.size)]
        return [area for area in self.sparse_areas if area.size]


def parse_region_info(buf: bytes, what: str) -> RegionInfo:
    """Decode a ``struct vfio_region_info`` buffer and its capability chain.

    ``what`` names the buffer in errors. Raises
    :class:`~vfio_hil.core.errors.CapabilityChainError` for a malformed chain and for sparse
    areas that leave the region.
    """
    fixed = uapi.ffi.sizeof("struct vfio_region_info")
    if len(buf) < fixed:
        raise ValueError(f"{what}: {len(buf)}-byte buffer is shorter than the {fixed}-byte info")
    info = uapi.ffi.from_buffer("struct vfio_region_info *", buf)
    size = int(info.size)
    chain: List[caps.InfoCap] = []
    if info.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS:
        chain = caps.walk(buf, int(info.cap_offset), fixed, what)
    sparse = None
    region_type = None
    sparse_cap = caps.find(chain, uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP)
    if sparse_cap is not None:
        cap = caps.view(buf, sparse_cap, "vfio_region_info_cap_sparse_mmap", what, "nr_areas")
        sparse = tuple(
            SparseArea(int(a.offset), int(a.size))
            for a in (cap.areas[i] for i in range(cap.nr_areas))
        )
        for area in sparse:
            if area.offset + area.size > size:
                raise CapabilityChainError(
                    f"{what}: sparse mmap area {area.offset:#x}+{area.size:#x} leaves the "
                    f"{size:#x}-byte region"
                )
    type_cap = caps.find(chain, uapi.VFIO_REGION_INFO_CAP_TYPE)
    if type_cap is not None:
        cap = caps.view(buf, type_cap, "vfio_region_info_cap_type", what)
        region_type = RegionType(int(cap.type), int(cap.subtype))
    return RegionInfo(
        index=int(info.index),
        flags=int(info.flags),
        size=size,
        offset=int(info.offset),
        sparse_areas=sparse,
        region_type=region_type,
        msix_mappable=caps.find(chain, uapi.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE) is not None,
        caps=tuple(chain),
    )


def check_access(offset: int, width: int, size: int) -> None:
    """Raise ValueError unless a ``width``-byte access at ``offset`` is aligned and inside a
    region of ``size`` bytes."""
    if width not in WIDTHS:
        raise ValueError(f"access width must be one of {WIDTHS}, not {width}")
    if offset % width:
        raise ValueError(f"offset {offset:#x} is not aligned to the {width}-byte access")
    if offset < 0 or offset + width > size:
        raise ValueError(f"{width}-byte access at {offset:#x} outside region of size {size:#x}")


def check_value(value: int, width: int) -> None:
    """Raise ValueError unless ``value`` fits in ``width`` bytes."""
    if not 0 <= value < 1 << (8 * width):
        raise ValueError(f"value {value:#x} does not fit in {width} bytes")


class _Window(NamedTuple):
    """One mmap'ed area of a region."""

    start: int
    end: int
    base: Any
    length: int
    views: Dict[int, Any]


class Bar(Owned["Device"]):
    """Access to one region (normally a PCI BAR) of a device.

    The areas the kernel allows are mmap'ed (the whole region, or only the sparse-mmap
    areas); each accessor there performs a single load or store of exactly the requested
    width, as device registers require. Everything else (I/O port BARs, the gaps between
    sparse areas, regions without the MMAP flag) goes through pread/pwrite on the device fd,
    which vfio-pci also turns into accesses of that width.

    Obtained from :meth:`Device.map_bar`; the device unmaps it when it is closed.
    """

    _registry = "_bars"

    def __init__(self, device: Device, region: RegionInfo) -> None:
        super().__init__(device)
        self.region = region
        self._windows: List[_Window] = []
        try:
            for area in region.mmap_areas:
                self._windows.append(self._map(device, area))
        except BaseException:
            self._unmap_all(device)
            raise

    def _map(self, device: Device, area: SparseArea) -> _Window:
        prot = (mmap.PROT_READ if self.region.readable else 0) | (
            mmap.PROT_WRITE if self.region.writable else 0
        )
        length = -(-area.size // _PAGE_SIZE) * _PAGE_SIZE
        addr = uapi.libc.mmap(
            uapi.ffi.NULL,
            length,
            prot,
            mmap.MAP_SHARED,
            device.fd,
            self.region.offset + area.offset,
        )
        if int(uapi.ffi.cast("intptr_t", addr)) == -1:
            raise VfioError(
                uapi.ffi.errno,
                "mmap",
                device.target,
                {"index": self.region.index, "offset": area.offset, "length": length},
            )
        views = {w: uapi.ffi.cast(t, addr) for w, t in _CTYPES.items()}
        return _Window(area.offset, area.offset + area.size, addr, length, views)

    def _unmap_all(self, device: Device) -> None:
        windows, self._windows = self._windows, []
        failed = [w for w in windows if uapi.libc.munmap(w.base, w.length) != 0]
        if failed:
            raise VfioError(
                uapi.ffi.errno,
                "munmap",
                device.target,
                {"index": self.index, "offsets": [w.start for w in failed]},
            )

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
        """True if (some) accesses go through a memory mapping rather than pread/pwrite."""
        return bool(self._windows)

    @property
    def mapped_areas(self) -> List[SparseArea]:
        """The region-relative areas currently mmap'ed."""
        return [SparseArea(w.start, w.end - w.start) for w in self._windows]

    def _window(self, offset: int, width: int) -> Optional[_Window]:
        for w in self._windows:
            if w.start <= offset and offset + width <= w.end:
                return w
        return None

    def address(self, offset: int, width: int = 4) -> Optional[int]:
        """The virtual address of the ``width``-byte register at ``offset`` in this process's
        mapping of the region (for compiled loops); None where the register is not mmap'ed."""
        check_access(offset, width, self.region.size)
        w = self._window(offset, width)
        if w is None:
            return None
        return int(uapi.ffi.cast("uintptr_t", w.base)) + offset - w.start

    @property
    def fd(self) -> int:
        """The device fd the region is read and written through with pread/pwrite."""
        return self._live_owner().fd

    def file_offset(self, offset: int) -> int:
        """Where ``offset`` of the region lies in the device fd (for pread/pwrite)."""
        return self.region.offset + offset

    def read(self, offset: int, width: int) -> int:
        """Read a ``width``-byte little-endian register at ``offset``."""
        device = self._live_owner()
        check_access(offset, width, self.region.size)
        w = self._window(offset, width)
        if w is not None:
            return int(w.views[width][(offset - w.start) // width])
        return device._pread(self.region.offset + offset, width, index=self.region.index)

    def write(self, offset: int, value: int, width: int) -> None:
        """Write a ``width``-byte little-endian register at ``offset``."""
        device = self._live_owner()
        check_access(offset, width, self.region.size)
        check_value(value, width)
        w = self._window(offset, width)
        if w is not None:
            w.views[width][(offset - w.start) // width] = value
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

    def _check_block(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.region.size:
            raise ValueError(
                f"{length}-byte block at {offset:#x} outside region of size {self.region.size:#x}"
            )

    def read_block(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes with one pread; the kernel picks the access widths."""
        device = self._live_owner()
        self._check_block(offset, length)
        return device._pread_bytes(self.region.offset + offset, length, index=self.region.index)

    def write_block(self, offset: int, data: bytes) -> None:
        """Write ``data`` with one pwrite; the kernel picks the access widths."""
        device = self._live_owner()
        self._check_block(offset, len(data))
        device._pwrite_bytes(self.region.offset + offset, data, index=self.region.index)

    def _teardown(self, device: Device) -> None:
        # Closing unmaps the region; the device fd stays open.
        self._unmap_all(device)

    def __repr__(self) -> str:
        how = f"mmap {self.mapped_areas}" if self.mmapped else "pread/pwrite"
        return f"<Bar {self.region.index} size={self.region.size:#x} {how}>"
