"""PERF figures judged against a saved baseline on the virtual rack, as a lab would do it:
run, `vfio-hil baseline save`, run again. A baseline of the measured figures PASSes; a baseline
twice the measured rate makes the PERF check FAIL, naming the figure, the expected and the
measured value.

The judged figure is PERF-004's 4 KiB DMA map+unmap rate (every other figure left unjudged):
it is measured on the DUT's CPU alone, the steadiest of the PERF figures on an emulated rack
shared with other VMs (the 2 MiB rate moved by half from one run to the next on a loaded
controller). Its tolerance is 40 % rather than the default 25 % for rates: with thirteen
machines on two cores the 4 KiB rate moved by 26 % between two runs a minute apart, and a
baseline of twice the rate (the measured figure 50 % below) still lies outside it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from rackutil import E2E_INVENTORY, REPEAT_HOST, VFIO_HIL, CliRun, run_cli

from vfio_hil.lab.rack import VirtualRack

pytestmark = pytest.mark.e2e

#: An NVMe-only platform: its setup takes half the time of e2e-intel's seven devices.
HOST = REPEAT_HOST
CHECK = "PERF-004"
RATES = ("dma_map_unmap_4k.rate",)
TOLERANCES = ["--tolerance", "dma_map_unmap_4k.rate=40", "--tolerance", "*=none"]


def _perf_run(reports: Path) -> dict:
    run: CliRun = run_cli(
        ["run", "--inventory", str(E2E_INVENTORY), "--limit", HOST, "--", "-k", CHECK,
         "--perf-seconds", "2"],
        reports,
    )  # fmt: skip
    records = [r for r in run.results["results"] if r["check_id"] == CHECK]
    assert len(records) == 1, run.stderr[-2000:]
    return {"rc": run.returncode, "record": records[0], "dir": (reports / "latest").resolve()}


def test_a_baseline_judges_the_perf_check(e2e_rack: VirtualRack, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    baselines = reports / "baselines"  # where run_cli points the runs' baselines

    first = _perf_run(reports)
    record = first["record"]
    assert (first["rc"], record["verdict"], record["baseline"]) == (0, "PASS", None)
    assert "no baseline" in record["reason"] and record["hot_path"] == "compiled"
    measured = {f["name"]: f["value"] for f in record["figures"]}
    assert set(RATES) <= set(measured) and all(measured[r] > 0 for r in RATES)

    saved = subprocess.run(
        [VFIO_HIL, "baseline", "save", str(first["dir"]), "--baselines", str(baselines),
         *TOLERANCES],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    (path,) = baselines.glob("*.json")

    # The measured figures themselves: PASS, the rate compared.
    again = _perf_run(reports)
    assert again["record"]["verdict"] == "PASS", again["record"]["reason"]
    assert again["record"]["baseline"]["compared"] == len(RATES)

    # Twice the measured rate: FAIL, naming the figure, what was expected and what came.
    data = json.loads(path.read_text())
    for entry in data["checks"]:
        for name in RATES:
            entry["figures"][name]["value"] *= 2
    path.write_text(json.dumps(data))
    doubled = _perf_run(reports)
    reason = doubled["record"]["reason"]
    assert (doubled["rc"], doubled["record"]["verdict"]) == (1, "FAIL"), reason
    for name in RATES:
        expected = 2 * measured[name]
        assert f"{name}: measured " in reason
        assert f"expected {expected:.0f} ops/s within 40%" in reason or (
            f"expected {expected:.4g} ops/s within 40%" in reason
        ), reason
