"""DMA buffers of every kind (anonymous and memfd, 4 KiB, 2 MiB and 1 GiB pages) mapped
through each backend and moved through a real device."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from vfio_hil.core import (
    HUGE_1G,
    HUGE_2M,
    PAGE_4K,
    DmaBuffer,
    HugePagesUnavailableError,
    IommuBackend,
    sysfs,
)
from vfio_hil.core.drivers.edu import DMA_IOVA_LIMIT, Edu

KINDS = [
    ("anonymous", PAGE_4K),
    ("memfd", PAGE_4K),
    ("anonymous", HUGE_2M),
    ("memfd", HUGE_2M),
    ("anonymous", HUGE_1G),
]


@pytest.fixture
def huge_pool(request: pytest.FixtureRequest) -> Iterator[int]:
    """Make sure the hugetlb pool of the parametrized page size has a free page, and put the
    pool back the way it was afterwards. Skips when the kernel cannot provide one."""
    page_size = request.param
    if page_size == PAGE_4K:
        yield page_size
        return
    pool = sysfs.hugepage_pool(page_size)
    if pool is None:
        pytest.skip(f"no {page_size >> 20} MiB huge pages on this kernel/CPU")
    path = f"/sys/kernel/mm/hugepages/hugepages-{page_size >> 10}kB/nr_hugepages"
    with open(path, "w") as f:
        f.write(str(pool.total + 1))
    try:
        grown = sysfs.hugepage_pool(page_size)
        if grown is None or grown.free < 1:
            pytest.skip(
                f"the kernel could not reserve a {page_size >> 20} MiB huge page "
                f"(pool {grown}): not enough contiguous memory"
            )
        yield page_size
    finally:
        with open(path, "w") as f:
            f.write(str(pool.total))


@pytest.mark.parametrize(
    ("backing", "huge_pool"),
    KINDS,
    indirect=["huge_pool"],
    ids=[f"{b}-{p >> 10}k" for b, p in KINDS],
)
def test_buffer_kinds_through_the_device(
    iommu: IommuBackend, edu_bdf: str, backing: str, huge_pool: int
) -> None:
    page_size = huge_pool
    device = iommu.open_device(edu_bdf)
    try:
        buf = DmaBuffer(page_size, page_size=page_size, backing=backing)
    except HugePagesUnavailableError as e:
        pytest.skip(str(e))
    with buf, Edu(device) as edu:
        assert buf.vaddr % page_size == 0 and buf.length == page_size
        expected = os.urandom(1024)
        buf.fill(expected)
        # The IOVA is aligned to the page size so the IOMMU can use huge mappings too.
        fits_edu = page_size * 2 <= DMA_IOVA_LIMIT
        with iommu.map_buffer(buf, limit=DMA_IOVA_LIMIT if fits_edu else 1 << 64) as mapping:
            assert mapping.iova % page_size == 0 and mapping.size == page_size
            if fits_edu:
                edu.dma_to_device(mapping.iova, 1024)
                edu.dma_from_device(mapping.iova + page_size // 2, 1024)
                assert buf.compare(expected, page_size // 2) == 0
        assert mapping.closed


def test_memfd_remap_keeps_the_memory() -> None:
    with DmaBuffer(8192, backing="memfd") as buf:
        data = buf.fill_random()
        old = buf.vaddr
        assert buf.remap() != old
        assert buf.read() == data
    with DmaBuffer(4096) as anon, pytest.raises(ValueError, match="memfd"):
        anon.remap()
