"""The VFIO container: /dev/vfio/vfio, the IOMMU context that groups are attached to."""

from __future__ import annotations

from typing import Any, Dict, Iterator, Tuple

from . import uapi
from .errors import VfioApiVersionError
from .handle import Handle, open_node

CONTAINER_PATH = "/dev/vfio/vfio"

# A capability chain longer than this is treated as corrupt rather than followed forever.
_MAX_CAPS = 64


class Container(Handle):
    """An open VFIO container.

    Owns only its own fd: groups attached to it stay open (and keep the kernel-side container
    alive) until they are closed themselves.
    """

    def __init__(self, path: str = CONTAINER_PATH) -> None:
        super().__init__(open_node(path, "container"), "container")
        try:
            self.api_version = self._ioctl("VFIO_GET_API_VERSION")
            if self.api_version != uapi.VFIO_API_VERSION:
                raise VfioApiVersionError(self.api_version, uapi.VFIO_API_VERSION)
        except BaseException:
            self.close()
            raise

    def check_extension(self, extension: int) -> bool:
        """Return whether the kernel supports ``extension`` (e.g. ``VFIO_TYPE1v2_IOMMU``)."""
        return self._ioctl("VFIO_CHECK_EXTENSION", extension, extension=extension) > 0

    def set_iommu(self, iommu_type: int = uapi.VFIO_TYPE1v2_IOMMU) -> None:
        """Select the IOMMU model; needs at least one group attached."""
        self._ioctl("VFIO_SET_IOMMU", iommu_type, iommu_type=iommu_type)

    def raw_set_iommu(self, iommu_type: int) -> int:
        """VFIO_SET_IOMMU returning 0 or ``-errno``."""
        return self._ioctl_raw("VFIO_SET_IOMMU", iommu_type)

    @staticmethod
    def _dma_map(vaddr: int, iova: int, size: int, flags: int) -> Any:
        return uapi.new("vfio_iommu_type1_dma_map", flags=flags, vaddr=vaddr, iova=iova, size=size)

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
        flags = (uapi.VFIO_DMA_MAP_FLAG_READ if readable else 0) | (
            uapi.VFIO_DMA_MAP_FLAG_WRITE if writable else 0
        )
        self._ioctl(
            "VFIO_IOMMU_MAP_DMA",
            self._dma_map(vaddr, iova, size, flags),
            vaddr=vaddr,
            iova=iova,
            size=size,
            flags=flags,
        )

    def raw_map_dma(
        self,
        vaddr: int,
        iova: int,
        size: int,
        flags: int = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE,
    ) -> int:
        """VFIO_IOMMU_MAP_DMA with explicit flags, returning 0 or ``-errno``."""
        return self._ioctl_raw("VFIO_IOMMU_MAP_DMA", self._dma_map(vaddr, iova, size, flags))

    def unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """Unmap the IOVA range; return how many bytes the kernel actually unmapped."""
        unmap = uapi.new("vfio_iommu_type1_dma_unmap", flags=flags, iova=iova, size=size)
        self._ioctl("VFIO_IOMMU_UNMAP_DMA", unmap, iova=iova, size=size, flags=flags)
        return int(unmap.size)

    def raw_unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """VFIO_IOMMU_UNMAP_DMA returning the unmapped size or ``-errno``."""
        unmap = uapi.new("vfio_iommu_type1_dma_unmap", flags=flags, iova=iova, size=size)
        ret = self._ioctl_raw("VFIO_IOMMU_UNMAP_DMA", unmap)
        return ret if ret < 0 else int(unmap.size)

    def info(self) -> Dict[str, Any]:
        """Return the type1 IOMMU info as plain data.

        Keys: ``flags``, ``iova_pgsizes`` (bitmap of supported page sizes), ``iova_ranges``
        (list of inclusive ``[start, end]`` pairs, empty if the kernel does not report them)
        and ``dma_avail`` (remaining number of DMA mappings, or None if not reported).
        """
        info = uapi.new("vfio_iommu_type1_info")
        self._ioctl("VFIO_IOMMU_GET_INFO", info)
        buf = info
        if info.flags & uapi.VFIO_IOMMU_INFO_CAPS and info.argsz > uapi.ffi.sizeof(info[0]):
            # The first call only reports how large a buffer the capability chain needs.
            raw = uapi.ffi.new("uint8_t[]", info.argsz)
            buf = uapi.ffi.cast("struct vfio_iommu_type1_info *", raw)
            buf.argsz = info.argsz
            self._ioctl("VFIO_IOMMU_GET_INFO", buf)
        result: Dict[str, Any] = {
            "flags": int(buf.flags),
            "iova_pgsizes": int(buf.iova_pgsizes),
            "iova_ranges": [],
            "dma_avail": None,
        }
        if not buf.flags & uapi.VFIO_IOMMU_INFO_CAPS:
            return result
        for cap_id, cap in _caps(buf, buf.cap_offset):
            if cap_id == uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                ranges = uapi.ffi.cast("struct vfio_iommu_type1_info_cap_iova_range *", cap)
                result["iova_ranges"] = [
                    [int(ranges.iova_ranges[i].start), int(ranges.iova_ranges[i].end)]
                    for i in range(ranges.nr_iovas)
                ]
            elif cap_id == uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                avail = uapi.ffi.cast("struct vfio_iommu_type1_info_dma_avail *", cap)
                result["dma_avail"] = int(avail.avail)
        return result


def _caps(info: Any, first: int) -> Iterator[Tuple[int, Any]]:
    """Yield ``(id, pointer)`` for each capability of an INFO buffer.

    Offsets in the chain are relative to the start of the buffer; 0 ends the chain.
    """
    base = uapi.ffi.cast("uint8_t *", info)
    limit = int(info.argsz)
    offset = int(first)
    for _ in range(_MAX_CAPS):
        if offset == 0 or offset + uapi.ffi.sizeof("struct vfio_info_cap_header") > limit:
            return
        header = uapi.ffi.cast("struct vfio_info_cap_header *", base + offset)
        yield int(header.id), base + offset
        offset = int(header.next)
