"""Pure logic of vfio_hil.dut.mapping: expected answers, the case tables, IOVA range edges,
the scratch bench and the huge page pool guard."""

from __future__ import annotations

import errno
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from check_modules import load_checks

from vfio_hil.dut import mapping
from vfio_hil.dut.common import Transcript, answer
from vfio_hil.dut.mapping import (
    EINVAL,
    OK,
    TABLES,
    UNMAP_EMPTY,
    WRAP,
    Bench,
    Case,
    Differs,
    NotApplicable,
    Pages,
    describe,
    matches,
    min_page_size,
    range_edge_cases,
    run_case,
)
from vfio_hil_pytest.plugin import Evidence

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


def _bench(container: FakeContainer) -> Bench:
    return Bench(container, Transcript(), PAGE, 0x7F0000000000, 0x100000)  # type: ignore[arg-type]


def test_bench_undoes_what_a_wrongly_accepted_case_mapped() -> None:
    container = FakeContainer()
    bench = _bench(container)
    result = run_case(Case("accepted by mistake", EINVAL, lambda b: b.map()), bench, PAGE)
    assert result == {
        "case": "accepted by mistake",
        "expected": "EINVAL",
        "got": 0,
        "ok": False,
        "answer": "default",
    }
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


# -- the tables under each backend, against models of the kernels' answers -----------------

U64 = 1 << 64


