"""IOVA ranges and an allocator that hands out IOVAs only inside the ranges the IOMMU allows."""

from __future__ import annotations

import mmap
from typing import Dict, Iterable, List, NamedTuple, Optional

from .errors import IovaExhaustedError

#: One past the largest IOVA: IOVAs are 64-bit.
IOVA_END = 1 << 64


class IovaRange(NamedTuple):
    """An allowed IOVA interval; ``last`` is inclusive, as both kernel interfaces report it."""

    start: int
    last: int

    @property
    def size(self) -> int:
        """Number of bytes in the range."""
        return self.last - self.start + 1


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


class IovaAllocator:
    """First-fit allocator over a set of allowed IOVA ranges.

    Allocations are rounded up to ``alignment`` (at least the IOMMU page size) and never
    cross a range boundary, so every IOVA handed out is one the kernel will accept. IOVAs
    mapped at fixed addresses by other means should be :meth:`reserve`-d so the allocator
    does not hand them out again.
    """

    def __init__(self, ranges: Iterable[IovaRange], alignment: int = mmap.PAGESIZE) -> None:
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"IOVA alignment must be a power of two, not {alignment}")
        self.ranges = sorted(IovaRange(*r) for r in ranges)
        if not self.ranges:
            raise ValueError("an IOVA allocator needs at least one allowed range")
        self.alignment = alignment
        self._used: Dict[int, int] = {}

    def _round(self, size: int) -> int:
        if size <= 0:
            raise ValueError(f"IOVA allocation size must be positive, not {size}")
        return _align_up(size, self.alignment)

    def _fits(self, iova: int, size: int) -> bool:
        return any(r.start <= iova and iova + size - 1 <= r.last for r in self.ranges)

    def _overlapping(self, iova: int, size: int) -> Optional[int]:
        """Start of an allocation overlapping ``[iova, iova+size)``, if any."""
        for start, used in self._used.items():
            if start < iova + size and iova < start + used:
                return start
        return None

    def alloc(self, size: int, align: Optional[int] = None, limit: int = IOVA_END) -> int:
        """Return a free IOVA for ``size`` bytes, aligned to ``align`` (default: the allocator
        alignment), ending at or below ``limit`` (exclusive; e.g. a device's DMA mask).

        Raises :class:`IovaExhaustedError` if no allowed range has such a hole.
        """
        size = self._round(size)
        align = max(align or self.alignment, self.alignment)
        used = sorted(self._used.items())
        for r in self.ranges:
            candidate = _align_up(r.start, align)
            for start, length in used:
                if start + length <= candidate:
                    continue
                if start >= candidate + size:
                    break
                candidate = _align_up(start + length, align)
            if candidate + size - 1 <= min(r.last, limit - 1):
                self._used[candidate] = size
                return candidate
        raise IovaExhaustedError(
            f"no free {size:#x}-byte IOVA range aligned to {align:#x} below {limit:#x} "
            f"in {[(hex(r.start), hex(r.last)) for r in self.ranges]} "
            f"({len(self._used)} allocations live)"
        )

    def reserve(self, iova: int, size: int) -> None:
        """Mark ``[iova, iova+size)`` as used; it must be allowed and free."""
        size = self._round(size)
        if iova % self.alignment:
            raise ValueError(f"IOVA {iova:#x} is not aligned to {self.alignment:#x}")
        if not self._fits(iova, size):
            raise ValueError(f"IOVA range {iova:#x}+{size:#x} is outside the allowed ranges")
        clash = self._overlapping(iova, size)
        if clash is not None:
            raise ValueError(
                f"IOVA range {iova:#x}+{size:#x} overlaps the allocation at {clash:#x}"
            )
        self._used[iova] = size

    def free(self, iova: int) -> None:
        """Release the allocation (or reservation) starting at ``iova``."""
        if self._used.pop(iova, None) is None:
            raise ValueError(f"IOVA {iova:#x} is not allocated")

    @property
    def allocated(self) -> List[IovaRange]:
        """The live allocations, in address order."""
        return [IovaRange(start, start + size - 1) for start, size in sorted(self._used.items())]
