"""VFIO INFO capability chains from canned bytes: the IOMMU info and region info chains the
kernel builds, and malformed chains (loops, offsets out of range, truncated capabilities),
which must give a clear error, never a hang."""

from __future__ import annotations

import struct
from typing import List, Tuple

import pytest

from vfio_hil.core import CapabilityChainError, IovaRange, RegionType, SparseArea, caps, uapi
from vfio_hil.core.container import MigrationCap, parse_iommu_info
from vfio_hil.core.region import parse_region_info

CAPS = uapi.VFIO_IOMMU_INFO_CAPS | uapi.VFIO_IOMMU_INFO_PGSIZES


def _cap(cap_id: int, next_offset: int, body: bytes, version: int = 1) -> bytes:
    return struct.pack("=HHI", cap_id, version, next_offset) + body


def _iommu_info(first: int, chain: bytes, flags: int = CAPS) -> bytes:
    fixed = struct.pack("=IIQI4x", 24 + len(chain), flags, 0x40201000, first)
    return fixed + chain


def _kernel_iommu_info() -> bytes:
    """The chain as Linux 6.1 lays it out: migration at 24, DMA avail at 56, ranges at 68."""
    migration = _cap(2, 56, struct.pack("=I4xQQ", 0, 4096, 1 << 28))
    avail = _cap(3, 68, struct.pack("=I", 65535))
    ranges = _cap(
        1,
        0,
        struct.pack("=II", 2, 0) + struct.pack("=QQQQ", 0, 0xFEDFFFFF, 0xFEF00000, (1 << 39) - 1),
    )
    return _iommu_info(24, migration + avail + ranges)


def test_iommu_info_chain() -> None:
    info = parse_iommu_info(_kernel_iommu_info())
    assert info.iova_pgsizes == 0x40201000
    assert info.iova_ranges == [IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << 39) - 1)]
    assert info.dma_avail == 65535
    assert info.migration == MigrationCap(0, 4096, 1 << 28)
    assert [(c.id, c.offset) for c in info.caps] == [(2, 24), (3, 56), (1, 68)]


def test_iommu_info_without_caps_flag_ignores_the_chain() -> None:
    info = parse_iommu_info(_iommu_info(24, b"\xff" * 16, flags=uapi.VFIO_IOMMU_INFO_PGSIZES))
    assert (info.iova_ranges, info.dma_avail, info.migration, info.caps) == ([], None, None, ())


def test_unknown_capabilities_are_listed_and_skipped() -> None:
    chain = _cap(0x77, 40, b"\x00" * 8) + _cap(3, 0, struct.pack("=I", 12))
    info = parse_iommu_info(_iommu_info(24, chain))
    assert [c.id for c in info.caps] == [0x77, 3]
    assert info.dma_avail == 12


def _loop(at: int) -> bytes:
    """Two capabilities whose second points back at ``at``."""
    return _cap(0x77, 40, b"\x00" * 8) + _cap(0x78, at, b"\x00" * 8)


@pytest.mark.parametrize(
    ("case", "buf", "message"),
    [
        ("loop to the first", _iommu_info(24, _loop(24)), "loops back to offset 0x18"),
        ("self loop", _iommu_info(24, _cap(0x77, 24, b"")), "loops back to offset 0x18"),
        ("next beyond the buffer", _iommu_info(24, _cap(0x77, 4096, b"")), "0x1000 outside"),
        ("first beyond the buffer", _iommu_info(200, b""), "0xc8 outside"),
        ("header cut by the end", _iommu_info(24, _cap(0x77, 30, b"")), "0x1e outside"),
        ("into the fixed part", _iommu_info(24, _cap(0x77, 8, b"")), "0x8 outside"),
        (
            "ranges beyond the buffer",
            _iommu_info(24, _cap(1, 0, struct.pack("=II", 1000, 0))),
            "declares 1000 entries",
        ),
        ("capability cut short", _iommu_info(24, _cap(2, 0, b"\x00" * 4)), "needs 32 bytes"),
    ],
)
def test_malformed_chains_raise(case: str, buf: bytes, message: str) -> None:
    with pytest.raises(CapabilityChainError, match=message):
        parse_iommu_info(buf)


