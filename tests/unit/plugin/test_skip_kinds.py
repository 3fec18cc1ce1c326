"""Every SKIP record says why in general, as its ``skip_kind``: the kind the check (or the
fixture) named with ``skip(kind, reason)``, ``capability`` for a check no device of the
inventory can run, ``backend`` for an IOMMU backend the DUT lacks, ``unclassified`` for a
plain ``pytest.skip``; no conformance check SKIPs without naming its kind. The run's
results.json has its check plan."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from xml.etree import ElementTree

import pytest
from fake_lab import FAKE_LAB

from vfio_hil_pytest import CheckSkipped, skip
from vfio_hil_pytest.catalogue import CONFORMANCE_DIR
from vfio_hil_pytest.plugin import _require_engine

CHECKS = '''
import pytest
from vfio_hil_pytest import check, skip

@check("TST-020", "passes", level="MUST", spec="s")
def test_passes(dut_device):
    """r"""

@check("TST-021", "skips with a kind", level="MUST", spec="s")
def test_kind(dut_device):
    """r"""
    skip("kernel", "the kernel lacks the VFIO_UNMAP_ALL extension")

@check("TST-022", "skips without one", level="MUST", spec="s")
def test_plain(dut_device):
    """r"""
    pytest.skip("not today")

@check("TST-023", "needs what no device has", level="MUST", spec="s", needs=("warp-drive",))
def test_no_device(dut_device):
    """r"""

@check("TST-024", "under iommufd", level="MUST", spec="s", backends=("iommufd",))
def test_backend(dut_device, iommu_backend):
    """r"""
'''


@pytest.fixture
def run(pytester: pytest.Pytester, tmp_path: Path) -> tuple[pytest.RunResult, dict[str, Any]]:
    """The checks above on the fake lab's NVMe (its kernel offers no iommufd)."""
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "all:\n  hosts:\n    lab-3: {vfio_devices: [{bdf: '3b:00.0', model: nvme}]}\n"
    )
    pytester.makeconftest(FAKE_LAB)
    pytester.makepyfile(test_checks=CHECKS)
    reports = tmp_path / "reports"
    result = pytester.runpytest(
        f"--vfio-inventory={inventory}", f"--vfio-reports={reports}", "-rs", "-k", "TST"
    )
    return result, json.loads((reports / "latest" / "results.json").read_text())


def test_each_record_has_the_kind_of_its_skip(run: tuple[pytest.RunResult, dict]) -> None:
    result, data = run
    assert result.ret == 0, result.stdout.str()
    got = {r["check_id"]: (r["verdict"], r["skip_kind"], r["reason"]) for r in data["results"]}
    assert got == {
        "TST-020": ("PASS", None, ""),
        "TST-021": ("SKIP", "kernel", "the kernel lacks the VFIO_UNMAP_ALL extension"),
        "TST-022": ("SKIP", "unclassified", "not today"),
        "TST-023": ("SKIP", "capability", "no device of the inventory has warp-drive"),
        "TST-024": ("SKIP", "backend", "iommufd backend not offered on lab-3: no /dev/iommu"),
    }


def test_skips_read_as_pytests_own(run: tuple[pytest.RunResult, dict]) -> None:
    """pytest's short summary points at the check, not at the plugin or helper raising the
    SKIP, and JUnit's skip message is the reason alone, as for a plain pytest.skip."""
    result, data = run
    lines = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(lines) == 4, lines
    assert all(" test_checks.py:" in line and "CheckSkipped" not in line for line in lines)
    junit = Path(data["run"]["inventory"]).parent / "reports" / "latest" / "junit.xml"
    messages = {e.get("message") for e in ElementTree.parse(junit).iter("skipped")}
    assert "the kernel lacks the VFIO_UNMAP_ALL extension" in messages


def test_the_run_has_its_check_plan(run: tuple[pytest.RunResult, dict]) -> None:
    """The plan is the catalogue's on the inventory, whatever ``-k`` selected."""
    _, data = run
    plan = data["run"]["plan"]
    assert "PLAT-001" in plan["host_checks"] and "RST-001" in plan["device_checks"]
    (device,) = plan["devices"]
    assert {k: device[k] for k in ("host", "bdf", "model")} == {
        "host": "lab-3",
        "bdf": "0000:3b:00.0",
        "model": "nvme",
    }
    assert "nvme" in device["capabilities"] and "PERF-001" in device["checks"]


@pytest.mark.parametrize("kind", ["nope", "unclassified"])
def test_a_skip_names_a_known_kind(kind: str) -> None:
    """``unclassified`` is a plain pytest.skip's: a check that names a kind names a real one."""
    with pytest.raises(ValueError, match=f"skip kind '{kind}' is not one of capability, "):
        skip(kind, "because")


@pytest.mark.parametrize(
    ("engine", "kind", "reason"),
    [
        (None, "lab", "no DMA-engine driver of the library drives this device"),
        ("edu", "capability", "its edu engine offers no dma_from_host"),
    ],
)
def test_a_device_whose_engine_lacks_a_need_skips(
    engine: str | None, kind: str, reason: str
) -> None:
    """No engine: the library has no driver for the device; an engine without it: the
    device lacks the capability."""
    found = {"engine": engine, "capabilities": ["dma_to_host"] if engine else []}
    lease = SimpleNamespace(bdf="0000:00:04.0", host=SimpleNamespace(engine=lambda bdf: found))
    with pytest.raises(CheckSkipped) as info:
        _require_engine(lease, {"dma_to_host", "dma_from_host"})  # type: ignore[arg-type]
    assert (info.value.kind, info.value.msg) == (kind, f"0000:00:04.0: {reason}")


def test_a_skip_is_pytests_skip_with_its_kind() -> None:
    with pytest.raises(pytest.skip.Exception) as info:
        skip("lab", "no second VFIO group on vdut0 to try")
    assert isinstance(info.value, CheckSkipped)
    assert (info.value.kind, info.value.msg) == ("lab", "no second VFIO group on vdut0 to try")


#: What SKIPs without a kind: pytest's skip and its skip marks.
UNCLASSIFIED = ("pytest.skip", "pytest.mark.skip", "pytest.mark.skipif")


def _unclassified_skips(tree: ast.AST) -> list[int]:
    """The lines of ``tree`` that use one of :data:`UNCLASSIFIED`."""
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and ast.unparse(node) in UNCLASSIFIED
    )


def test_no_conformance_check_skips_without_a_kind() -> None:
    """A check SKIPs with ``skip(kind, reason)`` (vfio_hil_pytest), so a certification can
    tell which SKIPs it accepts."""
    found = [
        f"{path.relative_to(CONFORMANCE_DIR.parent)}:{line}"
        for path in sorted(CONFORMANCE_DIR.glob("*.py"))
        for line in _unclassified_skips(ast.parse(path.read_text(), str(path)))
    ]
    assert not found, "SKIP without a kind (use vfio_hil_pytest.skip): " + ", ".join(found)


def test_the_scan_finds_bare_skips() -> None:
    source = (
        "import pytest\n"
        "@pytest.mark.skipif(True, reason='r')\n"
        "def test_a():\n"
        "    pytest.skip('r')\n"
        "    skip('lab', 'r')\n"
    )
    assert _unclassified_skips(ast.parse(source)) == [2, 4]
