"""The IOMMU backends behind one interface, against real devices: choice, DMA through the
IOMMU, the IOVA allocator, unmap-all, hot reset and ownership on close."""

from __future__ import annotations

import errno
import os
from typing import Dict

import pytest

from vfio_hil.core import (
    BACKENDS,
    BackendUnavailableError,
    DmaBuffer,
    IommuBackend,
    VfioError,
    open_iommu,
)
from vfio_hil.core.drivers.edu import DMA_IOVA_LIMIT, Edu


def test_auto_picks_the_best_backend_offered(backend_reasons: Dict[str, str]) -> None:
    best = next(name for name in ("iommufd", "type1v2", "type1") if not backend_reasons[name])
    with open_iommu() as backend:
        assert backend.name == best


@pytest.mark.parametrize("name", BACKENDS)
def test_a_forced_backend_is_opened_or_refused_with_the_reason(
    name: str, backend_reasons: Dict[str, str]
) -> None:
    reason = backend_reasons[name]
    if reason:
        with pytest.raises(BackendUnavailableError) as info:
            open_iommu(name)
        assert str(info.value) == reason
    else:
        with open_iommu(name) as backend:
            assert backend.name == name


def test_edu_dma_round_trip_through_the_iommu(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    with Edu(device) as edu, DmaBuffer(4096) as src, DmaBuffer(4096) as dst:
        expected = os.urandom(1024)
        src.fill(expected)
        with (
            iommu.map_buffer(src, limit=DMA_IOVA_LIMIT) as m_src,
            iommu.map_buffer(dst, limit=DMA_IOVA_LIMIT) as m_dst,
        ):
            assert m_src.iova != m_dst.iova
            edu.dma_to_device(m_src.iova, 1024)
            edu.dma_from_device(m_dst.iova, 1024)
        assert dst.compare(expected) == 0
    assert m_src.closed and m_dst.closed


def test_allocated_iovas_stay_inside_the_reported_ranges(iommu: IommuBackend, edu_bdf: str) -> None:
    iommu.open_device(edu_bdf)
    ranges = iommu.iova_ranges()
    assert ranges, "the IOMMU reports no usable IOVA range"
    small = [(iommu.iovas.alloc(1 << 20, limit=DMA_IOVA_LIMIT), 1 << 20) for _ in range(16)]
    # 4 GiB cannot fit below the x86 MSI window hole: it must land in a later range.
    large = [(iommu.iovas.alloc(1 << 32), 1 << 32)]
    for iova, size in small + large:
        assert any(r.start <= iova and iova + size - 1 <= r.last for r in ranges), hex(iova)
    assert all(iova + size <= DMA_IOVA_LIMIT for iova, size in small)
    assert len({iova for iova, _ in small + large}) == 17


def test_unmap_all_returns_every_byte_and_closes_the_mappings(
    iommu: IommuBackend, edu_bdf: str
) -> None:
    iommu.open_device(edu_bdf)
    with DmaBuffer(4096) as a, DmaBuffer(3 * 4096) as b:
        mappings = [iommu.map_buffer(a), iommu.map_buffer(b)]
        iova_b = mappings[1].iova
        assert iommu.unmap_all() == a.length + b.length
        assert all(m.closed for m in mappings)
        # The IOVAs are free again: the same range can be mapped anew.
        with iommu.map_buffer(b, iova=iova_b) as again:
            assert again.iova == iova_b


def test_hot_reset_of_a_bridged_device(iommu: IommuBackend, bridged_edu_bdf: str) -> None:
    device = iommu.open_device(bridged_edu_bdf)
    affected = device.hot_reset_info().devices
    assert bridged_edu_bdf in [d.bdf for d in affected]
    iommu.hot_reset(device)
    with Edu(device) as edu:
        assert edu.id() == 0x010000ED


def test_hot_reset_info_of_a_root_bus_device_is_enodev(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    assert device.raw_hot_reset_info() == -errno.ENODEV
    with pytest.raises(VfioError) as info:
        iommu.hot_reset(device)
    assert (info.value.errno, info.value.ioctl) == (
        errno.ENODEV,
        "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
    )
    assert info.value.target == f"device {edu_bdf}"


def test_closing_the_backend_closes_what_it_owns(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    bar = device.map_bar(0)
    with DmaBuffer(4096) as buf:
        mapping = iommu.map_buffer(buf)
        iommu.close()
        assert iommu.closed and device.closed and bar.closed and mapping.closed
    with pytest.raises(ValueError, match="closed"):
        iommu.open_device(edu_bdf)
