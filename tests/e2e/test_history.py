"""Run history on the rack: every `vfio-hil run` of the e2e session records into one results
store (conftest's ``e2e_store``), as a lab's nightly runs do. On an NVMe-only platform that has
clean runs (the suite run and the five-run test's), a regression is seeded on the DUT itself:
someone turned on ``vfio_iommu_type1.allow_unsafe_interrupts``. The dashboard, opened in headless
Chromium, must show that regression on that platform and check, and the figure trends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from browser import rendered_dom, screenshot
from matplotlib import image
from rackutil import (
    E2E_INVENTORY,
    QUICK_PERF,
    REPEAT_HOST,
    CliRun,
    cli,
    dut_shell,
    run_cli,
)

from vfio_hil.lab.baseline import platform_key
from vfio_hil.lab.rack import VirtualRack
from vfio_hil.results import ResultsStore

pytestmark = pytest.mark.e2e

HOST = REPEAT_HOST
UNSAFE = "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
#: The check that covers the seeded fault (unsafe VFIO modes are off).
SEEDED_CHECK = "PLAT-003"


def _run(tmp_path: Path, name: str) -> CliRun:
    return run_cli(
        ["run", "--inventory", str(E2E_INVENTORY), "--limit", HOST, "--", *QUICK_PERF],
        tmp_path / name,
    )


def _platform_id(run: CliRun) -> str:
    records = [r for r in run.results["results"] if r["host"] == HOST]
    platforms = {platform_key(r["platform"])[0] for r in records}
    assert len(platforms) == 1, platforms
    return platforms.pop()


def test_the_dashboard_shows_a_seeded_regression(
    suite_run: dict[str, Any], e2e_rack: VirtualRack, e2e_store: str, tmp_path: Path
) -> None:
    platform_id = _platform_id(suite_run["run"])
    with ResultsStore.open(e2e_store) as store:
        clean = len(store.runs(platform_id))
    # Two clean runs at least before the seeded one (alone, this test makes its own).
    for i in range(max(0, 2 - clean)):
        assert _run(tmp_path, f"clean{i}").returncode == 0

    dut_shell(e2e_rack, HOST, f"modprobe vfio_iommu_type1 && echo Y > {UNSAFE}")
    try:
        seeded = _run(tmp_path, "seeded")
    finally:
        dut_shell(e2e_rack, HOST, f"echo N > {UNSAFE}")
    assert seeded.returncode == 1, seeded.stderr[-2000:]
    assert f"recorded in {e2e_store}" in seeded.stderr
    failed = {r["check_id"] for r in seeded.results["results"] if r["verdict"] == "FAIL"}
    assert failed == {SEEDED_CHECK}, failed
    assert _platform_id(seeded) == platform_id  # a parameter is no platform fact

    site = tmp_path / "site"
    made = run_cli(["dashboard", "--out", str(site)], tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    index = site / "index.html"
    assert made.stdout.strip() == f"dashboard: {index}"

    # The matrix: a regression on this platform's PLAT-003, on no other platform's.
    dom = rendered_dom(index)
    (row,) = [r for r in dom.find_all("tr", data_check=SEEDED_CHECK)]
    cells = {c.attrs["data-platform"]: c for c in row.find_all("td") if "data-platform" in c.attrs}
    assert len(cells) >= 2  # the suite run's platforms are there too
    assert cells[platform_id].attrs["data-verdict"] == "FAIL"
    marked = {p for p, c in cells.items() if "regression" in c.attrs["class"].split()}
    assert marked == {platform_id}

    # The platform's page: the regression names the check and the host (a host check: no
    # device), the history strip ends with it, and the figures have their trends.
    page = rendered_dom(site / f"platform-{platform_id}.html")
    regressions = page.find_all("tr", data_kind="regression")
    assert [(r.attrs["data-check"], r.attrs["data-device"]) for r in regressions] == [
        (SEEDED_CHECK, f"{HOST} -")
    ]
    assert "allow_unsafe_interrupts" in regressions[0].all_text()
    (strip,) = page.find_all("table", id="history")[0].find_all("tr", data_check=SEEDED_CHECK)
    verdicts = [c.attrs["data-verdict"] for c in strip.find_all("td") if "data-verdict" in c.attrs]
    assert verdicts[-1] == "FAIL" and len(verdicts) >= 3 and set(verdicts[:-1]) == {"PASS"}
    trends = page.find_all("figure", data_check="PERF-001")
    assert trends, "no figure trend of PERF-001"
    for trend in trends:
        assert (site / trend.find_all("img")[0].attrs["src"]).is_file()

    png = screenshot(site / f"platform-{platform_id}.html", tmp_path / "platform.png")
    pixels = image.imread(png)[:, :, :3]
    assert (pixels < 0.95).any(axis=2).mean() > 0.02

    # The same regression through `results compare`, from the suite run to the seeded one.
    suite_id = suite_run["run"].results["run"]["id"]
    seeded_id = seeded.results["run"]["id"]
    compared = cli(["results", "compare", suite_id, seeded_id])
    assert compared.returncode == 0, compared.stderr[-2000:]
    rows = [line.split() for line in compared.stdout.splitlines()]
    assert [platform_id, SEEDED_CHECK, HOST, "-", "regression", "PASS", "->", "FAIL"] in [
        r[:8] for r in rows
    ], compared.stdout[-3000:]

    # And the whole session's store as KCIDB v5 (the export validates before it writes).
    kcidb = tmp_path / "kcidb.json"
    exported = cli(["results", "export", "--kcidb", "--out", str(kcidb)])
    assert exported.returncode == 0, exported.stderr[-2000:]
    document = json.loads(kcidb.read_text())
    tests = [t for t in document["tests"] if t["path"] == f"vfio.plat.{SEEDED_CHECK}"]
    assert {t["status"] for t in tests} >= {"PASS", "FAIL"}
