"""Baselines: median over runs, tolerances, the judgement, and `vfio-hil baseline save|show`
on real run folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sample_records import PLATFORM

from vfio_hil.core.perf import Figure
from vfio_hil.lab.baseline import (
    DEFAULT_TOLERANCES,
    BaselineStore,
    CheckBaseline,
    Expected,
    Subject,
    judge,
    parse_tolerance,
    platform_key,
    platform_text,
    tolerance_for,
)
from vfio_hil.lab.cli import main
from vfio_hil.lab.errors import BaselineError

PLATFORM_ID = platform_key(PLATFORM)[0]


def record(check: str, iops: float, p99: float, verdict: str = "PASS") -> dict[str, Any]:
    return {
        "check_id": check,
        "verdict": verdict,
        "host": "vdut0",
        "device": {"bdf": "0000:00:06.0", "vendor_device": "1b36:0010"},
        "platform": PLATFORM,
        "hot_path": "compiled",
        "figures": [
            Figure("randread_4k_qd32.iops", iops, "IOPS", True).to_dict(),
            Figure("randread_4k_qd32.lat_p99", p99, "us", False).to_dict(),
        ],
    }


def write_run(reports: Path, run_id: str, records: list[dict[str, Any]]) -> Path:
    run_dir = reports / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"run": {"id": run_id}, "results": records}))
    return run_dir


def expected(value: float, higher_is_better: bool, tolerance: float | None) -> CheckBaseline:
    unit = "IOPS" if higher_is_better else "us"
    exp = Expected("w.x", value, unit, higher_is_better, tolerance, (value,))
    return CheckBaseline(Subject("PERF-001", "1b36:0010", "compiled"), ("r1",), {"w.x": exp})


def test_platform_key_is_stable_and_ignores_what_is_not_the_platform() -> None:
    pid, fields = platform_key(PLATFORM)
    assert len(pid) == 12 and int(pid, 16) >= 0
    assert fields["interrupt_remapping"] is True and fields["iommu_mode"] == "DMA-FQ"
    assert platform_key({**PLATFORM, "kernel_cmdline": "quiet"})[0] == pid
    assert platform_key(dict(reversed(list(PLATFORM.items()))))[0] == pid
    for field, other in [
        ("kernel_release", "6.12.9-amd64"),
        ("accel", "kvm"),
        ("cpu_model", "x"),
        ("iommu_mode", "identity"),
        ("interrupt_remapping", False),
    ]:
        assert platform_key({**PLATFORM, field: other})[0] != pid


def test_platform_text_names_iommu_mode_and_interrupt_remapping() -> None:
    text = platform_text(platform_key(PLATFORM)[1])
    assert text.startswith("intel IOMMU (DMA-FQ), interrupt remapping on, kernel 6.1.0-28-amd64")


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [
        ("randread_4k_qd32.iops", 0.25),
        ("seqread_128k_qd8.mib_s", 0.25),
        ("dma_map_unmap_4k.rate", 0.25),
        ("near_native.randread_4k_qd32", 0.25),
        ("randread_4k_qd1.lat_mean", 0.35),
        ("msi_delivery.lat_p50", 0.35),
        ("randread_4k_qd1.lat_p90", 0.35),
        ("randread_4k_qd32.cpu_per_io", 0.35),
        ("randread_4k_qd1.lat_min", None),
        ("randread_4k_qd1.lat_max", None),
        ("randread_4k_qd1.lat_p99", None),
        ("randread_4k_qd1.lat_p99_9", None),
        ("randread_4k_qd1.lat_p99_99", None),
        ("something.new", None),
    ],
)
def test_default_tolerances(name: str, tolerance: float | None) -> None:
    assert tolerance_for(name) == tolerance


def test_a_tolerance_given_first_wins() -> None:
    table = [parse_tolerance("*.iops=10%"), parse_tolerance("*.lat_p99=none"), *DEFAULT_TOLERANCES]
    assert tolerance_for("randread_4k_qd32.iops", table) == pytest.approx(0.10)
    assert tolerance_for("randread_4k_qd32.mib_s", table) == 0.25
    assert parse_tolerance("*.lat_p99=40") == ("*.lat_p99", 0.4)


@pytest.mark.parametrize("text", ["*.iops", "*.iops=", "=25", "*.iops=fast", "*.iops=-5"])
def test_malformed_tolerances_are_refused(text: str) -> None:
    with pytest.raises(BaselineError, match="tolerance"):
        parse_tolerance(text)


@pytest.mark.parametrize(
    ("higher_is_better", "measured", "regressed"),
    [
        # IOPS expected 1000 within 25%: 750 is exactly at the tolerance.
        (True, 750.0, False),
        (True, 749.0, True),
        (True, 5000.0, False),  # better is never a regression
        # A latency expected 1000 us within 25%: 1250 is exactly at the tolerance.
        (False, 1250.0, False),
        (False, 1251.0, True),
        (False, 1.0, False),
    ],
)
def test_judge_both_directions_and_the_edges(
    higher_is_better: bool, measured: float, regressed: bool
) -> None:
    baseline = expected(1000.0, higher_is_better, 0.25)
    unit = "IOPS" if higher_is_better else "us"
    found = judge([Figure("w.x", measured, unit, higher_is_better)], baseline, "1a2b3c4d5e6f")
    assert bool(found) is regressed


def test_unjudged_and_unknown_figures_never_regress() -> None:
    untolerated = expected(1000.0, True, None)
    assert judge([Figure("w.x", 1.0, "IOPS", True)], untolerated, "p") == []
    assert judge([Figure("other.iops", 1.0, "IOPS", True)], expected(1000.0, True, 0.25), "p") == []


def test_a_figure_measured_in_another_unit_cannot_be_judged() -> None:
    with pytest.raises(BaselineError, match="measured in ns"):
        judge([Figure("w.x", 1.0, "ns", False)], expected(1000.0, False, 0.25), "p")


def test_regression_text_names_figure_expected_tolerance_and_measured() -> None:
    iops = Expected("randread_4k_qd32.iops", 330000.0, "IOPS", True, 0.25, ())
    baseline = CheckBaseline(
        Subject("PERF-001", "1b36:0010", "compiled"), ("20261126-101500-1a2b",), {iops.name: iops}
    )
    [regression] = judge(
        [Figure("randread_4k_qd32.iops", 161234.0, "IOPS", True)], baseline, "1a2b3c4d5e6f"
    )
    assert regression.text() == (
        "randread_4k_qd32.iops: measured 161234 IOPS, expected 330000 IOPS within 25% "
        "(baseline 1a2b3c4d5e6f from run 20261126-101500-1a2b)"
    )


def test_save_keeps_the_median_of_three_runs_and_show_lists_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    runs = [
        write_run(reports, "r1", [record("PERF-001", 300000.0, 90.0)]),
        # An ERROR's figures are the lab's, not the platform's: never saved.
        write_run(reports, "r2", [record("PERF-001", 330000.0, 70.0),
                                  record("PERF-001", 1.0, 1.0, verdict="ERROR")]),
        write_run(reports, "r3", [record("PERF-001", 310000.0, 500.0)]),
    ]  # fmt: skip
    baselines = tmp_path / "bl"
    assert main(["baseline", "save", *map(str, runs), "--baselines", str(baselines)]) == 0
    out = capsys.readouterr().out
    assert f"{baselines / PLATFORM_ID}.json: 2 figures of PERF-001 (median of 3 runs" in out

    data = json.loads((baselines / f"{PLATFORM_ID}.json").read_text())
    assert data["format"] == 1 and data["platform_id"] == PLATFORM_ID
    assert data["platform"]["kernel_release"] == "6.1.0-28-amd64"
    [check] = data["checks"]
    assert (check["check_id"], check["device"], check["hot_path"]) == (
        "PERF-001", "1b36:0010", "compiled",
    )  # fmt: skip
    assert check["runs"] == ["r1", "r2", "r3"]
    assert check["figures"]["randread_4k_qd32.iops"] == {
        "value": 310000.0,
        "unit": "IOPS",
        "higher_is_better": True,
        "tolerance": 0.25,
        "samples": [300000.0, 330000.0, 310000.0],
    }
    assert check["figures"]["randread_4k_qd32.lat_p99"]["value"] == 90.0
    assert check["figures"]["randread_4k_qd32.lat_p99"]["tolerance"] is None

    assert main(["baseline", "show", "--baselines", str(baselines)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{baselines / PLATFORM_ID}.json: 2 figures of PERF-001 (intel")
    assert "QEMU 7.2.22 (tcg)" in shown


def test_saving_again_replaces_the_checks_it_holds_and_keeps_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VFIO_HIL_BASELINES", str(tmp_path / "env-dir"))
    reports = tmp_path / "reports"
    both = write_run(
        reports, "r1", [record("PERF-001", 1000.0, 9.0), record("PERF-002", 2000.0, 9.0)]
    )
    again = write_run(reports, "r2", [record("PERF-001", 4000.0, 9.0)])
    assert main(["baseline", "save", str(both), "--tolerance", "*.iops=10"]) == 0
    assert main(["baseline", "save", str(again)]) == 0
    out = capsys.readouterr().out.splitlines()[-1]
    assert "replaced the previous figures of PERF-001; kept PERF-002" in out

    saved = BaselineStore(tmp_path / "env-dir").load(PLATFORM_ID)
    assert saved is not None
    iops = {c.subject.check_id: c.figures["randread_4k_qd32.iops"] for c in saved.checks}
    assert (iops["PERF-001"].value, iops["PERF-001"].tolerance) == (4000.0, 0.25)
    assert (iops["PERF-002"].value, iops["PERF-002"].tolerance) == (2000.0, 0.10)


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    plain = write_run(reports, "r1", [{"check_id": "PLAT-001", "verdict": "PASS"}])
    broken = tmp_path / "bl" / "0123456789ab.json"
    broken.parent.mkdir()
    broken.write_text('{"format": 1, "checks": "x"}')
    cases = [
        (["baseline", "save", str(tmp_path / "nope")], "no such run"),
        (["baseline", "save", str(plain)], "run r1 ("),
        (["baseline", "save", str(plain), "--tolerance", "*.iops=lots"], "is not a percentage"),
        (["baseline", "show", "--baselines", str(broken.parent)], "malformed baseline"),
    ]
    for argv, problem in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and problem in err, err
