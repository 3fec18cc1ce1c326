"""Pure logic of vfio_hil.dut.mapping: expected answers, the case tables, IOVA range edges,
the scratch bench and the huge page pool guard."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from vfio_hil.dut import mapping
from vfio_hil.dut.common import Transcript, answer
from vfio_hil.dut.mapping import (
    EINVAL,
    OK,
    TABLES,
    WRAP,
    Bench,
    Case,
    Pages,
    describe,
    matches,
    min_page_size,
    range_edge_cases,
    run_case,
)

PAGE = 4096
# What intel-iommu reports under QEMU: everything but the MSI window, 39 address bits.
X86_RANGES = [(0x0, 0xFEDFFFFF), (0xFEF00000, 0x7FFFFFFFFF)]


def test_answer_shows_errno_names_and_values() -> None:
    assert answer(-errno.EINVAL) == "EINVAL"
    assert answer(0) == 0
    assert answer(8192) == 8192


@pytest.mark.parametrize(
    ("expected", "ret", "ok"),
    [
        (EINVAL, -errno.EINVAL, True),
        (EINVAL, -errno.EEXIST, False),
        (EINVAL, 0, False),
        (WRAP, -errno.EOVERFLOW, True),
        (WRAP, -errno.EINVAL, True),
        (OK, 0, True),
        (OK, 4096, True),
        (OK, -errno.EFAULT, False),
        ((Pages(4),), 4 * PAGE, True),
        ((Pages(4),), 3 * PAGE, False),
        ((Pages(4),), -errno.EINVAL, False),
    ],
)
def test_matches(expected: tuple, ret: int, ok: bool) -> None:
    assert matches(expected, ret, PAGE) is ok


def test_describe() -> None:
    assert describe(WRAP) == "EINVAL or EOVERFLOW"
    assert describe((Pages(4),)) == "4 pages"


def test_min_page_size_is_lowest_bit() -> None:
    assert min_page_size(0x40201000) == PAGE


@pytest.mark.parametrize("name", sorted(TABLES))
def test_tables_are_well_formed(name: str) -> None:
    cases = TABLES[name].cases
    assert cases, name
    assert len({c.name for c in cases}) == len(cases), f"duplicate case names in {name}"
    assert all(c.expected for c in cases)


def test_every_refusal_table_expects_refusals() -> None:
    # A malformed request table whose every row expects success would test nothing.
    for name in ("map_malformed", "unmap_malformed", "unmap_split", "map_overlap", "pinning"):
        assert any(c.expected != OK for c in TABLES[name].cases), name


def _names(cases: list) -> dict[str, tuple[int, int, bool]]:
    return {name: (iova, size, ok) for name, iova, size, ok in cases}


def test_range_edges_cover_the_msi_window_and_the_top() -> None:
    cases = _names(range_edge_cases(X86_RANGES, PAGE))
    low, high = "[0x0, 0xfedfffff]", "[0xfef00000, 0x7fffffffff]"
    assert cases[f"first page of {low}"] == (0, PAGE, True)
    assert cases[f"last page of {low}"] == (0xFEDFF000, PAGE, True)
    # Just above the low range is the MSI window: refused.
    assert cases[f"page just above {low}"] == (0xFEE00000, PAGE, False)
    assert cases[f"two pages across the end of {low}"] == (0xFEDFF000, 2 * PAGE, False)
    assert cases[f"page just below {high}"] == (0xFEEFF000, PAGE, False)
    assert cases[f"last page of {high}"] == (0x7FFFFFF000, PAGE, True)
    assert cases[f"page just above {high}"] == (0x8000000000, PAGE, False)
    # Page 0 has nothing below it.
    assert not any(name.startswith("page just below [0x0,") for name in cases)


def test_range_edges_skip_neighbours_that_are_inside_another_range() -> None:
    cases = _names(range_edge_cases([(0, 0xFFFF), (0x10000, 0x1FFFF)], PAGE))
    assert "page just above [0x0, 0xffff]" not in cases
    assert "page just below [0x10000, 0x1ffff]" not in cases


def test_range_edges_of_the_whole_space_stop_at_2_64() -> None:
    cases = _names(range_edge_cases([(0, (1 << 64) - 1)], PAGE))
    assert set(cases) == {
        "first page of [0x0, 0xffffffffffffffff]",
        "last page of [0x0, 0xffffffffffffffff]",
    }


class FakeContainer:
    """A container whose MAP_DMA refuses what overlaps, as type1 does, and records calls."""

    def __init__(self) -> None:
        self.mapped: list[tuple[int, int]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.fd = -1

    def raw_map_dma(self, vaddr: int, iova: int, size: int, flags: int) -> int:
        self.calls.append(("map", iova, size, flags))
        if any(iova < i + s and i < iova + size for i, s in self.mapped):
            return -errno.EEXIST
        self.mapped.append((iova, size))
        return 0

    def raw_unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        self.calls.append(("unmap", iova, size, flags))
        gone = [(i, s) for i, s in self.mapped if iova <= i and i + s <= iova + size]
        for m in gone:
            self.mapped.remove(m)
        return sum(s for _i, s in gone)


def _bench(container: FakeContainer) -> Bench:
    return Bench(container, Transcript(), PAGE, 0x7F0000000000, 0x100000)  # type: ignore[arg-type]


def test_bench_undoes_what_a_wrongly_accepted_case_mapped() -> None:
    container = FakeContainer()
    bench = _bench(container)
    result = run_case(Case("accepted by mistake", EINVAL, lambda b: b.map()), bench, PAGE)
    assert result == {"case": "accepted by mistake", "expected": "EINVAL", "got": 0, "ok": False}
    bench.undo()
    assert container.mapped == []
    assert container.calls[-1] == ("unmap", 0x100000, PAGE, 0)


def test_bench_leaves_refused_requests_alone() -> None:
    container = FakeContainer()
    container.mapped.append((0x100000, 4 * PAGE))
    bench = _bench(container)
    result = run_case(TABLES["map_overlap"].cases[0], bench, PAGE)
    assert result["ok"] and result["got"] == "EEXIST"
    bench.undo()
    assert container.mapped == [(0x100000, 4 * PAGE)]


def test_overlap_table_against_a_model_of_type1() -> None:
    # The model refuses exactly the overlaps: every row of the table must agree with it.
    container = FakeContainer()
    container.mapped.append((0x100000, mapping.MAPPED_PAGES * PAGE))
    bench = _bench(container)
    for case in TABLES["map_overlap"].cases:
        assert run_case(case, bench, PAGE)["ok"], case.name
        bench.undo()


def test_transcript_shows_addresses_in_hex() -> None:
    t = Transcript()
    t.record("VFIO_IOMMU_MAP_DMA", {"iova": 0x1000, "flags": 3}, -errno.EINVAL)
    assert t.entries == [
        {"ioctl": "VFIO_IOMMU_MAP_DMA", "args": {"iova": "0x1000", "flags": 3}, "result": "EINVAL"}
    ]


class _IommufdStub:
    """An iommufd backend's raw tier that accepts every map."""

    name = "iommufd"

    def raw_map_dma(self, vaddr: int, iova: int, size: int, flags: int) -> int:
        return 0


