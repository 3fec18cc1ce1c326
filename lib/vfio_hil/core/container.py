"""The VFIO container: /dev/vfio/vfio, the legacy IOMMU context that groups are attached to."""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from . import caps, uapi
from .errors import VfioApiVersionError
from .handle import Handle, open_node
from .iova import IOVA_END, IovaRange

CONTAINER_PATH = "/dev/vfio/vfio"
# Map and unmap are the hot path (see benchmarks/): packed requests, see uapi.PACKED.
_DMA_MAP = uapi.PACKED["VFIO_IOMMU_MAP_DMA"].layout
_DMA_UNMAP = uapi.PACKED["VFIO_IOMMU_UNMAP_DMA"].layout
_DMA_MAP_SIZE, _DMA_UNMAP_SIZE = _DMA_MAP.size, _DMA_UNMAP.size
_READ, _WRITE = uapi.VFIO_DMA_MAP_FLAG_READ, uapi.VFIO_DMA_MAP_FLAG_WRITE

#: Extensions a container may report, by their name in ``linux/vfio.h``.
EXTENSIONS: Dict[str, int] = {
    name: getattr(uapi, name)
    for name in (
        "VFIO_TYPE1_IOMMU",
        "VFIO_SPAPR_TCE_IOMMU",
        "VFIO_TYPE1v2_IOMMU",
        "VFIO_DMA_CC_IOMMU",
        "VFIO_EEH",
        "VFIO_TYPE1_NESTING_IOMMU",
        "VFIO_SPAPR_TCE_v2_IOMMU",
        "VFIO_NOIOMMU_IOMMU",
        "VFIO_UNMAP_ALL",
        "VFIO_UPDATE_VADDR",
    )
}


class MigrationCap(NamedTuple):
    """VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: dirty page tracking support."""

    flags: int
    pgsize_bitmap: int
    max_dirty_bitmap_size: int


class IommuInfo(NamedTuple):
    """Result of VFIO_IOMMU_GET_INFO, capability chain decoded.

    ``iova_ranges`` is empty and ``dma_avail``/``migration`` are None when the kernel does
    not report that capability; ``caps`` lists every capability found, known or not.
    """

    flags: int
    iova_pgsizes: int
    iova_ranges: List[IovaRange]
    dma_avail: Optional[int]
    migration: Optional[MigrationCap]
    caps: Tuple[caps.InfoCap, ...]


def parse_iommu_info(buf: bytes) -> IommuInfo:
    """Decode a ``struct vfio_iommu_type1_info`` buffer and its capability chain.

    Raises :class:`~vfio_hil.core.errors.CapabilityChainError` for a malformed chain.
    """
    what = "VFIO_IOMMU_GET_INFO"
    fixed = uapi.ffi.sizeof("struct vfio_iommu_type1_info")
    if len(buf) < fixed:
        raise ValueError(f"{what}: {len(buf)}-byte buffer is shorter than the {fixed}-byte info")
    info = uapi.ffi.from_buffer("struct vfio_iommu_type1_info *", buf)
    chain: List[caps.InfoCap] = []
    if info.flags & uapi.VFIO_IOMMU_INFO_CAPS:
        chain = caps.walk(buf, int(info.cap_offset), fixed, what)
    ranges: List[IovaRange] = []
    dma_avail = None
    migration = None
    for cap in chain:
        if cap.id == uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            cap_ranges = caps.view(
                buf, cap, "vfio_iommu_type1_info_cap_iova_range", what, "nr_iovas"
            )
            ranges = [
                IovaRange(int(r.start), int(r.end))
                for r in (cap_ranges.iova_ranges[i] for i in range(cap_ranges.nr_iovas))
            ]
        elif cap.id == uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
            dma_avail = int(caps.view(buf, cap, "vfio_iommu_type1_info_dma_avail", what).avail)
        elif cap.id == uapi.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
            mig = caps.view(buf, cap, "vfio_iommu_type1_info_cap_migration", what)
            migration = MigrationCap(
                int(mig.flags), int(mig.pgsize_bitmap), int(mig.max_dirty_bitmap_size)
            )
    return IommuInfo(
        int(info.flags), int(info.iova_pgsizes), ranges, dma_avail, migration, tuple(chain)
    )


