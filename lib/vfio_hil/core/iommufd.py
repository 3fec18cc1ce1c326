"""iommufd: /dev/iommu and its IO address spaces (IOAS), the successor of the VFIO container.

Devices join an IOAS through their VFIO cdev (``/dev/vfio/devices/vfioN``): see
:meth:`Device.bind_iommufd <vfio_hil.core.device.Device.bind_iommufd>` and
:meth:`Device.attach_ioas <vfio_hil.core.device.Device.attach_ioas>`.
"""

from __future__ import annotations

import errno
from typing import Any, List, Optional, Sequence, Tuple

from . import uapi
from .handle import Handle, Owned, Registry, checked, open_node
from .iova import IOVA_END, IovaRange

IOMMUFD_PATH = "/dev/iommu"
# Packed requests, as for the container's map and unmap (see uapi.PACKED).
_IOAS_MAP = uapi.PACKED["IOMMU_IOAS_MAP"].layout
_IOAS_UNMAP = uapi.PACKED["IOMMU_IOAS_UNMAP"].layout


def map_flags(iova: Optional[int], readable: bool, writable: bool) -> int:
    return (
        (uapi.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0)
        | (uapi.IOMMU_IOAS_MAP_READABLE if readable else 0)
        | (uapi.IOMMU_IOAS_MAP_WRITEABLE if writable else 0)
    )


class Iommufd(Handle):
    """An open ``/dev/iommu``. Closing it frees every object (IOAS, device binding) in it."""

    def __init__(
        self, path: str = IOMMUFD_PATH, *, ioctl_fn: uapi.IoctlFn = uapi.ioctl_raw
    ) -> None:
        super().__init__(open_node(path, "iommufd"), "iommufd", ioctl_fn)
        self._ioas: Registry[Ioas] = Registry()
        self._requests = uapi.RequestBuffers()

    def _release(self) -> None:
        # The kernel frees the objects with the fd; only the Python side needs telling.
        for ioas in self._ioas:
            ioas._owner = None
        self._ioas.clear()

    def alloc_ioas(self) -> Ioas:
        """IOMMU_IOAS_ALLOC: a new, empty IO address space."""
        alloc = uapi.new("iommu_ioas_alloc")
        self._ioctl("IOMMU_IOAS_ALLOC", alloc)
        ioas = Ioas(self, int(alloc.out_ioas_id))
        self._ioas.add(ioas)
        return ioas

    def raw_alloc_ioas(self, flags: int = 0) -> int:
        """IOMMU_IOAS_ALLOC returning the new IOAS id or ``-errno``.

        The id is not wrapped in an :class:`Ioas`; it lives until :meth:`destroy` or close.
        """
        alloc = uapi.new("iommu_ioas_alloc", flags=flags)
        ret = self._ioctl_raw("IOMMU_IOAS_ALLOC", alloc)
        return ret if ret < 0 else int(alloc.out_ioas_id)

    def destroy(self, object_id: int) -> None:
        """IOMMU_DESTROY: free the object (IOAS, HWPT...) with this id."""
        self._ioctl("IOMMU_DESTROY", uapi.new("iommu_destroy", id=object_id), id=object_id)

    def raw_destroy(self, object_id: int) -> int:
        """IOMMU_DESTROY returning 0 or ``-errno``."""
        return self._ioctl_raw("IOMMU_DESTROY", uapi.new("iommu_destroy", id=object_id))