def test_transcript_shows_the_iommufd_flags_sent() -> None:
    """Under iommufd the evidence shows IOMMU_IOAS_MAP's own flags (FIXED_IOVA 1, WRITEABLE
    2, READABLE 4), not VFIO's READ|WRITE (3) under that ioctl's name."""
    t = Transcript()
    t.map(_IommufdStub(), 0x7F0000000000, 0x200000, PAGE, mapping.READ)  # type: ignore[arg-type]
    assert t.entries[0]["ioctl"] == "IOMMU_IOAS_MAP"
    assert t.entries[0]["args"]["flags"] == 1 | 4
    assert t.entries[0]["args"]["vfio_flags"] == mapping.READ


class FakePool:
    """The kernel's huge page pool: growing it yields ``fill`` of the pages asked for."""

    def __init__(self, total: int, free: int, fill: int) -> None:
        self.total, self.free, self.fill = total, free, fill
        self.writes: list[str] = []

    def pool(self, page_size: int) -> Any:
        return mapping.sysfs.HugePagePool(page_size, self.total, self.free)

    def write(self, path: str, value: str) -> None:
        self.writes.append(value)
        grow = int(value) - self.total
        added = min(grow, self.fill) if grow > 0 else grow
        self.total += added
        self.free += added


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> FakePool:
    fake = FakePool(total=0, free=0, fill=1)
    monkeypatch.setattr(mapping.sysfs, "hugepage_pool", fake.pool)
    monkeypatch.setattr(mapping, "_write", fake.write)
    return fake


def test_hugepages_grows_the_pool_and_restores_it(pool: FakePool) -> None:
    with mapping.hugepages(1) as unavailable:
        assert unavailable is None
        assert pool.free == 1
    assert pool.writes == ["1", "0"]


def test_hugepages_untouched_when_enough_are_free(pool: FakePool) -> None:
    pool.total = pool.free = 4
    with mapping.hugepages(1) as unavailable:
        assert unavailable is None
    assert pool.writes == []


def test_hugepages_reports_a_pool_that_cannot_be_filled(pool: FakePool) -> None:
    pool.fill = 0
    with mapping.hugepages(2) as unavailable:
        assert unavailable is not None and "could not be filled" in unavailable["skip"]
        assert unavailable["skip_kind"] == "lab"
    assert pool.writes == ["2", "0"]
