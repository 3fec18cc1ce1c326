"""The legacy VFIO container against the real kernel: extensions, info and its capability
chain, map/unmap semantics (type1 and type1v2 differ, written as data), unmap-all, vaddr
update, and the exact errnos of the raw tier."""

from __future__ import annotations

import errno
import os
import platform

import pytest

from vfio_hil.core import Container, ContainerBackend, DmaBuffer, VfioError, open_iommu, uapi
from vfio_hil.core.drivers.edu import Edu

RW = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE
IOVA = 0x100000
#: x86 reserves this window for MSI writes: no IOVA range may include it.
X86_MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)


def test_api_version_and_extensions(legacy: ContainerBackend, edu_bdf: str) -> None:
    container = legacy.container
    assert container.api_version == uapi.VFIO_API_VERSION == container.raw_get_api_version()
    before = container.extensions()
    assert before["VFIO_TYPE1v2_IOMMU"] and before["VFIO_TYPE1_IOMMU"]
    assert container.raw_check_extension(0xFFFF) == 0
    legacy.open_device(edu_bdf)
    after = container.extensions()
    # Some extensions are answered by the IOMMU driver only once it is set (UPDATE_VADDR).
    assert {k for k, v in before.items() if v} <= {k for k, v in after.items() if v}
    assert after["VFIO_UNMAP_ALL"]


def test_info_capability_chain(legacy: ContainerBackend, edu_bdf: str) -> None:
    legacy.open_device(edu_bdf)
    container = legacy.container
    info = container.info()
    assert info.flags & uapi.VFIO_IOMMU_INFO_PGSIZES
    assert info.iova_pgsizes & 4096
    assert info.iova_ranges and info.iova_ranges == sorted(info.iova_ranges)
    if platform.machine() in ("x86_64", "i686"):
        lo, hi = X86_MSI_WINDOW
        assert not [r for r in info.iova_ranges if r.start <= hi and lo <= r.last]
    assert {c.id for c in info.caps} >= {uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE}
    if info.migration is not None:
        assert info.migration.pgsize_bitmap & info.iova_pgsizes
    assert info.dma_avail is not None and info.dma_avail > 0
    with DmaBuffer(4096) as buf:
        container.map_dma(buf.vaddr, IOVA, buf.length)
        assert container.info().dma_avail == info.dma_avail - 1
        assert container.unmap_dma(IOVA, buf.length) == buf.length
    assert container.info().dma_avail == info.dma_avail


@pytest.mark.parametrize(
    ("case", "vaddr_offset", "iova", "size", "flags", "expected"),
    [
        ("no read/write flag", 0, IOVA, 4096, 0, -errno.EINVAL),
        ("unaligned vaddr", 1, IOVA, 4096, RW, -errno.EINVAL),
        ("unaligned iova", 0, IOVA + 1, 4096, RW, -errno.EINVAL),
        ("zero size", 0, IOVA, 0, RW, -errno.EINVAL),
        ("valid", 0, IOVA, 4096, RW, 0),
    ],
)
def test_raw_map_errnos(
    legacy: ContainerBackend,
    edu_bdf: str,
    case: str,
    vaddr_offset: int,
    iova: int,
    size: int,
    flags: int,
    expected: int,
) -> None:
    legacy.open_device(edu_bdf)
    with DmaBuffer(4096) as buf:
        assert legacy.container.raw_map_dma(buf.vaddr + vaddr_offset, iova, size, flags) == (
            expected
        ), case


def test_map_outside_the_allowed_ranges_is_einval(legacy: ContainerBackend, edu_bdf: str) -> None:
    legacy.open_device(edu_bdf)
    ranges = legacy.container.info().iova_ranges
    # The first IOVA no range covers: in a hole between ranges, or past the last one.
    outside = next(
        (a.last + 1 for a, b in zip(ranges, ranges[1:]) if b.start > a.last + 1),
        ranges[-1].last + 1,
    )
    if outside >= 1 << 64:
        pytest.skip("the IOMMU allows every IOVA: there is no outside")
    with DmaBuffer(4096) as buf:
        assert legacy.container.raw_map_dma(buf.vaddr, outside, 4096) == -errno.EINVAL


def test_overlapping_map_is_eexist_and_strict_error_has_context(
    legacy: ContainerBackend, edu_bdf: str
) -> None:
    legacy.open_device(edu_bdf)
    container = legacy.container
    with DmaBuffer(8192) as buf:
        container.map_dma(buf.vaddr, IOVA, 8192)
        assert container.raw_map_dma(buf.vaddr, IOVA + 4096, 4096) == -errno.EEXIST
        with pytest.raises(VfioError) as info:
            container.map_dma(buf.vaddr, IOVA, 4096, writable=False)
        e = info.value
        assert (e.errno, e.ioctl, e.target) == (errno.EEXIST, "VFIO_IOMMU_MAP_DMA", "container")
        assert e.arguments == {
            "vaddr": buf.vaddr,
            "iova": IOVA,
            "size": 4096,
            "flags": uapi.VFIO_DMA_MAP_FLAG_READ,
        }


#: How each IOMMU model answers an unmap of the second half of an 8 KiB mapping, and then
#: of its first half: type1v2 refuses to split a mapping; type1 unmaps nothing for a range
#: that starts inside a mapping and the whole mapping for one that starts at it.
PARTIAL_UNMAP = {"type1v2": (-errno.EINVAL, -errno.EINVAL), "type1": (0, 8192)}


