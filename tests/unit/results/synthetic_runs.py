"""Small synthetic run folders for the results store's tests: records as the plugin writes
them, in run folders with results.json, one hour apart."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from sample_platform import PLATFORM

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def record(
    check_id: str,
    verdict: str = "PASS",
    *,
    host: str = "vdut0",
    bdf: Optional[str] = "0000:00:06.0",
    variant: str = "",
    platform: Optional[dict[str, Any]] = None,
    figures: Sequence[tuple[str, float, str, bool]] = (),
    reason: str = "",
) -> dict[str, Any]:
    """A result record of ``check_id`` on ``host`` (and device ``bdf``), its pytest parameter
    id ``host/bdf-variant``; ``figures`` as (name, value, unit, higher_is_better)."""
    params = f"{host}/{bdf}" if bdf else host
    return {
        "check_id": check_id,
        "title": f"title of {check_id}",
        "level": "MUST",
        "spec": "s",
        "verdict": verdict,
        "reason": reason or ("" if verdict == "PASS" else f"{check_id} said {verdict}"),
        "host": host,
        "device": {"bdf": bdf, "vendor_device": "1b36:0010", "identity": {"serial": "hil6"}}
        if bdf
        else None,
        "platform": platform or PLATFORM,
        "duration_s": 0.5,
        "evidence": f"evidence/{check_id}.json",
        "figures": [
            {"name": n, "value": v, "unit": u, "higher_is_better": h} for n, v, u, h in figures
        ],
        "hot_path": "compiled" if figures else None,
        "baseline": None,
        "nodeid": f"test_x.py::test_{check_id}[{params}{'-' + variant if variant else ''}]",
        "engine": None,
        "backend": variant or None,
        "hotplug_way": None,
    }


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
