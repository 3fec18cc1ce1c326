"""Comparisons between runs of the store: verdict changes, flaky and failing results, figures
against the baseline and the trailing median."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sample_records import PLATFORM, record
from synthetic_runs import write_runs

from vfio_hil.lab.baseline import BaselineStore, platform_key, save_baselines
from vfio_hil.lab.errors import StoreError
from vfio_hil.results import ResultsStore
from vfio_hil.results.compare import (
    ChangeKind,
    Reference,
    compare_runs,
    comparison_table,
    latest_changes,
)
from vfio_hil.results.store import ResultKey

PLATFORM_ID = platform_key(PLATFORM)[0]
BDF = "0000:00:06.0"


def key(check_id: str, variant: str | None = None) -> ResultKey:
    return ResultKey(PLATFORM_ID, check_id, "vdut0", BDF, variant)


def stored(
    store_url: str, tmp_path: Path, runs: Sequence[Sequence[dict[str, Any]]]
) -> ResultsStore:
    store = ResultsStore.open(store_url)
    for run_dir in write_runs(tmp_path / "reports", runs):
        store.add_run(run_dir)
    return store


def test_regression_fix_new_and_missing(store_url: str, tmp_path: Path) -> None:
    before = [
        record("DMA-001"),
        record("DMA-002", "FAIL"),
        record("DMA-003", "ERROR"),
        record("DMA-004"),
        record("DMA-005", "SKIP"),
        record("ISO-001", variant="type1"),
    ]
    after = [
        record("DMA-001", "FAIL"),
        record("DMA-002"),
        record("DMA-003", "PASS"),
        record("DMA-005", "PASS"),  # SKIP -> PASS: not a fix, nothing was broken
        record("ISO-001", "ERROR", variant="type1"),
        record("ISO-001", variant="iommufd"),
    ]
    with stored(store_url, tmp_path, [before, after]) as store:
        comparison = compare_runs(store, "run-01", "run-02")
    found = {(c.kind, c.key, c.before, c.after) for c in comparison.changes}
    assert found == {
        (ChangeKind.REGRESSION, key("DMA-001"), "PASS", "FAIL"),
        (ChangeKind.REGRESSION, key("ISO-001", "type1"), "PASS", "ERROR"),
        (ChangeKind.FIX, key("DMA-002"), "FAIL", "PASS"),
        (ChangeKind.FIX, key("DMA-003"), "ERROR", "PASS"),
        (ChangeKind.NEW, key("ISO-001", "iommufd"), None, "PASS"),
        (ChangeKind.MISSING, key("DMA-004"), "PASS", None),
    }
    table = comparison_table(comparison)
    assert table.splitlines()[0] == "run-01 -> run-02"
    assert any("DMA-001" in line and "regression" in line and "PASS -> FAIL" in line
               for line in table.splitlines())  # fmt: skip


def test_flaky_needs_enough_flips_in_the_window(store_url: str, tmp_path: Path) -> None:
    verdicts = {
        "DMA-001": ["PASS", "FAIL", "PASS", "PASS", "PASS"],  # 2 flips: flaky
        "DMA-002": ["PASS", "PASS", "PASS", "FAIL", "FAIL"],  # 1 flip: a regression, not flaky
        "DMA-003": ["PASS", "SKIP", "PASS", "SKIP", "PASS"],  # SKIPs are not outcomes
        "DMA-004": ["FAIL", "PASS", "FAIL", "PASS", "PASS"],  # 3 flips, 2 outside a window of 3
    }
    runs = [[record(c, v[i]) for c, v in verdicts.items()] for i in range(5)]
    with stored(store_url, tmp_path, runs) as store:
        flaky = compare_runs(store, "run-04", "run-05").flaky
        assert [(f.key.check_id, f.flips) for f in flaky] == [("DMA-001", 2), ("DMA-004", 3)]
        assert flaky[0].verdicts == ("PASS", "FAIL", "PASS", "PASS", "PASS")
        narrow = compare_runs(store, "run-04", "run-05", window=3)
        assert [f.key.check_id for f in narrow.flaky] == []
        strict = compare_runs(store, "run-04", "run-05", flips=3)
        assert [f.key.check_id for f in strict.flaky] == ["DMA-004"]


def test_failing_since_the_first_run_of_the_streak(store_url: str, tmp_path: Path) -> None:
    verdicts = {
        "DMA-001": ["PASS", "FAIL", "ERROR", "SKIP", "FAIL"],  # since run-02, 3 runs
        "DMA-002": ["FAIL", "PASS", "PASS", "PASS", "FAIL"],  # since run-05
        "DMA-003": ["FAIL", "FAIL", "FAIL", "FAIL", "PASS"],  # fixed: not failing
    }
    runs = [[record(c, v[i]) for c, v in verdicts.items()] for i in range(5)]
    with stored(store_url, tmp_path, runs) as store:
        failing = compare_runs(store, "run-04", "run-05", window=2).failing_since
    assert [(f.key.check_id, f.since_run, f.streak, f.verdict) for f in failing] == [
        ("DMA-001", "run-02", 3, "FAIL"),
        ("DMA-002", "run-05", 1, "FAIL"),
    ]


def perf(iops: float, lat: float, verdict: str = "PASS") -> dict[str, Any]:
    return record(
        "PERF-001",
        verdict,
        figures=[("w.iops", iops, "IOPS", True), ("w.lat_p50", lat, "us", False)],
    )


def test_figures_against_the_trailing_median(store_url: str, tmp_path: Path) -> None:
    # Medians of the runs before: 1000 IOPS (an ERROR's 10 is not a sample), 20 us.
    runs = [[perf(900, 19)], [perf(1000, 20)], [perf(10, 900, "ERROR")], [perf(1100, 21)]]
    runs += [[perf(700, 28)]]  # iops -30% (tolerance 25%): regressed; p50 +40% (35%): regressed
    runs += [[perf(800, 26)]]  # -20% and +30%: within
    with stored(store_url, tmp_path, runs) as store:
        bad = compare_runs(store, "run-04", "run-05")
        good = compare_runs(store, "run-05", "run-06", window=3)
    medians = {j.measured.name: j for j in bad.figure_judgements if j.reference is Reference.MEDIAN}
    assert medians["w.iops"].expected.value == 1000
    assert medians["w.iops"].expected.samples == (900, 1000, 1100)
    assert medians["w.iops"].expected.tolerance == 0.25
    assert {j.measured.name for j in bad.figure_regressions()} == {"w.iops", "w.lat_p50"}
    # The window: the 3 runs before run-06, run-03 ERRORed: 1100 and 700 -> 900.
    iops = [j.expected for j in good.figure_judgements if j.measured.name == "w.iops"]
    assert [(e.value, e.samples) for e in iops] == [(900, (1100, 700))]
    assert good.figure_regressions() == []
    delta = next(d for d in bad.figure_deltas if d.after.name == "w.iops")
    assert (delta.before.value, delta.after.value, delta.worse) == (1100, 700, True)
    assert delta.change == pytest.approx(-400 / 1100)


def test_figures_against_the_platform_baseline(store_url: str, tmp_path: Path) -> None:
    runs = [[perf(1000, 20)], [perf(1000, 20)], [perf(740, 20)]]
    with stored(store_url, tmp_path, runs) as store:
        baselines = BaselineStore(tmp_path / "baselines")
        save_baselines([tmp_path / "reports" / "run-01"], baselines)
        comparison = compare_runs(store, "run-02", "run-03", baselines=baselines)
        unjudged = compare_runs(store, "run-01", "run-02", baselines=baselines)
    judged = {
        j.measured.name: j
        for j in comparison.figure_judgements
        if j.reference is Reference.BASELINE
    }
    assert set(judged) == {"w.iops", "w.lat_p50"}
    assert judged["w.iops"].regressed and not judged["w.lat_p50"].regressed
    assert judged["w.iops"].source == (PLATFORM_ID, "run-01")
    assert "regressed against the baseline 1000 IOPS within 25%" in judged["w.iops"].text()
    assert [j for j in unjudged.figure_judgements if j.regressed] == []


def test_latest_changes_of_a_platform(store_url: str, tmp_path: Path) -> None:
    other = {**PLATFORM, "iommu_mode": "identity"}
    runs = [
        [record("DMA-001"), record("DMA-002")],
        [record("DMA-001")],  # DMA-002 not run here; still expected in the latest run
        [record("DMA-001", "FAIL", platform=other)],  # another platform: not compared
        [record("DMA-001", "FAIL")],
    ]
    with stored(store_url, tmp_path, runs) as store:
        changes = latest_changes(store, PLATFORM_ID)
        with pytest.raises(StoreError, match="no run of platform 'nope'"):
            latest_changes(store, "nope")
    assert (changes.run_a, changes.run_b) == ("run-02", "run-04")
    assert {(c.kind, c.key.check_id) for c in changes.changes} == {
        (ChangeKind.REGRESSION, "DMA-001"),
        (ChangeKind.MISSING, "DMA-002"),
    }


def test_a_platforms_first_run_has_no_verdict_changes(store_url: str, tmp_path: Path) -> None:
    runs = [[record("DMA-001"), record("DMA-002", "FAIL")]]
    with stored(store_url, tmp_path, runs) as store:
        first = latest_changes(store, PLATFORM_ID)
    assert first.run_a is None and first.changes == ()
    # What fails is still said: failing since this run.
    assert [(f.key.check_id, f.since_run) for f in first.failing_since] == [("DMA-002", "run-01")]
