"""The IOVA allocator stays inside the allowed ranges, honours alignment and limits, and
refuses overlaps."""

from __future__ import annotations

import random
from typing import List, Optional

import pytest

from vfio_hil.core import IovaAllocator, IovaExhaustedError, IovaRange

# Like x86 under VT-d: everything below 4 GiB except the MSI window, and more above it.
RANGES = [IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << 39) - 1)]
MiB = 1 << 20


def test_first_fit_and_reuse() -> None:
    alloc = IovaAllocator(RANGES)
    a, b, c = alloc.alloc(4096), alloc.alloc(1), alloc.alloc(8192)
    assert (a, b, c) == (0, 0x1000, 0x2000)  # sizes round up to the alignment
    alloc.free(b)
    assert alloc.alloc(4096) == 0x1000
    assert alloc.allocated == [
        IovaRange(0, 0xFFF),
        IovaRange(0x1000, 0x1FFF),
        IovaRange(0x2000, 0x3FFF),
    ]


def test_alignment() -> None:
    alloc = IovaAllocator(RANGES)
    alloc.alloc(4096)
    assert alloc.alloc(2 * MiB, align=2 * MiB) == 2 * MiB
    assert alloc.alloc(4096, align=1 << 30) == 1 << 30
    with pytest.raises(ValueError, match="power of two"):
        IovaAllocator(RANGES, alignment=3000)


def test_an_allocation_never_straddles_the_hole() -> None:
    alloc = IovaAllocator(RANGES)
    alloc.reserve(0, 0xFED00000)
    # 2 MiB do not fit in the 1 MiB left below the MSI window: the next range is used.
    assert alloc.alloc(2 * MiB) == 0xFEF00000
    assert alloc.alloc(1 * MiB) == 0xFED00000


def test_limit() -> None:
    alloc = IovaAllocator(RANGES)
    iovas = [alloc.alloc(64 * MiB, limit=1 << 28) for _ in range(4)]
    assert iovas == [0, 64 * MiB, 128 * MiB, 192 * MiB]
    with pytest.raises(IovaExhaustedError, match="below 0x10000000"):
        alloc.alloc(4096, limit=1 << 28)
    assert alloc.alloc(4096) == 256 * MiB


def test_exhaustion() -> None:
    alloc = IovaAllocator([IovaRange(0x10000, 0x1FFFF)])
    assert alloc.alloc(0x10000) == 0x10000
    with pytest.raises(IovaExhaustedError, match="1 allocations live"):
        alloc.alloc(4096)
    with pytest.raises(IovaExhaustedError):
        IovaAllocator([IovaRange(0, 0xFFF)]).alloc(8192)


def test_reserve_checks() -> None:
    alloc = IovaAllocator(RANGES)
    alloc.reserve(0x100000, 8192)
    with pytest.raises(ValueError, match="overlaps the allocation at 0x100000"):
        alloc.reserve(0x101000, 4096)
    with pytest.raises(ValueError, match="outside the allowed ranges"):
        alloc.reserve(0xFEE00000, 4096)
    with pytest.raises(ValueError, match="not aligned"):
        alloc.reserve(0x1001, 4096)
    assert alloc.alloc(0x100000) == 0  # fits below the reservation
    assert alloc.alloc(4096) == 0x102000


def test_bad_arguments() -> None:
    alloc = IovaAllocator(RANGES)
    with pytest.raises(ValueError, match="not allocated"):
        alloc.free(0x5000)
    with pytest.raises(ValueError, match="positive"):
        alloc.alloc(0)
    with pytest.raises(ValueError, match="at least one"):
        IovaAllocator([])
    assert IovaRange(0x1000, 0x1FFF).size == 0x1000


class FirstFit:
    """The reference: first fit by walking every live allocation in address order."""

    def __init__(self, ranges: List[IovaRange], alignment: int = 4096) -> None:
        self.ranges, self.alignment, self.used = ranges, alignment, {}

    def alloc(self, size: int, align: int, limit: int) -> Optional[int]:
        size = -(-size // self.alignment) * self.alignment
        for r in self.ranges:
            candidate = -(-r.start // align) * align
            for start, length in sorted(self.used.items()):
                if start + length > candidate and start < candidate + size:
                    candidate = -(-(start + length) // align) * align
            if candidate + size - 1 <= min(r.last, limit - 1):
                self.used[candidate] = size
                return candidate
        return None


@pytest.mark.parametrize("seed", range(20))
def test_the_hole_list_agrees_with_first_fit(seed: int) -> None:
    # Adjacent ranges too: a freed block must not merge holes across a range start.
    ranges = [
        IovaRange(0x1000, 0x40FFF),
        IovaRange(0x41000, 0x7FFFF),
        IovaRange(0x100000, 0x1FFFFF),
    ]
    rng = random.Random(seed)
    alloc, reference = IovaAllocator(ranges, alignment=4096), FirstFit(ranges)
    for _ in range(400):
        if reference.used and rng.random() < 0.4:
            iova = rng.choice(sorted(reference.used))
            alloc.free(iova)
            del reference.used[iova]
            continue
        size = rng.choice([4096, 8192, 0x3000, 0x10000, 0x42000])
        align = rng.choice([4096, 4096, 0x10000])
        limit = rng.choice([1 << 64, 0x80000])
        expected = reference.alloc(size, align, limit)
        if expected is None:
            with pytest.raises(IovaExhaustedError):
                alloc.alloc(size, align=align, limit=limit)
        else:
            assert alloc.alloc(size, align=align, limit=limit) == expected
        assert alloc.allocated == [
            IovaRange(s, s + n - 1) for s, n in sorted(reference.used.items())
        ]


def test_many_allocations_free_back_to_the_ranges() -> None:
    alloc = IovaAllocator(RANGES)
    iovas = [alloc.alloc(4096) for _ in range(20000)]
    assert iovas == [i * 4096 for i in range(20000)]
    for iova in iovas[::2] + iovas[1::2]:
        alloc.free(iova)
    assert alloc.allocated == []
    # Every hole merged back: the whole first range is one hole again.
    assert alloc.alloc(0xFEE00000) == 0


def test_overlapping_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        IovaAllocator([IovaRange(0, 0x1FFF), IovaRange(0x1000, 0x2FFF)])
