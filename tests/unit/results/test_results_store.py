"""The results store on SQLite and PostgreSQL: idempotent import, platforms keyed by their
facts, the queries, bad input, and two processes writing at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sample_records import PLATFORM, record
from synthetic_runs import write_run, write_runs

from vfio_hil.core.perf import Figure
from vfio_hil.lab.baseline import platform_key
from vfio_hil.lab.errors import StoreError, StoreUnreachable
from vfio_hil.results import ResultKey, ResultsStore, run_folders
from vfio_hil.results.store import engine_url

PLATFORM_ID = platform_key(PLATFORM)[0]


def test_import_is_idempotent_and_keeps_the_whole_run(store_url: str, tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "reports", 1, [record("DMA-001"), record("PLAT-001", bdf=None)])
    with ResultsStore.open(store_url) as store:
        assert store.add_run(run_dir) is True
        assert store.add_run(run_dir) is False
        assert [r.id for r in store.runs()] == ["run-01"]
        assert len(store.results("run-01")) == 2
        assert store.document("run-01")["results"][0]["check_id"] == "DMA-001"
    # A store opened again (the schema already at its revision) still holds it once.
    with ResultsStore.open(store_url) as store:
        assert store.add_run(run_dir) is False
        run = store.run("run-01")
        assert run.platform_ids == (PLATFORM_ID,) and run.hosts == ("vdut0",)
        assert run.started.isoformat() == "2026-11-01T01:00:00+00:00"


def test_platforms_are_keyed_by_their_facts(store_url: str, tmp_path: Path) -> None:
    passthrough = {**PLATFORM, "iommu_mode": "identity"}
    records = [
        record("DMA-001", host="vdut0"),
        record("DMA-001", host="vdut1"),  # another host, the same facts: the same platform
        record("DMA-001", host="vdut2", platform=passthrough),
    ]
    with ResultsStore.open(store_url) as store:
        store.add_run(write_run(tmp_path, 1, records))
        platforms = {p.id: p for p in store.platforms()}
        assert set(platforms) == {PLATFORM_ID, platform_key(passthrough)[0]}
        assert platforms[PLATFORM_ID].facts["iommu_mode"] == "DMA-FQ"
        assert platforms[PLATFORM_ID].label.startswith("intel IOMMU (DMA-FQ)")
        hosts = {r.key.host for r in store.latest_verdicts(PLATFORM_ID)}
        assert hosts == {"vdut0", "vdut1"}


def test_a_record_without_its_platform_is_its_hosts(store_url: str, tmp_path: Path) -> None:
    # A check skipped, or a host lost, before the host's facts were read: no platform.
    skipped = {**record("DMA-002", "SKIP", host="vdut2"), "platform": {}}
    lost = {**record("DMA-001", "ERROR"), "platform": {}}
    passthrough = {**PLATFORM, "iommu_mode": "identity"}
    records = [record("PLAT-001", bdf=None, host="vdut2", platform=passthrough), skipped, lost]
    with ResultsStore.open(store_url) as store:
        store.add_run(write_run(tmp_path, 1, records))
        by_check = {r.key.check_id: r.key.platform_id for r in store.results("run-01")}
    # vdut2's platform from its other record; vdut0 has none in the run: an unknown one.
    assert by_check["DMA-002"] == by_check["PLAT-001"] == platform_key(passthrough)[0]
    assert by_check["DMA-001"] == platform_key({})[0]


def test_queries_per_platform_in_start_order(store_url: str, tmp_path: Path) -> None:
    other = {**PLATFORM, "kernel_release": "6.12.9-amd64"}
    iops = ("randread.iops", 1000.0, "IOPS", True)
    dirs = write_runs(
        tmp_path,
        [
            [record("PERF-001", figures=[iops]), record("DMA-001", "FAIL")],
            [record("DMA-001", platform=other)],
            [record("PERF-001", figures=[(*iops[:1], 900.0, *iops[2:])]), record("DMA-001")],
        ],
    )
    with ResultsStore.open(store_url) as store:
        for run_dir in reversed(dirs):  # imported out of order: the start time orders them
            store.add_run(run_dir)
        assert [r.id for r in store.runs()] == ["run-01", "run-02", "run-03"]
        assert [r.id for r in store.runs(PLATFORM_ID)] == ["run-01", "run-03"]
        assert [r.id for r in store.runs(PLATFORM_ID, until="run-02")] == ["run-01"]
        latest = {r.key.check_id: (r.run_id, r.verdict) for r in store.latest_verdicts(PLATFORM_ID)}
        assert latest == {"DMA-001": ("run-03", "PASS"), "PERF-001": ("run-03", "PASS")}
        key = ResultKey(PLATFORM_ID, "DMA-001", "vdut0", "0000:00:06.0")
        assert [(r.run_id, r.verdict) for r in store.history(PLATFORM_ID, key=key)] == [
            ("run-01", "FAIL"),
            ("run-03", "PASS"),
        ]
        assert [r.run_id for r in store.history(PLATFORM_ID, last=1)] == ["run-03", "run-03"]
        perf = ResultKey(PLATFORM_ID, "PERF-001", "vdut0", "0000:00:06.0")
        points = store.figure_history(perf, "randread.iops")
        assert [(p.run_id, p.figure) for p in points] == [
            ("run-01", Figure("randread.iops", 1000.0, "IOPS", True)),
            ("run-03", Figure("randread.iops", 900.0, "IOPS", True)),
        ]
        result = store.results("run-01", PLATFORM_ID)[0]
        assert (result.vendor_device, result.serial, result.hot_path) == (
            "1b36:0010",
            "hil6",
            "compiled",
        )


def test_a_variant_is_part_of_what_a_result_is_about(store_url: str, tmp_path: Path) -> None:
    records = [record("ISO-001", variant="type1"), record("ISO-001", "FAIL", variant="iommufd")]
    with ResultsStore.open(store_url) as store:
        store.add_run(write_run(tmp_path, 1, records))
        verdicts = {r.key.variant: r.verdict for r in store.latest_verdicts(PLATFORM_ID)}
        assert verdicts == {"type1": "PASS", "iommufd": "FAIL"}


def test_a_run_under_xdist_keys_its_results_as_a_plain_run(store_url: str, tmp_path: Path) -> None:
    # pytest-xdist's loadgroup ends each node id with its group: "...[vdut0/...-type1]@vdut0".
    grouped = [
        {**r, "nodeid": r["nodeid"] + "@vdut0"}
        for r in (record("ISO-001", variant="type1"), record("ISO-001", variant="iommufd"))
    ]
    plain = [record("ISO-001", variant="type1"), record("ISO-001", "FAIL", variant="iommufd")]
    with ResultsStore.open(store_url) as store:
        for run_dir in write_runs(tmp_path, [grouped, plain]):
            store.add_run(run_dir)
        keys = [{r.key for r in store.results(run)} for run in ("run-01", "run-02")]
    assert keys[0] == keys[1] and {k.variant for k in keys[0]} == {"type1", "iommufd"}


def test_bad_input_is_one_store_error(store_url: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    bad_verdict = write_run(tmp_path / "bad", 1, [record("DMA-001", "MAYBE")])
    with ResultsStore.open(store_url) as store:
        with pytest.raises(StoreError, match=r"no such run: .*no results\.json"):
            store.add_run(tmp_path / "empty")
        with pytest.raises(StoreError, match="verdict 'MAYBE'"):
            store.add_run(bad_verdict)
        with pytest.raises(StoreError, match="no run 'nope' in the results store"):
            store.run("nope")
        assert store.runs() == []  # nothing half-added
    with pytest.raises(StoreError, match=r"no results\.json there nor in its sub-folders"):
        run_folders(tmp_path / "empty")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not a url", "is malformed"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("sqlite://", "needs a file"),
    ],
)
def test_malformed_urls(url: str, problem: str) -> None:
    with pytest.raises(StoreError, match=problem):
        ResultsStore.open(url)


def test_postgresql_urls_use_psycopg() -> None:
    assert engine_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert engine_url("postgres://u@h/db").drivername == "postgresql+psycopg"


def test_an_unreachable_server_is_lab_trouble() -> None:
    with pytest.raises(StoreUnreachable, match=r"cannot use the results store .*127\.0\.0\.1"):
        ResultsStore.open("postgresql://u:secret@127.0.0.1:1/db")


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from vfio_hil.results import ResultsStore

    with ResultsStore.open(sys.argv[1]) as store:
        print(sum(store.add_run(Path(run_dir)) for run_dir in sys.argv[2:]))
    """
)


@pytest.mark.parametrize("same_runs", [False, True], ids=["different-runs", "same-runs"])
def test_two_processes_writing_at_once_lose_nothing(
    store_url: str, tmp_path: Path, same_runs: bool
) -> None:
    # Both open a new store (the schema is made once) and add runs of one platform (the
    # platform row is inserted by whichever comes first) at the same time: different runs
    # (all kept), or the same runs (each added once, by one of them).
    records = [record(f"DMA-{n:03d}", figures=[("x.iops", n, "IOPS", True)]) for n in range(30)]
    dirs = [write_run(tmp_path, i, records) for i in range(1, 17)]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, store_url, *map(str, dirs if same_runs else dirs[i::2])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    added = 0
    for writer in writers:
        out, err = writer.communicate(timeout=240)
        assert writer.returncode == 0, err
        added += int(out)
    assert added == 16
    with ResultsStore.open(store_url) as store:
        assert [r.id for r in store.runs()] == [f"run-{i:02d}" for i in range(1, 17)]
        assert [p.id for p in store.platforms()] == [PLATFORM_ID]
        assert len(store.history(PLATFORM_ID)) == 16 * 30
        assert sum(len(r.figures) for r in store.history(PLATFORM_ID)) == 16 * 30
