"""Result records, results.json and the summary table."""

from __future__ import annotations

import json
from pathlib import Path

from vfio_hil.lab.report import prepare_run_dir, summary_table, verdict_counts, write_results


def rec(check: str, verdict: str, bdf: str | None = None, reason: str = "") -> dict:
    return {
        "check_id": check,
        "verdict": verdict,
        "reason": reason,
        "host": "h",
        "device": {"bdf": bdf} if bdf else None,
    }


def test_run_dir_and_latest_link(tmp_path: Path) -> None:
    first = prepare_run_dir(tmp_path, "r1")
    second = prepare_run_dir(tmp_path, "r2")
    assert first.is_dir() and second.is_dir()
    assert (tmp_path / "latest").resolve() == second.resolve()


def test_results_json_is_sorted_and_counted(tmp_path: Path) -> None:
    records = [
        rec("MMIO-001", "PASS", "0000:00:05.0"),
        rec("MMIO-001", "FAIL", "0000:00:04.0"),
        rec("CFG-001", "SKIP", "0000:00:04.0", "no edu"),
    ]
    path = write_results(tmp_path, {"id": "r"}, records)
    data = json.loads(path.read_text())
    assert [r["check_id"] for r in data["results"]] == ["CFG-001", "MMIO-001", "MMIO-001"]
    assert data["results"][1]["device"]["bdf"] == "0000:00:04.0"
    assert data["run"]["counts"] == {"PASS": 1, "FAIL": 1, "SKIP": 1, "ERROR": 0}


def test_summary_table_shows_reasons_counts_and_path(tmp_path: Path) -> None:
    records = [
        rec("PLAT-002", "FAIL", None, "interrupt remapping is not enabled"),
        rec("PLAT-001", "PASS"),
    ]
    text = summary_table(records, tmp_path / "results.json")
    assert "interrupt remapping is not enabled" in text
    assert "verdicts: 1 PASS, 1 FAIL, 0 SKIP, 0 ERROR" in text
    assert f"report:   {tmp_path}" in text
    assert verdict_counts([]) == {"PASS": 0, "FAIL": 0, "SKIP": 0, "ERROR": 0}


def test_summary_lists_figures_per_check_host_and_device(tmp_path: Path) -> None:
    measured = {
        **rec("PERF-001", "FAIL", "0000:00:06.0", "randread_4k_qd32.iops: measured ..."),
        "hot_path": "compiled",
        "baseline": {"platform_id": "1a2b3c4d5e6f", "file": "b.json", "compared": 1},
        "figures": [
            {"name": "randread_4k_qd32.iops", "value": 161234.5, "unit": "IOPS",
             "higher_is_better": True},
            {"name": "randread_4k_qd32.lat_p50", "value": 90.5, "unit": "us",
             "higher_is_better": False},
            {"name": "randread_4k_qd32.lat_p99_9", "value": 812.25, "unit": "us",
             "higher_is_better": False},
            {"name": "randread_4k_qd32.cpu_per_io", "value": 2.5, "unit": "us",
             "higher_is_better": False},
            {"name": "near_native.randread_4k_qd32", "value": 24.5, "unit": "ratio",
             "higher_is_better": True},
        ],
    }  # fmt: skip
    text = summary_table([measured, {**rec("PLAT-001", "PASS"), "figures": []}], None)
    table, rest = text.split("\nfigures:\n")
    assert "PERF-001" in table and "PLAT-001" in table
    figures, counts = rest.split("\n\n")
    assert figures.splitlines() == [
        "PERF-001  h  0000:00:06.0  [compiled; baseline 1a2b3c4d5e6f: 1 compared]",
        "    randread_4k_qd32  161234 IOPS, cpu_per_io 2.5 us",
        "                      latency us: p50 90.5  p99.9 812.2",
        "    near_native       randread_4k_qd32 24.5 ratio",
    ]
    assert counts == "verdicts: 1 PASS, 1 FAIL, 0 SKIP, 0 ERROR"
    assert "figures:" not in summary_table([rec("PLAT-001", "PASS")], None)