@pytest.mark.parametrize("model", sorted(PARTIAL_UNMAP))
def test_partial_unmap_semantics(model: str, edu_bdf: str) -> None:
    backend = open_iommu(model)
    assert isinstance(backend, ContainerBackend)
    with backend, DmaBuffer(8192) as buf:
        backend.open_device(edu_bdf)
        container = backend.container
        container.map_dma(buf.vaddr, IOVA, 8192)
        answers = (
            container.raw_unmap_dma(IOVA + 4096, 4096),
            container.raw_unmap_dma(IOVA, 4096),
        )
        assert answers == PARTIAL_UNMAP[model]
        container.unmap_all()


def test_unmap_sizes_and_unmap_all(legacy: ContainerBackend, edu_bdf: str) -> None:
    legacy.open_device(edu_bdf)
    container = legacy.container
    with DmaBuffer(3 * 4096) as buf:
        assert container.raw_unmap_dma(IOVA, 4096) == 0  # nothing mapped: nothing unmapped
        container.map_dma(buf.vaddr, IOVA, 4096)
        container.map_dma(buf.vaddr + 4096, IOVA + 0x10000, 8192, writable=False)
        assert container.raw_unmap_dma(IOVA, 4096, uapi.VFIO_DMA_UNMAP_FLAG_ALL) == (
            -errno.EINVAL
        ), "UNMAP_ALL takes no range"
        assert container.unmap_all() == 3 * 4096
        assert container.unmap_all() == 0


def test_read_only_mapping_blocks_device_writes(legacy: ContainerBackend, edu_bdf: str) -> None:
    device = legacy.open_device(edu_bdf)
    container = legacy.container
    with Edu(device) as edu, DmaBuffer(4096) as src, DmaBuffer(4096) as ro, DmaBuffer(4096) as rw:
        data = src.fill_random()
        ro.fill(b"\x5a" * 4096)
        container.map_dma(src.vaddr, IOVA, 4096)
        container.map_dma(ro.vaddr, IOVA + 0x10000, 4096, readable=True, writable=False)
        container.map_dma(rw.vaddr, IOVA + 0x20000, 4096)
        edu.dma_to_device(IOVA, 512)
        edu.dma_from_device(IOVA + 0x10000, 512)
        assert ro.read(0, 512) == b"\x5a" * 512, "the device wrote through a read-only mapping"
        # The same transfer into a writable mapping lands: the IOMMU, not the device, said no.
        edu.dma_from_device(IOVA + 0x20000, 512)
        assert rw.read(0, 512) == data[:512]
        container.unmap_all()


def test_vaddr_update(legacy: ContainerBackend, edu_bdf: str) -> None:
    device = legacy.open_device(edu_bdf)
    container = legacy.container
    if not container.check_extension(uapi.VFIO_UPDATE_VADDR):
        pytest.skip("the IOMMU driver does not offer VFIO_UPDATE_VADDR")
    with Edu(device) as edu, DmaBuffer(8192, backing="memfd") as buf:
        expected = os.urandom(256)
        buf.fill(expected)
        container.map_dma(buf.vaddr, IOVA, 8192)
        assert container.invalidate_vaddr(IOVA, 8192) == 8192
        old = buf.vaddr
        new = buf.remap()
        assert new != old
        container.update_vaddr(new, IOVA, 8192)
        # A second update of a valid vaddr is refused.
        assert container.raw_map_dma(new, IOVA, 8192, uapi.VFIO_DMA_MAP_FLAG_VADDR) == (
            -errno.EINVAL
        )
        edu.dma_to_device(IOVA, 256)
        edu.dma_from_device(IOVA + 4096, 256)
        assert buf.read(4096, 256) == expected
        assert container.unmap_dma(IOVA, 8192) == 8192


def test_raw_tier_before_and_after_set_iommu(edu_bdf: str) -> None:
    with Container() as container:
        assert container.raw_set_iommu(uapi.VFIO_TYPE1v2_IOMMU) == -errno.EINVAL  # no group
        assert container.raw_info() == -errno.EINVAL
        assert container.raw_map_dma(0, IOVA, 4096) == -errno.EINVAL
    with open_iommu("type1v2") as backend:
        assert isinstance(backend, ContainerBackend)
        backend.open_device(edu_bdf)
        assert backend.container.raw_set_iommu(uapi.VFIO_TYPE1v2_IOMMU) == -errno.EINVAL
        assert backend.container.raw_info(argsz=4) == -errno.EINVAL
        assert backend.container.raw_info() == 0


def test_dirty_page_tracking(legacy: ContainerBackend, edu_bdf: str) -> None:
    device = legacy.open_device(edu_bdf)
    container = legacy.container
    migration = container.info().migration
    if migration is None:
        pytest.skip("the IOMMU driver reports no dirty page tracking (no migration capability)")
    page = migration.pgsize_bitmap & -migration.pgsize_bitmap
    get = uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP
    with Edu(device) as edu, DmaBuffer(4 * page) as buf:
        container.map_dma(buf.vaddr, IOVA, 4 * page)
        assert container.raw_dirty_pages(get, IOVA, 4 * page, page) == -errno.EINVAL  # not started
        container.set_dirty_tracking(True)
        edu.dma_from_device(IOVA + page, 64)
        dirty = container.dirty_pages(IOVA, 4 * page, page)
        # The page the device wrote is dirty. Without an IOMMU that logs writes, type1
        # reports every page it has mapped as dirty, so more may be listed, never fewer.
        assert IOVA + page in dirty and set(dirty) <= {IOVA + i * page for i in range(4)}
        # Queries must cover whole mappings, at the IOMMU's page size.
        assert container.raw_dirty_pages(get, IOVA + page, page, page) == -errno.EINVAL
        assert container.raw_dirty_pages(get, IOVA, 4 * page, page * 2) == -errno.EINVAL
        container.set_dirty_tracking(False)
        assert container.raw_dirty_pages(get, IOVA, 4 * page, page) == -errno.EINVAL
        assert container.unmap_dma(IOVA, 4 * page) == 4 * page