class ModelIommu:
    """The raw tier of an IOMMU context answering as Linux 6.12 does under ``name``
    (docs/backend-differences.md), or as type1v2 does whatever its name (``like``: the
    answers of another backend under this one's name). Records every request."""

    def __init__(self, name: str, like: str = "") -> None:
        self.name = name
        self.like = like or name
        self.mapped: list[tuple[int, int]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.opened: list[str] = []
        self.closed = False

    def __enter__(self) -> ModelIommu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def open_device(self, bdf: str) -> None:
        self.opened.append(bdf)

    def map_dma(self, vaddr: int, iova: int, size: int) -> None:
        assert self.raw_map_dma(vaddr, iova, size, mapping.RW) == 0

    def raw_map_dma(self, vaddr: int, iova: int, size: int, flags: int) -> int:
        self.calls.append(("map", iova, size, flags))
        if flags & ~mapping.RW or not flags & mapping.RW:
            return -errno.EINVAL
        if (iova | vaddr) % PAGE or size % PAGE or not size:
            return -errno.EINVAL
        if iova + size > U64 or vaddr + size > U64:
            return -(errno.EOVERFLOW if self.like == "iommufd" else errno.EINVAL)
        if any(iova < i + s and i < iova + size for i, s in self.mapped):
            return -errno.EEXIST
        self.mapped.append((iova, size))
        return 0

    def raw_unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        self.calls.append(("unmap", iova, size, flags))
        iommufd = self.like == "iommufd"
        if flags == mapping.UNMAP_ALL and iova == size == 0:
            return self._remove(self.mapped)
        if flags or not size:
            return -errno.EINVAL
        if iova + size > U64:
            return -(errno.EOVERFLOW if iommufd else errno.EINVAL)
        if iommufd and (iova, size) == (0, U64 - 1):
            return self._remove(self.mapped)
        if not iommufd and (iova % PAGE or size % PAGE):
            return -errno.EINVAL
        touched = [(i, s) for i, s in self.mapped if iova < i + s and i < iova + size]
        inside = [(i, s) for i, s in touched if iova <= i and i + s <= iova + size]
        if touched != inside and self.like != "type1":  # v1 unmaps what it touches, whole
            return -(errno.ENOENT if iommufd else errno.EINVAL)
        if iommufd and not touched:
            return -errno.ENOENT
        return self._remove(touched)

    def _remove(self, gone: list[tuple[int, int]]) -> int:
        gone = list(gone)
        for m in gone:
            self.mapped.remove(m)
        return sum(s for _i, s in gone)


class FakeContainer(ModelIommu):
    """A container answering as type1v2 does, for the bench's own tests."""

    def __init__(self) -> None:
        super().__init__("type1v2")
        self.fd = -1


#: The tables a model can answer (pinning needs real memory; argsz a real container).
MODELLED = ("map_malformed", "map_overlap", "unmap_split", "unmap_malformed")
BACKENDS = ("type1v2", "type1", "iommufd")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[ModelIommu]:
    """``mapping.open_iommu`` opens a :class:`ModelIommu` of the backend asked for (a
    ``like:<backend>:<name>`` request gets that backend's answers under ``name``)."""
    made: list[ModelIommu] = []

    def open_iommu(backend: str) -> ModelIommu:
        like, name = backend[len("like:") :].split(":") if ":" in backend else ("", backend)
        made.append(ModelIommu(name, like))
        return made[-1]

    monkeypatch.setattr(mapping, "open_iommu", open_iommu)
    monkeypatch.setattr(mapping, "_page_size", lambda iommu: PAGE)
    return made


def _table(bdf: str, table: str, backend: str) -> dict[str, Any]:
    return mapping.errno_table(bdf, table, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("table", MODELLED)
def test_each_backend_gets_its_own_answers(
    opened: list[ModelIommu], backend: str, table: str
) -> None:
    if backend != "iommufd" and table == "map_malformed":
        pytest.skip("the argsz row issues a real VFIO_IOMMU_MAP_DMA (tested on the rack)")
    r = _table("0000:00:04.0", table, backend)
    assert opened[0].name == backend and opened[0].opened == ["0000:00:04.0"]
    assert opened[0].closed, "the context is closed after the table"
    assert r["backend"] == backend
    wrong = [c for c in r["cases"] if c["ok"] is False]
    assert not wrong, wrong
    for result, case in zip(r["cases"], TABLES[table].cases):
        departure = case.by_backend.get(backend)
        assert result["answer"] == (backend if departure else "default"), result
        if departure:
            assert result["why"] == departure.why


def test_type1_unmaps_the_whole_mapping_on_a_partial_unmap(opened: list[ModelIommu]) -> None:
    cases = {c["case"]: c for c in _table("0000:00:04.0", "unmap_split", "type1")["cases"]}
    first = cases["its first page"]
    assert (first["expected"], first["got"], first["answer"]) == ("4 pages", 4 * PAGE, "type1")
    assert "v1" in first["why"]
    assert cases["mapping it again (still mapped)"]["got"] == 0


def test_iommufd_answers_enoent_and_eoverflow(opened: list[ModelIommu]) -> None:
    cases = {c["case"]: c for c in _table("0000:00:04.0", "unmap_malformed", "iommufd")["cases"]}
    assert cases["IOVA not page aligned"]["got"] == "ENOENT"
    assert cases["IOVA range wraps past 2^64"]["expected"] == "EOVERFLOW"
    assert "iopt_unmap_iova_range" in cases["IOVA not page aligned"]["why"]


@pytest.mark.parametrize(
    ("table", "case"),
    [
        ("unmap_split", "its first page"),
        ("unmap_malformed", "IOVA not page aligned"),
        ("map_malformed", "IOVA range wraps past 2^64"),
    ],
)
def test_a_backend_answering_the_default_where_it_differs_fails(
    opened: list[ModelIommu], table: str, case: str
) -> None:
    """iommufd answering as type1v2 does: the rows where the data says iommufd differs FAIL,
    naming the case, the backend whose answer applied and why."""
    r = _table("0000:00:04.0", table, "like:type1v2:iommufd")
    bad = {c["case"]: c for c in r["cases"] if c["ok"] is False}
    assert case in bad
    assert bad[case]["answer"] == "iommufd"
    assert (
        bad[case]["why"]
        == TABLES[table]
        .cases[[c.name for c in TABLES[table].cases].index(case)]
        .by_backend["iommufd"]
        .why
    )
    # ... and the rows where it does not differ still pass.
    same = [c for c in r["cases"] if c["answer"] == "default"]
    assert same and all(c["ok"] for c in same)


def test_type1v2_answering_as_type1_fails_the_split_table(opened: list[ModelIommu]) -> None:
    r = _table("0000:00:04.0", "unmap_split", "like:type1:type1v2")
    bad = [c["case"] for c in r["cases"] if c["ok"] is False]
    assert "its first page" in bad and "mapping it again (still mapped)" in bad


@pytest.mark.parametrize("table", ("map_malformed", "unmap_malformed"))
def test_rows_the_library_answers_are_not_applicable_under_iommufd(
    opened: list[ModelIommu], table: str
) -> None:
    """The argsz row and the flag rows are not put to the kernel under iommufd: reported
    as not applicable (``ok`` None, with why), and no request is issued for them."""
    r = _table("0000:00:04.0", table, "iommufd")
    not_applicable = {c["case"]: c for c in r["cases"] if c["ok"] is None}
    expected = {
        c.name
        for c in TABLES[table].cases
        if isinstance(c.by_backend.get("iommufd"), NotApplicable)
    }
    assert expected and set(not_applicable) == expected
    assert all(c["got"] == "not applicable" and c["why"] for c in not_applicable.values())
    flags = [call for call in opened[0].calls if call[0] == "unmap" and call[3]]
    assert flags == [], "a not-applicable flag row reached the context"
    # Under the container they are ordinary rows.
    assert not any(
        isinstance(c.by_backend.get("type1v2"), NotApplicable) for c in TABLES[table].cases
    )


def test_run_case_without_a_backend_takes_the_default() -> None:
    case = Case("x", EINVAL, lambda b: -errno.ENOENT, {"iommufd": Differs(("ENOENT",), "why")})
    assert run_case(case, None)["ok"] is False
    assert run_case(case, None, backend="iommufd")["ok"] is True
    na = Case("y", EINVAL, lambda b: pytest.fail("issued"), {"iommufd": NotApplicable("n/a")})
    assert run_case(na, None, backend="iommufd")["ok"] is None


@pytest.mark.parametrize(
    ("backend", "empty"), [("type1v2", 0), ("type1", 0), ("iommufd", "ENOENT")]
)
def test_unmap_coverage_under_each_backend(
    opened: list[ModelIommu], backend: str, empty: Any
) -> None:
    r = mapping.unmap_coverage("0000:00:04.0", backend=backend)
    assert [c["got"] for c in r["empty"]] == [empty, empty]
    assert all(c["ok"] for c in r["empty"]), r["empty"]
    assert (r["covering"], r["remaps"]) == (3 * PAGE, [0, 0])
    assert [c["case"] for c in r["empty"]] == [c.name for c in UNMAP_EMPTY]


def test_unmap_coverage_of_an_iommufd_answering_zero_fails(opened: list[ModelIommu]) -> None:
    r = mapping.unmap_coverage("0000:00:04.0", backend="like:type1v2:iommufd")
    assert [(c["ok"], c["answer"]) for c in r["empty"]] == [(False, "iommufd")] * 2


def test_unmap_all_of_an_ioas_is_iova_0_length_u64_max(opened: list[ModelIommu]) -> None:
    r = mapping.unmap_all("0000:00:04.0", backend="iommufd")
    assert r["supported"] and r["unmapped"] == r["expected"] == 5 * PAGE
    assert ("unmap", 0, U64 - 1, 0) in opened[0].calls
    assert r["ioctls"][0] == {
        "ioctl": "IOMMU_IOAS_UNMAP",
        "args": {"iova": "0x0", "size": hex(U64 - 1), "flags": 0},
        "result": 5 * PAGE,
    }
    assert r["dma_avail_before"] is None and r["remaps"] == [0, 0, 0]


@pytest.fixture(scope="module")
def dma_checks() -> ModuleType:
    """conformance/test_dma.py, imported as the check catalogue imports it."""
    module = load_checks("test_dma.py", "dma_checks")
    return module


def _judge(check: Any, backend: str) -> tuple[str, str, Evidence]:
    """A DMA check under ``backend`` whose DUT calls run :mod:`vfio_hil.dut.mapping` here
    (on the models ``opened`` provides): (verdict, reason, evidence)."""

    def call(func: str, **kwargs: Any) -> Any:
        return getattr(mapping, func.split(".", 1)[1])(**kwargs)

    lease = SimpleNamespace(bdf="0000:00:04.0", call=call)
    evidence = Evidence()
    try:
        check(lease, backend, evidence)
    except AssertionError as exc:
        return "FAIL", str(exc), evidence
    return "PASS", evidence.note, evidence


def test_dma_005_fails_a_backend_answering_the_default_where_it_differs(
    opened: list[ModelIommu], dma_checks: ModuleType
) -> None:
    verdict, reason, _ev = _judge(dma_checks.test_unmap_split_refused, "like:type1v2:iommufd")
    assert verdict == "FAIL"
    assert "under like:type1v2:iommufd: its first page: got EINVAL, expected ENOENT" in reason
    assert "(iommufd: iopt_unmap_iova_range" in reason
    assert _judge(dma_checks.test_unmap_split_refused, "iommufd")[0] == "PASS"


def test_dma_006_fails_an_iommufd_answering_success_for_an_empty_unmap(
    opened: list[ModelIommu], dma_checks: ModuleType
) -> None:
    verdict, reason, _ev = _judge(dma_checks.test_unmap_coverage, "like:type1v2:iommufd")
    assert verdict == "FAIL" and "a range before any mapping: got 0, expected ENOENT" in reason
    verdict, reason, _ev = _judge(dma_checks.test_unmap_coverage, "iommufd")
    assert (verdict, reason) == ("PASS", "")


def test_dma_008_reports_the_rows_not_applicable_under_iommufd(
    opened: list[ModelIommu], dma_checks: ModuleType
) -> None:
    verdict, reason, evidence = _judge(dma_checks.test_unmap_malformed, "iommufd")
    assert verdict == "PASS"
    assert reason == (
        "not applicable under iommufd (the kernel is not asked): unknown flag bit, "
        "UNMAP_ALL with an IOVA, UNMAP_ALL with a size"
    )
    assert set(evidence.items["not applicable"]) == {
        "unknown flag bit",
        "UNMAP_ALL with an IOVA",
        "UNMAP_ALL with a size",
    }
    assert all(c["ok"] for c in evidence.items["cases"])
    # Under the container they are answers of the kernel, and nothing is set apart.
    verdict, reason, evidence = _judge(dma_checks.test_unmap_malformed, "type1v2")
    assert (verdict, reason) == ("PASS", "") and "not applicable" not in evidence.items


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
