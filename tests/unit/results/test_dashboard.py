"""The dashboard, opened in a real browser: three runs on two platforms with a seeded
regression between the second and the third, read back from the DOM Chromium rendered and
from its screenshot."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from browser import Element, chromium, rendered_dom, screenshot
from matplotlib import image
from sample_records import PLATFORM, record
from synthetic_runs import write_runs

from vfio_hil.lab import cli
from vfio_hil.lab.baseline import platform_key
from vfio_hil.results import ResultsStore
from vfio_hil.results.dashboard import build_dashboard

pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium is not installed")

AMD = {**PLATFORM, "iommu": "amd", "kernel_release": "6.12.9-amd64"}
INTEL_ID = platform_key(PLATFORM)[0]
AMD_ID = platform_key(AMD)[0]
NVME = "0000:00:06.0"
EDU = "0000:00:09.0"


def _perf(iops: float, platform: dict[str, Any], host: str = "vdut0") -> dict[str, Any]:
    figures = [("randread_4k_qd1.iops", iops, "IOPS", True), ("x.lat_max", 9.0, "us", False)]
    return record("PERF-001", host=host, platform=platform, figures=figures)


def _run(n: int) -> list[dict[str, Any]]:
    """Run ``n`` (1..3) on both platforms: ISO-001 on the Intel platform's NVMe regresses
    in run 3 and its IOPS fall by half; IRQ-001 on the AMD platform flips every run."""
    iso = "FAIL" if n == 3 else "PASS"
    return [
        record("PLAT-001", bdf=None),
        record("ISO-001", iso, reason="a DMA outside the domain reached memory" if n == 3 else ""),
        record("ISO-001", bdf=EDU),
        _perf({1: 40000, 2: 42000, 3: 20000}[n], PLATFORM),
        record("PLAT-001", bdf=None, host="amd0", platform=AMD),
        record("IRQ-001", "FAIL" if n == 2 else "PASS", host="amd0", platform=AMD),
        _perf(30000 + n * 100, AMD, "amd0"),
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reports = tmp_path_factory.mktemp("reports")
    runs = write_runs(reports, [_run(n) for n in (1, 2, 3)])
    for run_dir in runs:  # the evidence the records name, and a junit.xml
        (run_dir / "evidence").mkdir()
        for check in ("PLAT-001", "ISO-001", "PERF-001", "IRQ-001"):
            (run_dir / "evidence" / f"{check}.json").write_text("{}")
        (run_dir / "junit.xml").write_text("<testsuites/>")
    with ResultsStore.open(reports=reports) as store:
        for run_dir in runs:
            store.add_run(run_dir)
        index = build_dashboard(store, reports / "dashboard")
    return {"index": index, "reports": reports, "dom": rendered_dom(index)}


def _cells(dom: Element, table: str) -> list[Element]:
    found = dom.find_all("table", id=table)
    assert found, f"no table {table}"
    return found[0].find_all("td")


def test_the_matrix_shows_the_regression_on_its_platform_and_check(site: dict[str, Any]) -> None:
    dom = site["dom"]
    row = dom.find_all("tr", data_check="ISO-001")[0]
    cells = {c.attrs["data-platform"]: c for c in row.find_all("td") if "data-platform" in c.attrs}
    assert cells[INTEL_ID].attrs["data-verdict"] == "FAIL"
    assert "regression" in cells[INTEL_ID].attrs["class"].split()
    # The AMD platform has no ISO-001: an empty cell, no verdict.
    assert AMD_ID not in cells
    irq = dom.find_all("tr", data_check="IRQ-001")[0]
    amd = next(c for c in irq.find_all("td") if c.attrs.get("data-platform") == AMD_ID)
    assert amd.attrs["data-verdict"] == "PASS" and "flaky" in amd.attrs["class"].split()
    assert "regression" not in amd.attrs["class"].split()
    plat = dom.find_all("tr", data_check="PLAT-001")[0]
    assert [c.attrs.get("data-verdict") for c in plat.find_all("td")] == ["PASS", "PASS"]


def test_the_platform_page_names_the_regression_device_and_figures(
    site: dict[str, Any],
) -> None:
    page = site["index"].with_name(f"platform-{INTEL_ID}.html")
    dom = rendered_dom(page)
    changes = dom.find_all("tr", data_kind="regression")
    assert [(c.attrs["data-check"], c.attrs["data-device"]) for c in changes] == [
        ("ISO-001", f"vdut0 {NVME}")
    ]
    assert "a DMA outside the domain reached memory" in changes[0].all_text()
    failing = dom.find_all("tr", data_kind="failing since")
    assert [c.attrs["data-check"] for c in failing] == ["ISO-001"]
    assert "run-03" in failing[0].all_text()
    figure = dom.find_all("tr", data_kind="figure regression")
    assert figure and "randread_4k_qd1.iops" in figure[0].all_text()
    # The history strip of the regressed check: PASS, PASS, FAIL, oldest first.
    history = dom.find_all("table", id="history")[0]
    strip = history.find_all("tr", data_check="ISO-001", data_device=f"vdut0 {NVME}")
    cells = [c for c in strip[0].find_all("td") if "data-verdict" in c.attrs]
    assert [c.attrs["data-verdict"] for c in cells] == ["PASS", "PASS", "FAIL"]
    # A trend for the judged figure, none for the tail latency (no tolerance).
    trends = dom.find_all("figure", data_check="PERF-001")
    assert [t.attrs["data-figure"] for t in trends] == ["randread_4k_qd1.iops"]
    assert "regressed" in trends[0].attrs.get("class", "")
    chart = page.parent / trends[0].find_all("img")[0].attrs["src"]
    svg = chart.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "trailing median" in svg


def test_every_link_opens_from_disk_and_nothing_comes_from_the_network(
    site: dict[str, Any],
) -> None:
    out = site["index"].parent
    pages = sorted(out.glob("*.html"))
    assert len(pages) == 3  # the index and two platforms
    targets = set()
    for page in pages:
        text = page.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), page
        assert "<script" not in text
        for href in re.findall(r"(?:src|href)=\"([^\"#]+)", text):
            targets.add((page.parent / href).resolve())
    assert all(t.exists() for t in targets), [t for t in targets if not t.exists()]
    # Each run's results, junit and evidence are linked.
    linked = {t.relative_to(site["reports"].resolve()).as_posix() for t in targets}
    assert {"run-03/results.json", "run-03/junit.xml", "run-03/evidence/ISO-001.json"} <= linked


def test_the_screenshot_is_not_blank_and_shows_the_failure(
    site: dict[str, Any], tmp_path: Path
) -> None:
    png = screenshot(site["index"], tmp_path / "index.png")
    pixels = image.imread(png)[:, :, :3]
    assert pixels.shape[0] >= 900 and pixels.shape[1] >= 1300
    not_white = (pixels < 0.95).any(axis=2).mean()
    assert not_white > 0.02, f"only {not_white:.1%} of the page is drawn"
    # The FAIL cell's colour (#f5b5b5) is on the screen.
    fail = (abs(pixels - [0xF5 / 255, 0xB5 / 255, 0xB5 / 255]) < 0.02).all(axis=2)
    assert fail.sum() > 50


def test_a_run_of_a_few_checks_keeps_the_others_latest_verdicts(tmp_path: Path) -> None:
    runs = write_runs(
        tmp_path,
        [[record("PLAT-001", bdf=None), record("ISO-001", "FAIL")], [record("PLAT-001", bdf=None)]],
    )
    with ResultsStore.open(reports=tmp_path) as store:
        for run_dir in runs:
            store.add_run(run_dir)
        index = build_dashboard(store, tmp_path / "site")
    dom = rendered_dom(index)
    verdicts = {
        row.attrs["data-check"]: [c.attrs.get("data-verdict") for c in row.find_all("td")]
        for row in dom.find_all("table", id="matrix")[0].find_all("tr")
        if "data-check" in row.attrs
    }
    assert verdicts == {"ISO-001": ["FAIL"], "PLAT-001": ["PASS"]}
    page = rendered_dom(index.with_name(f"platform-{INTEL_ID}.html"))
    missing = page.find_all("tr", data_kind="missing")
    assert [m.attrs["data-check"] for m in missing] == ["ISO-001"]


def test_an_empty_store_gives_a_page_that_says_so(tmp_path: Path) -> None:
    with ResultsStore.open(reports=tmp_path) as store:
        index = build_dashboard(store, tmp_path / "site")
    assert rendered_dom(index).find_all("p", id="empty")


def test_the_cli_writes_the_site_and_says_where(
    site: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "site"
    assert cli.main(["dashboard", "--reports", str(site["reports"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"dashboard: {out / 'index.html'}"
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert cli.main(["dashboard", "--reports", str(site["reports"]), "--out", str(blocked)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"vfio-hil: error: cannot write the dashboard to {blocked}"
    )
