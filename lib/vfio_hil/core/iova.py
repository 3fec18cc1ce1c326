"""IOVA ranges and an allocator that hands out IOVAs only inside the ranges the IOMMU allows."""

from __future__ import annotations

import bisect
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

    It keeps the free holes, in address order: an allocation looks at holes, not at the
    allocations before it, so mapping tens of thousands of buffers stays linear.
    """

    def __init__(self, ranges: Iterable[IovaRange], alignment: int = mmap.PAGESIZE) -> None:
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"IOVA alignment must be a power of two, not {alignment}")
        self.ranges = sorted(IovaRange(*r) for r in ranges)
        if not self.ranges:
            raise ValueError("an IOVA allocator needs at least one allowed range")
        for before, after in zip(self.ranges, self.ranges[1:]):
            if after.start <= before.last:
                raise ValueError(f"IOVA ranges {before} and {after} overlap")
        self.alignment = alignment
        self._used: Dict[int, int] = {}
        # The free holes: first and last IOVA of each, in address order, never spanning two
        # ranges (a hole does not merge across the start of a range).
        self._hole_starts = [r.start for r in self.ranges]
        self._hole_lasts = [r.last for r in self.ranges]
        self._range_starts = frozenset(self._hole_starts)

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

    def _take(self, hole: int, iova: int, size: int) -> None:
        """Allocate ``[iova, iova+size)`` out of hole number ``hole``, which holds it."""
        starts, lasts = self._hole_starts, self._hole_lasts
        end, last = iova + size, lasts[hole]
        if starts[hole] < iova:
            lasts[hole] = iova - 1  # the part before stays a hole
            if end <= last:  # and so does the part after
                starts.insert(hole + 1, end)
                lasts.insert(hole + 1, last)
        elif end <= last:
            starts[hole] = end
        else:
            del starts[hole], lasts[hole]
        self._used[iova] = size

    def alloc(self, size: int, align: Optional[int] = None, limit: int = IOVA_END) -> int:
        """Return a free IOVA for ``size`` bytes, aligned to ``align`` (default: the allocator
        alignment), ending at or below ``limit`` (exclusive; e.g. a device's DMA mask).

        Raises :class:`IovaExhaustedError` if no allowed range has such a hole.
        """
        size = self._round(size)
        align = max(align or self.alignment, self.alignment)
        highest = limit - 1
        for hole, (first, last) in enumerate(zip(self._hole_starts, self._hole_lasts)):
            candidate = -(-first // align) * align  # aligned up
            end = candidate + size - 1
            if end > highest:
                break
            if end <= last:
                self._take(hole, candidate, size)
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
        hole = bisect.bisect_right(self._hole_starts, iova) - 1
        if hole < 0 or self._hole_lasts[hole] < iova + size - 1:
            raise ValueError(
                f"IOVA range {iova:#x}+{size:#x} overlaps the allocation at "
                f"{self._overlapping(iova, size):#x}"
            )
        self._take(hole, iova, size)

    def free(self, iova: int) -> None:
        """Release the allocation (or reservation) starting at ``iova``."""
        size = self._used.pop(iova, None)
        if size is None:
            raise ValueError(f"IOVA {iova:#x} is not allocated")
        first, last = iova, iova + size - 1
        hole = bisect.bisect_left(self._hole_starts, iova)
        # Merge with the holes either side when they touch and lie in the same range.
        after = last + 1
        if (
            hole < len(self._hole_starts)
            and self._hole_starts[hole] == after
            and after not in self._range_starts
        ):
            last = self._hole_lasts[hole]
            del self._hole_starts[hole], self._hole_lasts[hole]
        if hole > 0 and self._hole_lasts[hole - 1] == first - 1 and first not in self._range_starts:
            hole -= 1
            first = self._hole_starts[hole]
            del self._hole_starts[hole], self._hole_lasts[hole]
        self._hole_starts.insert(hole, first)
        self._hole_lasts.insert(hole, last)

    @property
    def allocated(self) -> List[IovaRange]:
        """The live allocations, in address order."""
        return [IovaRange(start, start + size - 1) for start, size in sorted(self._used.items())]
