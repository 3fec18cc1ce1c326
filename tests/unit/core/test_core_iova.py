"""The IOVA allocator stays inside the allowed ranges, honours alignment and limits, and
refuses overlaps."""

from __future__ import annotations

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