class Container(Handle):
    """An open VFIO container.

    Owns only its own fd: groups attached to it stay open (and keep the kernel-side container
    alive) until they are closed themselves. Every ioctl has a strict method, raising
    :class:`~vfio_hil.core.errors.VfioError`, and a ``raw_`` one returning ``-errno``.
    """

    def __init__(
        self, path: str = CONTAINER_PATH, *, ioctl_fn: uapi.IoctlFn = uapi.ioctl_raw
    ) -> None:
        super().__init__(open_node(path, "container"), "container", ioctl_fn)
        #: The IOMMU model selected by :meth:`set_iommu`, None until then.
        self.iommu_type: Optional[int] = None
        self._requests = uapi.RequestBuffers()
        try:
            self.api_version = self._ioctl("VFIO_GET_API_VERSION")
            if self.api_version != uapi.VFIO_API_VERSION:
                raise VfioApiVersionError(self.api_version, uapi.VFIO_API_VERSION)
        except BaseException:
            self.close()
            raise

    def raw_get_api_version(self) -> int:
        """VFIO_GET_API_VERSION returning the version or ``-errno``."""
        return self._ioctl_raw("VFIO_GET_API_VERSION")

    def check_extension(self, extension: int) -> bool:
        """Return whether the kernel supports ``extension`` (e.g. ``VFIO_TYPE1v2_IOMMU``)."""
        return self._ioctl("VFIO_CHECK_EXTENSION", extension, extension=extension) > 0

    def raw_check_extension(self, extension: int) -> int:
        """VFIO_CHECK_EXTENSION returning the kernel's answer (>0: supported) or ``-errno``."""
        return self._ioctl_raw("VFIO_CHECK_EXTENSION", extension)

    def extensions(self) -> Dict[str, bool]:
        """Every extension of :data:`EXTENSIONS` and whether the kernel supports it."""
        return {name: self.check_extension(value) for name, value in EXTENSIONS.items()}

    def set_iommu(self, iommu_type: int = uapi.VFIO_TYPE1v2_IOMMU) -> None:
        """Select the IOMMU model; needs at least one group attached."""
        self._ioctl("VFIO_SET_IOMMU", iommu_type, iommu_type=iommu_type)
        self.iommu_type = iommu_type

    def raw_set_iommu(self, iommu_type: int) -> int:
        """VFIO_SET_IOMMU returning 0 or ``-errno``."""
        ret = self._ioctl_raw("VFIO_SET_IOMMU", iommu_type)
        if ret == 0:
            self.iommu_type = iommu_type
        return ret

    def info(self) -> IommuInfo:
        """VFIO_IOMMU_GET_INFO with its capability chain (IOVA ranges, DMA mappings left,
        dirty tracking)."""
        return parse_iommu_info(self._info("VFIO_IOMMU_GET_INFO", "vfio_iommu_type1_info"))

    def raw_info(self, argsz: Optional[int] = None) -> int:
        """VFIO_IOMMU_GET_INFO (``argsz`` overridable) returning 0 or ``-errno``."""
        info = uapi.new("vfio_iommu_type1_info")
        if argsz is not None:
            info.argsz = argsz
        return self._ioctl_raw("VFIO_IOMMU_GET_INFO", info)

    def iova_ranges(self) -> List[IovaRange]:
        """The IOVA ranges DMA may be mapped in.

        Kernels before 5.4 do not report ranges; the whole 64-bit space is returned then.
        """
        return self.info().iova_ranges or [IovaRange(0, IOVA_END - 1)]

    def _dma_map(self, vaddr: int, iova: int, size: int, flags: int) -> bytearray:
        request = self._requests.VFIO_IOMMU_MAP_DMA
        _DMA_MAP.pack_into(request, 0, _DMA_MAP_SIZE, flags, vaddr, iova, size)
        return request

    def map_dma(
        self,
        vaddr: int,
        iova: int,
        size: int,
        readable: bool = True,
        writable: bool = True,
    ) -> None:
        """Map ``size`` bytes of this process's memory at ``vaddr`` to ``iova``.

        ``readable``/``writable`` are from the device's point of view.
        """
        # Hot path (see benchmarks/): packing inlined, the fd used without the property's
        # closed check, the error report only built when the kernel refuses.
        flags = (_READ if readable else 0) | (_WRITE if writable else 0)
        request = self._requests.VFIO_IOMMU_MAP_DMA
        _DMA_MAP.pack_into(request, 0, _DMA_MAP_SIZE, flags, vaddr, iova, size)
        ret = self._ioctl_fn(self._fd, "VFIO_IOMMU_MAP_DMA", request)
        if ret < 0:
            self._refused(
                -ret, "VFIO_IOMMU_MAP_DMA", vaddr=vaddr, iova=iova, size=size, flags=flags
            )

    def raw_map_dma(
        self,
        vaddr: int,
        iova: int,
        size: int,
        flags: int = _READ | _WRITE,
    ) -> int:
        """VFIO_IOMMU_MAP_DMA with explicit flags, returning 0 or ``-errno``."""
        return self._ioctl_raw("VFIO_IOMMU_MAP_DMA", self._dma_map(vaddr, iova, size, flags))

    def update_vaddr(self, vaddr: int, iova: int, size: int) -> None:
        """Give the mapping at ``iova`` its new process address ``vaddr``.

        Completes :meth:`invalidate_vaddr` (VFIO_UPDATE_VADDR extension): the range must
        match the original mapping exactly.
        """
        flags = uapi.VFIO_DMA_MAP_FLAG_VADDR
        self._ioctl(
            "VFIO_IOMMU_MAP_DMA",
            self._dma_map(vaddr, iova, size, flags),
            vaddr=vaddr,
            iova=iova,
            size=size,
            flags=flags,
        )

    def _dma_unmap(self, iova: int, size: int, flags: int) -> bytearray:
        request = self._requests.VFIO_IOMMU_UNMAP_DMA
        _DMA_UNMAP.pack_into(request, 0, _DMA_UNMAP_SIZE, flags, iova, size)
        return request

    def unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """Unmap the IOVA range; return how many bytes the kernel actually unmapped."""
        # Hot path, as map_dma.
        request = self._requests.VFIO_IOMMU_UNMAP_DMA
        _DMA_UNMAP.pack_into(request, 0, _DMA_UNMAP_SIZE, flags, iova, size)
        ret = self._ioctl_fn(self._fd, "VFIO_IOMMU_UNMAP_DMA", request)
        if ret < 0:
            self._refused(-ret, "VFIO_IOMMU_UNMAP_DMA", iova=iova, size=size, flags=flags)
        return _DMA_UNMAP.unpack_from(request)[3]  # size

    def raw_unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """VFIO_IOMMU_UNMAP_DMA returning the unmapped size or ``-errno``."""
        request = self._dma_unmap(iova, size, flags)
        ret = self._ioctl_raw("VFIO_IOMMU_UNMAP_DMA", request)
        return ret if ret < 0 else _DMA_UNMAP.unpack_from(request)[3]  # size

    def unmap_all(self) -> int:
        """Unmap every mapping (VFIO_DMA_UNMAP_FLAG_ALL); return the bytes unmapped."""
        return self.unmap_dma(0, 0, uapi.VFIO_DMA_UNMAP_FLAG_ALL)

    def invalidate_vaddr(self, iova: int, size: int) -> int:
        """Keep the mapping at ``iova`` but forget its process address (before the memory is
        remapped elsewhere); DMA continues. Return the bytes affected."""
        return self.unmap_dma(iova, size, uapi.VFIO_DMA_UNMAP_FLAG_VADDR)

    @staticmethod
    def _dirty(flags: int, get: Optional[Tuple[int, int, int]] = None) -> Tuple[Any, Any]:
        """A VFIO_IOMMU_DIRTY_PAGES request; with ``get`` = (iova, size, page size) it carries
        a ``vfio_iommu_type1_dirty_bitmap_get`` and a zeroed bitmap (returned too, to keep it
        alive through the ioctl)."""
        if get is None:
            return uapi.new("vfio_iommu_type1_dirty_bitmap", flags=flags), None
        iova, size, page_size = get
        pages = -(-size // page_size)
        words = -(-pages // 64)
        bitmap = uapi.ffi.new("uint64_t[]", max(words, 1))
        request = uapi.new_var(
            "vfio_iommu_type1_dirty_bitmap",
            uapi.ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get"),
            flags=flags,
        )
        query = uapi.ffi.cast("struct vfio_iommu_type1_dirty_bitmap_get *", request.data)
        query.iova, query.size = iova, size
        query.bitmap.pgsize, query.bitmap.size, query.bitmap.data = page_size, words * 8, bitmap
        return request, bitmap

    def set_dirty_tracking(self, enabled: bool) -> None:
        """VFIO_IOMMU_DIRTY_PAGES START (log the pages the device may write from now on) or
        STOP."""
        action = "START" if enabled else "STOP"
        request, _ = self._dirty(getattr(uapi, f"VFIO_IOMMU_DIRTY_PAGES_FLAG_{action}"))
        self._ioctl("VFIO_IOMMU_DIRTY_PAGES", request, flags=action)

    def dirty_pages(self, iova: int, size: int, page_size: int) -> List[int]:
        """VFIO_IOMMU_DIRTY_PAGES GET_BITMAP for a mapped range: the IOVAs of the pages
        (``page_size``: the smallest IOMMU page size) written since the last query."""
        flags = uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP
        request, bitmap = self._dirty(flags, (iova, size, page_size))
        self._ioctl(
            "VFIO_IOMMU_DIRTY_PAGES",
            request,
            flags="GET_BITMAP",
            iova=iova,
            size=size,
            page_size=page_size,
        )
        pages = -(-size // page_size)
        return [iova + i * page_size for i in range(pages) if bitmap[i // 64] >> (i % 64) & 1]

    def raw_dirty_pages(
        self, flags: int, iova: int = 0, size: int = 0, page_size: int = 4096
    ) -> int:
        """VFIO_IOMMU_DIRTY_PAGES with any ``flags`` (a bitmap query is attached when they
        include GET_BITMAP), returning 0 or ``-errno``."""
        get = (
            (iova, size, page_size) if flags & uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP else None
        )
        request, _bitmap = self._dirty(flags, get)
        return self._ioctl_raw("VFIO_IOMMU_DIRTY_PAGES", request)
