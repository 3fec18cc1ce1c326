"""``vfio-hil results import|compare|export`` and the recording of a run: what they print,
and bad input as one line with exit 2 (3 for a server that does not answer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kcidb_io import schema
from sample_records import record
from synthetic_runs import write_runs

from vfio_hil.lab.cli import main, record_run, run_status
from vfio_hil.results.store import ENV_STORE

UNREACHABLE = "postgresql://u:secret@127.0.0.1:1/db"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("vfio-hil: error: ")
    return err[0]


def test_import_compare_export(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    first, second = write_runs(reports, [[record("DMA-001")], [record("DMA-001", "FAIL")]])
    (reports / "latest").symlink_to(second.name)
    assert main(["results", "import", str(first), "--store", store_url]) == 0
    assert capsys.readouterr().out == f"{first}: added\n"
    assert main(["results", "import", str(reports), "--store", store_url]) == 0
    assert capsys.readouterr().out == f"{first}: already in the store\n{second}: added\n"

    assert main(["results", "compare", "run-01", "run-02", "--store", store_url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "run-01 -> run-02"
    assert "regression" in table[2] and "PASS -> FAIL" in table[2] and "DMA-001" in table[2]

    out = tmp_path / "kcidb.json"
    args = ["results", "export", "--kcidb", "--out", str(out), "--store", store_url]
    assert main(args) == 0
    assert schema.V5_3.is_valid_exactly(json.loads(out.read_text()))


def test_the_default_store_is_sqlite_in_the_reports_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ENV_STORE, raising=False)
    (run_dir,) = write_runs(tmp_path / "reports", [[record("DMA-001")]])
    assert main(["results", "import", str(run_dir), "--reports", str(tmp_path / "reports")]) == 0
    assert (tmp_path / "reports" / "results.db").is_file()
    # $VFIO_HIL_STORE comes before it; --store before both.
    monkeypatch.setenv(ENV_STORE, "mysql://u@h/db")
    assert main(["results", "import", str(run_dir)]) == 2
    assert "unsupported database 'mysql'" in one_error_line(capsys)
    store = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["results", "import", str(run_dir), "--store", store]) == 0


@pytest.mark.parametrize(
    ("args", "status", "problem"),
    [
        (["results", "compare", "run-01", "nope"], 2, "no run 'nope' in the results store"),
        (["results", "import", "{tmp}/empty"], 2, "no results.json there nor in its"),
        (["results", "import", "{tmp}/none"], 2, "no such run folder"),
        (["results", "export", "--kcidb", "nope"], 2, "no run 'nope'"),
        (["results", "export", "--kcidb", "--out", "{tmp}/no/dir/k.json"], 2, "cannot write"),
        (["results", "import", "{tmp}", "--store", "::"], 2, "store URL '::' is malformed"),
        (["results", "import", "{tmp}", "--store", UNREACHABLE], 3, "cannot use the results"),
        (["results", "compare", "run-01", "run-01", "--window", "0"], 2, "positive whole"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    status: int,
    problem: str,
) -> None:
    (tmp_path / "empty").mkdir()
    (run_dir,) = write_runs(tmp_path / "reports", [[record("DMA-001")]])
    store = ["--store", f"sqlite:///{tmp_path / 'results.db'}"]
    assert main(["results", "import", str(run_dir), *store]) == 0
    capsys.readouterr()
    argv = [a.format(tmp=tmp_path) for a in args]
    assert main(argv if "--store" in argv else [*argv, *store]) == status
    line = one_error_line(capsys)
    assert problem in line and "secret" not in line


def test_no_traceback_from_the_command(tmp_path: Path) -> None:
    vfio_hil = str(Path(sys.executable).with_name("vfio-hil"))
    proc = subprocess.run(
        [vfio_hil, "results", "compare", "a", "b", "--store", f"sqlite:///{tmp_path}/r.db"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"vfio-hil: error: no run 'a' in the results store sqlite:///{tmp_path}/r.db"
    ]


def test_a_run_is_recorded_or_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir,) = write_runs(tmp_path / "reports", [[record("DMA-001")]])
    assert record_run(run_dir, None, tmp_path / "reports") is True
    assert f"recorded in sqlite:///{tmp_path / 'reports' / 'results.db'}" in capsys.readouterr().err
    assert record_run(run_dir, UNREACHABLE, tmp_path / "reports") is False
    assert "run not recorded: cannot use the results store" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("pytest_status", "lost", "recorded", "status"),
    [
        (0, False, True, 0),
        (0, False, False, 3),  # all passed, but the store did not take the run: lab trouble
        (1, False, False, 1),  # already non-zero: kept
        (0, True, True, 3),
        (2, False, False, 130),
        (4, False, True, 2),
    ],
)
def test_run_status(pytest_status: int, lost: bool, recorded: bool, status: int) -> None:
    assert run_status(pytest_status, lost, recorded) == status
