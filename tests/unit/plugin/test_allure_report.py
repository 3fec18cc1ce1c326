"""`vfio-hil report allure` with the real Allure 3 (npm, pinned in tools/allure): the checks'
allure results (made by allure-pytest under the plugin, on a fake lab) carry the platform,
area, host and check ID; two runs of one platform build up its history; the analytics beacon
is gone from every generated file; without Node.js 20+ the command says so in one line."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fake_lab import FAKE_LAB

from vfio_hil.lab.allure_report import (
    BEACON_MARKERS,
    PLATFORM_LABEL,
    AllureTool,
    beacon_traces,
    find_node,
    group_by_platform,
    install_allure,
    label_value,
    report_runs,
    strip_beacon,
)
from vfio_hil.lab.baseline import platform_key, platform_text
from vfio_hil.lab.cli import main
from vfio_hil.lab.errors import HilError, ToolError

CHECKS = '''
import pytest
from vfio_hil_pytest import check

@check("CFG-901", "config space reads back", level="MUST", spec="s")
def test_config(dut_device):
    """r"""

@check("RST-902", "reset not offered", level="SHOULD", spec="s")
def test_reset(dut_device):
    """r"""
    pytest.skip("no reset here")
'''


@pytest.fixture(scope="module")
def allure_tool() -> AllureTool:
    """The pinned Allure, installed the way `make deps` installs it when it is missing."""
    try:
        find_node()
    except ToolError as exc:
        pytest.skip(f"the Allure report needs Node.js 20 or newer: {exc}")
    return install_allure()


def one_run(pytester: pytest.Pytester, tmp_path: Path) -> Path:
    """A run of CHECKS on the fake lab; its run folder."""
    inventory = tmp_path / "inv.yml"
    inventory.write_text("all:\n  hosts:\n    lab-3: {vfio_devices: [{bdf: '3b:00.0'}]}\n")
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        f"--vfio-inventory={inventory}", f"--vfio-reports={reports}"
    )
    assert result.ret == 0, result.stdout.str()
    return (reports / "latest").resolve()


def report_data(index: Path) -> list[dict[str, Any]]:
    """The test results a single-file Allure 3 report embeds (``d(name, base64 JSON)``)."""
    found = re.findall(r'd\("(data/test-results/[^"]+)","([^"]*)"\)', index.read_text())
    return [json.loads(base64.b64decode(value)) for _, value in found]


def test_report_per_platform_builds_up_history_without_beacon(
    pytester: pytest.Pytester,
    tmp_path: Path,
    allure_tool: AllureTool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytester.makeconftest(FAKE_LAB)
    pytester.makepyfile(test_checks=CHECKS)
    first = one_run(pytester, tmp_path)
    records = json.loads((first / "results.json").read_text())["results"]
    platform_id, fields = platform_key(records[0]["platform"])
    platform = platform_text(fields)

    # The plugin labels every check's allure result: the tree is platform, area, host.
    raw = [json.loads(p.read_text()) for p in (first / "allure-results").glob("*-result.json")]
    assert {label_value(r, "check_id") for r in raw} == {"CFG-901", "RST-902"}
    for result in raw:
        check_id = label_value(result, "check_id")
        labels = {(lb["name"], lb["value"]) for lb in result["labels"]}
        assert {
            ("parentSuite", platform), (PLATFORM_LABEL, platform_id), ("subSuite", "lab-3"),
            ("suite", check_id.split("-")[0]), ("tag", check_id), ("dut", "lab-3"),
        } <= labels  # fmt: skip
        assert [lb["name"] for lb in result["labels"]].count("parentSuite") == 1

    history = tmp_path / "reports" / "allure-history" / f"{platform_id}.jsonl"
    [built] = report_runs([first], history.parent, allure_tool)
    [report] = built.platforms
    assert report.platform_id == platform_id and report.platform == platform
    assert report.index == first / "allure-report" / platform_id / "index.html"
    assert report.statuses == {"passed": 1, "skipped": 1}
    assert f'href="{platform_id}/index.html"' in built.index.read_text()
    assert len(history.read_text().splitlines()) == 1

    # The command: the latest run of --reports, its history under --reports.
    second = one_run(pytester, tmp_path)
    capsys.readouterr()
    assert main(["report", "allure", "--reports", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{second.name}: {second / 'allure-report' / 'index.html'}"
    assert out[1].startswith(f"  {second / 'allure-report' / platform_id / 'index.html'} (")
    assert len(history.read_text().splitlines()) == 2
    # Reporting runs again, elsewhere: oldest first, each replacing its history entry.
    web = tmp_path / "web"
    built = report_runs([second, first], history.parent, allure_tool, out=web)
    assert [run.index for run in built] == [web / r.name / "index.html" for r in (first, second)]
    entries = [json.loads(line)["name"] for line in history.read_text().splitlines()]
    assert entries == [f"vfio-hil run {first.name}", f"vfio-hil run {second.name}"]

    index = built[1].platforms[0].index
    data = {label_value(r, "check_id"): r for r in report_data(index)}
    assert set(data) == {"CFG-901", "RST-902"}
    assert data["CFG-901"]["groupedLabels"]["parentSuite"] == [platform]
    assert data["CFG-901"]["groupedLabels"]["tag"] == ["CFG", "CFG-901"]
    assert data["CFG-901"]["breadcrumbs"] == [[platform, "CFG", "lab-3"]]
    assert len(data["CFG-901"]["history"]) == 1  # the first run's verdict
    generated = [p for p in index.parent.rglob("*") if p.is_file()]
    assert index in generated
    for path in generated:
        content = path.read_bytes()
        assert not [m for m in BEACON_MARKERS if m in content], path
        assert beacon_traces(content) == [], path  # nor in the application it embeds
    assert b"data:text/javascript;base64," in index.read_bytes()


def test_results_without_a_platform_take_their_hosts() -> None:
    labelled = {"labels": [
        {"name": "dut", "value": "h1"}, {"name": PLATFORM_LABEL, "value": "1a2b"},
        {"name": "parentSuite", "value": "intel IOMMU"},
    ]}  # fmt: skip
    lost = {"labels": [{"name": "dut", "value": "h1"}, {"name": "parentSuite", "value": "x"}]}
    orphan: dict[str, Any] = {"labels": []}
    groups = group_by_platform([labelled, lost, orphan])
    assert groups == {"1a2b": [labelled, lost], "unknown": [orphan]}
    assert label_value(lost, "parentSuite") == "intel IOMMU"
    assert [lb["name"] for lb in lost["labels"]].count("parentSuite") == 1


def test_beacon_stripped_or_refused(tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_text(
        "<body><div id=app></div>\n"
        '<script async src="https://www.googletagmanager.com/gtag/js?id=G-X"></script>\n'
        "<script>\n window.dataLayer = window.dataLayer || [];\n"
        " function gtag(){dataLayer.push(arguments);}\n gtag('js', new Date());\n</script>\n"
        "<script>window.allure = {};</script></body>"
    )
    strip_beacon(tmp_path)
    assert page.read_text() == (
        "<body><div id=app></div>\n\n\n<script>window.allure = {};</script></body>"
    )
    bundle = base64.b64encode(b"window.dataLayer.push(1)").decode()
    (tmp_path / "single.html").write_text(f'<script src="data:text/javascript;base64,{bundle}">')
    with pytest.raises(HilError, match=r"single.html: .*beacon is still there \(dataLayer\)"):
        strip_beacon(tmp_path)
    (tmp_path / "single.html").unlink()
    (tmp_path / "app.js").write_text("fetch('https://www.googletagmanager.com/collect')")
    with pytest.raises(HilError, match=r"app.js: .*beacon is still there"):
        strip_beacon(tmp_path)


@pytest.mark.parametrize("node", [None, "v18.19.0"], ids=["missing", "too-old"])
def test_without_node_20_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    node: str | None,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if node is not None:
        (bin_dir / "node").write_text(f"#!/bin/sh\necho {node}\n")
        (bin_dir / "node").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    (tmp_path / "run" / "allure-results").mkdir(parents=True)
    assert main(["report", "allure", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "Node.js 20 or newer" in err and "Traceback" not in err
