"""A check's figures reach every output (results.json, junit.xml properties, the allure
result, the summary) and are judged against the platform's baseline: none PASSes saying so,
one equal to the measured figures PASSes, one twice the measured IOPS FAILs naming it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from fake_lab import FAKE_LAB

from vfio_hil.lab.baseline import platform_key
from vfio_hil.lab.cli import main

CHECKS = '''
from vfio_hil.core.perf import Figure
from vfio_hil_pytest import check

@check("PERF-901", "random reads", level="INFO", spec="s")
def test_randread(dut_device, figures):
    """r"""
    figures.record(
        [
            Figure("randread_4k_qd32.iops", 161234.5, "IOPS", True),
            Figure("randread_4k_qd32.lat_p99_9", 812.25, "us", False),
        ],
        hot_path="compiled",
    )
    figures.judge()

@check("PERF-902", "measures nothing", level="INFO", spec="s")
def test_plain(dut_device):
    """r"""
'''


def run(pytester: pytest.Pytester, tmp_path: Path, baselines: Path) -> tuple[Any, dict, Path]:
    """One run of the checks; the record of PERF-901 and the run folder."""
    inventory = tmp_path / "inv.yml"
    inventory.write_text("all:\n  hosts:\n    lab-3: {vfio_devices: [{bdf: '3b:00.0'}]}\n")
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        f"--vfio-inventory={inventory}", f"--vfio-reports={reports}",
        f"--vfio-baselines={baselines}",
    )  # fmt: skip
    run_dir = (reports / "latest").resolve()
    records = json.loads((run_dir / "results.json").read_text())["results"]
    by_check = {r["check_id"]: r for r in records}
    assert by_check["PERF-902"]["figures"] == [] and by_check["PERF-902"]["hot_path"] is None
    return result, by_check["PERF-901"], run_dir


def allure_result(run_dir: Path) -> tuple[dict, list[dict]]:
    """The allure result of PERF-901 and the figures of its "figures" attachment."""
    allure_dir = run_dir / "allure-results"
    results = [json.loads(p.read_text()) for p in allure_dir.glob("*-result.json")]
    [result] = [r for r in results if {"name": "check_id", "value": "PERF-901"} in r["labels"]]
    [attachment] = [a for a in result["attachments"] if a["name"] == "figures"]
    return result, json.loads((allure_dir / attachment["source"]).read_text())


def test_figures_in_every_output_and_judged_against_the_baseline(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makeconftest(FAKE_LAB)
    pytester.makepyfile(test_checks=CHECKS)
    baselines = tmp_path / "baselines"
    figures = [
        {"name": "randread_4k_qd32.iops", "value": 161234.5, "unit": "IOPS",
         "higher_is_better": True},
        {"name": "randread_4k_qd32.lat_p99_9", "value": 812.25, "unit": "us",
         "higher_is_better": False},
    ]  # fmt: skip

    # No baseline: PASS, the figures reported only.
    result, record, first_run = run(pytester, tmp_path, baselines)
    assert result.ret == 0, result.stdout.str()
    platform_id = platform_key(record["platform"])[0]
    assert record["verdict"] == "PASS"
    assert record["reason"] == f"no baseline for platform {platform_id}: figures reported only"
    assert (record["figures"], record["hot_path"], record["baseline"]) == (
        figures, "compiled", None,
    )  # fmt: skip

    tree = ET.parse(first_run / "junit.xml")
    [case] = [c for c in tree.iter("testcase") if c.get("name", "").startswith("test_randread")]
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["figure:randread_4k_qd32.iops"] == "161234.5 IOPS"
    assert properties["figure:randread_4k_qd32.lat_p99_9"] == "812.25 us"

    allure, attached = allure_result(first_run)
    assert attached == figures
    parameters = {p["name"]: p for p in allure["parameters"]}
    assert parameters["randread_4k_qd32.iops"]["value"] == "'161234.5 IOPS'"
    assert parameters["randread_4k_qd32.iops"]["excluded"] is True

    summary = result.stdout.str()
    assert "figures:" in summary
    assert "PERF-901  lab-3  0000:3b:00.0  [compiled; no baseline: reported only]" in summary
    assert "    randread_4k_qd32  161234 IOPS" in summary
    assert "latency us: p99.9 812.2" in summary

    # A baseline equal to the measured figures: PASS, one figure compared (p99.9 is a tail).
    assert main(["baseline", "save", str(first_run), "--baselines", str(baselines)]) == 0
    result, record, _ = run(pytester, tmp_path, baselines)
    assert result.ret == 0, result.stdout.str()
    baseline_file = str(baselines / f"{platform_id}.json")
    assert (record["verdict"], record["reason"]) == ("PASS", "")
    assert record["baseline"] == {
        "platform_id": platform_id, "file": baseline_file, "compared": 1,
    }  # fmt: skip

    # A baseline twice the measured IOPS: FAIL, naming the figure, expected and measured.
    saved = json.loads(Path(baseline_file).read_text())
    saved["checks"][0]["figures"]["randread_4k_qd32.iops"]["value"] = 2 * 161234.5
    Path(baseline_file).write_text(json.dumps(saved))
    result, record, _ = run(pytester, tmp_path, baselines)
    assert result.ret == 1
    assert record["verdict"] == "FAIL"
    assert record["reason"] == (
        "randread_4k_qd32.iops: measured 161234 IOPS, expected 322469 IOPS within 25% "
        f"(baseline {platform_id} from run {first_run.name})"
    )
    assert record["baseline"]["compared"] == 1
    assert record["figures"] == figures
