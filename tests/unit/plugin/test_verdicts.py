"""The plugin's verdicts: an assertion or a VFIO refusal is FAIL, a harness exception is ERROR,
a skip is SKIP with its reason; results.json and the summary table carry them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHECKS = '''
import pytest
from vfio_hil.lab.channel import DutVfioError
from vfio_hil_pytest import check

@check("TST-001", "passes", level="MUST", spec="s")
def test_pass():
    """r"""

@check("TST-002", "assertion", level="MUST", spec="s")
def test_assert():
    """r"""
    assert 1 == 2, "the guarantee broke: 1 is not 2"

@check("TST-003", "vfio refusal", level="MUST", spec="s")
def test_vfio():
    """r"""
    raise DutVfioError({"message": "VFIO_SET_IOMMU on container: [Errno 1] EPERM",
                        "errno": 1, "ioctl": "VFIO_SET_IOMMU"})

@check("TST-004", "harness", level="MUST", spec="s")
def test_harness():
    """r"""
    raise RuntimeError("the lab broke")

@check("TST-005", "not applicable", level="INFO", spec="s")
def test_skip():
    """r"""
    pytest.skip("no such capability here")

def test_not_a_check():
    pass
'''


@pytest.fixture
def run(pytester: pytest.Pytester, tmp_path: Path) -> tuple[pytest.RunResult, dict]:
    inventory = tmp_path / "inv.yml"
    inventory.write_text("all:\n  hosts:\n    r1: {vfio_devices: ['00:04.0']}\n")
    pytester.makepyfile(test_checks=CHECKS)
    reports = tmp_path / "reports"
    result = pytester.runpytest(
        f"--vfio-inventory={inventory}", f"--vfio-reports={reports}", "-p", "no:cacheprovider"
    )
    data = json.loads((reports / "latest" / "results.json").read_text())
    return result, data


def test_verdicts_and_reasons(run: tuple[pytest.RunResult, dict]) -> None:
    _, data = run
    got = {r["check_id"]: (r["verdict"], r["reason"]) for r in data["results"]}
    assert got == {
        "TST-001": ("PASS", ""),
        "TST-002": ("FAIL", "the guarantee broke: 1 is not 2"),
        "TST-003": ("FAIL", "VFIO_SET_IOMMU on container: [Errno 1] EPERM"),
        "TST-004": ("ERROR", "RuntimeError: the lab broke"),
        "TST-005": ("SKIP", "no such capability here"),
    }
    assert data["run"]["counts"] == {"PASS": 1, "FAIL": 2, "SKIP": 1, "ERROR": 1}


def test_summary_and_exit_status(run: tuple[pytest.RunResult, dict]) -> None:
    result, _ = run
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*vfio-hil summary*", "verdicts: 1 PASS, 2 FAIL, 1 SKIP, 1 ERROR"])


def test_plugin_is_inert_without_an_inventory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_x():\n    assert True\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == 0
    assert "vfio-hil summary" not in result.stdout.str()


def test_k_selects_a_check_by_its_id(pytester: pytest.Pytester, tmp_path: Path) -> None:
    inventory = tmp_path / "inv.yml"
    inventory.write_text("all:\n  hosts:\n    r1: {vfio_devices: ['00:04.0']}\n")
    pytester.makepyfile(test_checks=CHECKS)
    reports = tmp_path / "reports"
    pytester.runpytest(
        f"--vfio-inventory={inventory}", f"--vfio-reports={reports}", "-k", "TST-002"
    )
    data = json.loads((reports / "latest" / "results.json").read_text())
    assert [r["check_id"] for r in data["results"]] == ["TST-002"]