def test_short_buffer_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="shorter than"):
        parse_iommu_info(b"\x00" * 8)


def test_long_chains_end() -> None:
    # 500 chained capabilities, every offset distinct: walked to the end.
    chain = b"".join(_cap(0x77, 24 + 8 * (i + 1) if i < 499 else 0, b"") for i in range(500))
    assert len(caps.walk(_iommu_info(24, chain), 24, 24, "test")) == 500


def _region_info(index: int, flags: int, size: int, first: int, chain: bytes) -> bytes:
    fixed = struct.pack("=IIIIQQ", 32 + len(chain), flags, index, first, size, 0x10000000000)
    return fixed + chain


REGION_FLAGS = (
    uapi.VFIO_REGION_INFO_FLAG_READ
    | uapi.VFIO_REGION_INFO_FLAG_WRITE
    | uapi.VFIO_REGION_INFO_FLAG_MMAP
    | uapi.VFIO_REGION_INFO_FLAG_CAPS
)


def _sparse(areas: List[Tuple[int, int]], next_offset: int = 0) -> bytes:
    body = struct.pack("=II", len(areas), 0) + b"".join(struct.pack("=QQ", *a) for a in areas)
    return _cap(uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP, next_offset, body)


def test_region_info_chain() -> None:
    # sparse (8 + 8 + 3 * 16 bytes) at 32, type (16 bytes) at 96, MSI-X mappable at 112
    sparse = _sparse([(0, 0x2000), (0x3000, 0x1000), (0x5000, 0)], next_offset=96)
    rtype = _cap(uapi.VFIO_REGION_INFO_CAP_TYPE, 112, struct.pack("=II", (1 << 31) | 0x8086, 3))
    msix = _cap(uapi.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 0, b"")
    region = parse_region_info(
        _region_info(2, REGION_FLAGS, 0x8000, 32, sparse + rtype + msix), "t"
    )
    assert (region.index, region.size, region.offset) == (2, 0x8000, 0x10000000000)
    assert region.sparse_areas == (
        SparseArea(0, 0x2000),
        SparseArea(0x3000, 0x1000),
        SparseArea(0x5000, 0),
    )
    # Only the non-empty sparse areas get mmap'ed.
    assert region.mmap_areas == [SparseArea(0, 0x2000), SparseArea(0x3000, 0x1000)]
    assert region.region_type == RegionType((1 << 31) | 0x8086, 3)
    assert region.region_type.pci_vendor == 0x8086
    assert region.msix_mappable


def test_region_without_caps_maps_whole_or_nothing() -> None:
    plain = uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_WRITE
    whole = parse_region_info(
        _region_info(0, plain | uapi.VFIO_REGION_INFO_FLAG_MMAP, 0x1000, 0, b""), "t"
    )
    assert whole.mmap_areas == [SparseArea(0, 0x1000)] and whole.sparse_areas is None
    assert parse_region_info(_region_info(1, plain, 0x100, 0, b""), "t").mmap_areas == []
    assert RegionType(1, 1).pci_vendor is None


def test_sparse_area_outside_the_region_is_refused() -> None:
    buf = _region_info(0, REGION_FLAGS, 0x4000, 32, _sparse([(0x3000, 0x2000)]))
    with pytest.raises(CapabilityChainError, match="leaves the 0x4000-byte region"):
        parse_region_info(buf, "region 0 info of device x")


def test_region_chain_loop_names_the_region() -> None:
    buf = _region_info(0, REGION_FLAGS, 0x4000, 32, _sparse([], next_offset=32))
    with pytest.raises(CapabilityChainError, match=r"^region 0 info of device x: .*loops"):
        parse_region_info(buf, "region 0 info of device x")
