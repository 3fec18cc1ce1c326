"""Small synthetic run folders for the results store's tests: records as the plugin writes
them, in run folders with results.json, one hour apart."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def write_run(
    reports: Path, index: int, records: Sequence[dict[str, Any]], *, hosts: Sequence[str] = ()
) -> Path:
    """Run folder ``reports/run-<index>`` started ``index`` hours after T0."""
    run_id = f"run-{index:02d}"
    started = T0 + dt.timedelta(hours=index)
    run = {
        "id": run_id,
        "started": started.isoformat(),
        "finished": (started + dt.timedelta(minutes=5)).isoformat(),
        "hosts": list(hosts) or sorted({r["host"] for r in records}),
        "exit_status": int(any(r["verdict"] in ("FAIL", "ERROR") for r in records)),
        "vfio_hil_version": "0.1.0",
        "controller": {"hostname": "ctl"},
    }
    run_dir = reports / run_id
    run_dir.mkdir(parents=True)
    document = {"run": run, "results": list(records)}
    (run_dir / "results.json").write_text(json.dumps(document))
    return run_dir


def write_runs(reports: Path, runs: Sequence[Sequence[dict[str, Any]]]) -> list[Path]:
    """One run folder per list of records, in order."""
    return [write_run(reports, i, records) for i, records in enumerate(runs, start=1)]