class Ioas(Owned[Iommufd]):
    """An IO address space of an :class:`Iommufd`; :meth:`close` destroys it (closing the
    iommufd frees it too).

    Strict methods raise :class:`~vfio_hil.core.errors.VfioError` naming the IOAS, ``raw_``
    ones return ``-errno``.
    """

    _registry = "_ioas"

    def __init__(self, iommufd: Iommufd, ioas_id: int) -> None:
        super().__init__(iommufd)
        self.id = ioas_id
        self.target = f"iommufd IOAS {ioas_id}"

    def _raw(self, name: str, arg: Any) -> int:
        return self._live_owner()._ioctl_raw(name, arg)

    def _strict(self, name: str, arg: Any, **arguments: Any) -> int:
        return checked(self._raw(name, arg), name, self.target, arguments)

    def _map(self, vaddr: int, size: int, iova: Optional[int], flags: int) -> bytearray:
        request = self._live_owner()._requests.IOMMU_IOAS_MAP
        _IOAS_MAP.pack_into(request, 0, _IOAS_MAP.size, flags, self.id, 0, vaddr, size, iova or 0)
        return request

    def _unmap(self, iova: int, size: int) -> bytearray:
        request = self._live_owner()._requests.IOMMU_IOAS_UNMAP
        _IOAS_UNMAP.pack_into(request, 0, _IOAS_UNMAP.size, self.id, iova, size)
        return request

    def map(
        self,
        vaddr: int,
        size: int,
        iova: Optional[int] = None,
        readable: bool = True,
        writable: bool = True,
    ) -> int:
        """IOMMU_IOAS_MAP ``size`` bytes at ``vaddr``; return the IOVA.

        With ``iova`` the mapping is placed there (IOMMU_IOAS_MAP_FIXED_IOVA), otherwise the
        kernel picks the IOVA.
        """
        flags = map_flags(iova, readable, writable)
        request = self._map(vaddr, size, iova, flags)
        self._strict("IOMMU_IOAS_MAP", request, vaddr=vaddr, size=size, iova=iova, flags=flags)
        return _IOAS_MAP.unpack_from(request)[6]  # iova

    def raw_map(self, vaddr: int, size: int, iova: Optional[int], flags: int) -> int:
        """IOMMU_IOAS_MAP with explicit flags, returning the IOVA or ``-errno``."""
        request = self._map(vaddr, size, iova, flags)
        ret = self._raw("IOMMU_IOAS_MAP", request)
        return ret if ret < 0 else _IOAS_MAP.unpack_from(request)[6]  # iova

    def unmap(self, iova: int, size: int) -> int:
        """IOMMU_IOAS_UNMAP; return the number of bytes unmapped."""
        request = self._unmap(iova, size)
        self._strict("IOMMU_IOAS_UNMAP", request, iova=iova, size=size)
        return _IOAS_UNMAP.unpack_from(request)[3]  # length

    def raw_unmap(self, iova: int, size: int) -> int:
        """IOMMU_IOAS_UNMAP returning the bytes unmapped or ``-errno``."""
        request = self._unmap(iova, size)
        ret = self._raw("IOMMU_IOAS_UNMAP", request)
        return ret if ret < 0 else _IOAS_UNMAP.unpack_from(request)[3]  # length

    def unmap_all(self) -> int:
        """Unmap everything (the range 0..U64_MAX); return the bytes unmapped."""
        return self.unmap(0, IOVA_END - 1)

    def _copy(self, source: Ioas, src_iova: int, size: int, iova: Optional[int], flags: int) -> Any:
        return uapi.new(
            "iommu_ioas_copy",
            flags=flags,
            dst_ioas_id=self.id,
            src_ioas_id=source.id,
            length=size,
            dst_iova=iova or 0,
            src_iova=src_iova,
        )

    def copy_from(
        self,
        source: Ioas,
        src_iova: int,
        size: int,
        iova: Optional[int] = None,
        readable: bool = True,
        writable: bool = True,
    ) -> int:
        """IOMMU_IOAS_COPY: map here the pages ``source`` maps at ``src_iova``; return the
        IOVA in this IOAS (fixed when ``iova`` is given)."""
        request = self._copy(source, src_iova, size, iova, map_flags(iova, readable, writable))
        self._strict(
            "IOMMU_IOAS_COPY", request, source=source.id, src_iova=src_iova, size=size, iova=iova
        )
        return int(request.dst_iova)

    def raw_copy_from(
        self, source: Ioas, src_iova: int, size: int, iova: Optional[int], flags: int
    ) -> int:
        """IOMMU_IOAS_COPY with explicit flags, returning the IOVA or ``-errno``."""
        request = self._copy(source, src_iova, size, iova, flags)
        ret = self._raw("IOMMU_IOAS_COPY", request)
        return ret if ret < 0 else int(request.dst_iova)

    def iova_ranges(self) -> Tuple[List[IovaRange], int]:
        """IOMMU_IOAS_IOVA_RANGES: the allowed IOVA ranges and the required IOVA alignment.

        The ranges narrow as devices attach; ask again after attaching.
        """
        capacity = 8
        while True:
            ranges = uapi.ffi.new("struct iommu_iova_range[]", capacity)
            request = uapi.new(
                "iommu_ioas_iova_ranges",
                ioas_id=self.id,
                num_iovas=capacity,
                allowed_iovas=int(uapi.ffi.cast("uintptr_t", ranges)),
            )
            ret = self._raw("IOMMU_IOAS_IOVA_RANGES", request)
            if ret == -errno.EMSGSIZE and request.num_iovas > capacity:
                # The kernel wrote back how many ranges there are: retry with room for all.
                capacity = int(request.num_iovas)
                continue
            checked(ret, "IOMMU_IOAS_IOVA_RANGES", self.target, {"num_iovas": capacity})
            found = [
                IovaRange(int(r.start), int(r.last))
                for r in (ranges[i] for i in range(request.num_iovas))
            ]
            return found, int(request.out_iova_alignment)

    def raw_iova_ranges(self, num_iovas: int) -> int:
        """IOMMU_IOAS_IOVA_RANGES with room for ``num_iovas`` ranges; returns 0 or ``-errno``
        (``-EMSGSIZE`` when there are more ranges than that)."""
        ranges = uapi.ffi.new("struct iommu_iova_range[]", max(num_iovas, 1))
        request = uapi.new(
            "iommu_ioas_iova_ranges",
            ioas_id=self.id,
            num_iovas=num_iovas,
            allowed_iovas=int(uapi.ffi.cast("uintptr_t", ranges)),
        )
        return self._raw("IOMMU_IOAS_IOVA_RANGES", request)

    @staticmethod
    def _allow(ioas_id: int, ranges: Sequence[IovaRange]) -> Tuple[Any, Any]:
        array = uapi.ffi.new("struct iommu_iova_range[]", max(len(ranges), 1))
        for i, r in enumerate(ranges):
            array[i].start, array[i].last = r
        request = uapi.new(
            "iommu_ioas_allow_iovas",
            ioas_id=ioas_id,
            num_iovas=len(ranges),
            allowed_iovas=int(uapi.ffi.cast("uintptr_t", array)),
        )
        # The array must outlive the ioctl: hand it back with the request.
        return request, array

    def allow_iovas(self, ranges: Sequence[IovaRange]) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: guarantee ``ranges`` stay usable (replaces the list)."""
        request, _array = self._allow(self.id, ranges)
        self._strict("IOMMU_IOAS_ALLOW_IOVAS", request, ranges=[tuple(r) for r in ranges])

    def raw_allow_iovas(self, ranges: Sequence[IovaRange]) -> int:
        """IOMMU_IOAS_ALLOW_IOVAS returning 0 or ``-errno``."""
        request, _array = self._allow(self.id, ranges)
        return self._raw("IOMMU_IOAS_ALLOW_IOVAS", request)

    def _teardown(self, iommufd: Iommufd) -> None:
        iommufd.destroy(self.id)

    def __repr__(self) -> str:
        return f"<Ioas {self.id}{' closed' if self.closed else ''}>"
