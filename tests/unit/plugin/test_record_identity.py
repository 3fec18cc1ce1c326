"""A record's device is what the DUT says it is: its IDs, class, revision and PCIe serial
number from the host's platform facts, and its engine's identity (NVMe: model, serial,
firmware) once the session learned it; the inventory's model only names what was listed. Its
platform carries the digests of the firmware's IOMMU tables, which are not part of the
platform's key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_lab import ACPI_IOMMU_TABLES, DSN, FAKE_LAB

from vfio_hil.lab.baseline import platform_key
from vfio_hil_pytest.plugin import _platform_summary

CHECKS = '''
from vfio_hil_pytest import check

@check("TST-001", "before the engine probe", level="MUST", spec="s")
def test_first(dut_device):
    """r"""

@check("TST-002", "probes the engine", level="MUST", spec="s")
def test_engine(dut_device):
    """r"""
    dut_device.host.engine(dut_device.bdf)

@check("TST-003", "after the engine probe", level="MUST", spec="s")
def test_last(dut_device):
    """r"""
'''

PCI = {
    "vendor_device": "144d:a808",
    "subsystem_vendor_device": "144d:a801",
    "class_code": "01:08:02",
    "revision": "00",
    "dsn": DSN,
}
IDENTITY = {"model": "Samsung SSD 970 EVO Plus 1TB", "serial": "S4EWNX0N", "firmware": "2B2QEXM7"}


@pytest.mark.parametrize("model", ["nvme", "generic"])
def test_records_carry_what_the_device_says(
    pytester: pytest.Pytester, tmp_path: Path, model: str
) -> None:
    inventory = tmp_path / "inv.yml"
    listed = "{bdf: '3b:00.0', model: nvme}" if model == "nvme" else "{bdf: '3b:00.0'}"
    inventory.write_text(f"all:\n  hosts:\n    lab-3: {{vfio_devices: [{listed}]}}\n")
    pytester.makeconftest(FAKE_LAB)
    pytester.makepyfile(test_checks=CHECKS)
    reports = tmp_path / "reports"
    result = pytester.runpytest(f"--vfio-inventory={inventory}", f"--vfio-reports={reports}")
    assert result.ret == 0, result.stdout.str()

    records = json.loads((reports / "latest" / "results.json").read_text())["results"]
    devices = {r["check_id"]: r["device"] for r in records}
    base = {"bdf": "0000:3b:00.0", "model": model, **PCI}
    assert devices == {
        "TST-001": base,
        "TST-002": {**base, "identity": IDENTITY},
        "TST-003": {**base, "identity": IDENTITY},
    }
    # The platform names the IOMMU's default domain type: part of the platform's identity.
    assert {r["platform"]["iommu_mode"] for r in records} == {"DMA-FQ"}
    assert [r["platform"]["acpi_iommu_tables"] for r in records] == [ACPI_IOMMU_TABLES] * 3


@pytest.mark.parametrize(
    ("types", "mode"),
    [({"DMA-FQ": 7}, "DMA-FQ"), ({"identity": 5, "DMA-FQ": 1}, "DMA-FQ+identity"), ({}, None)],
)
def test_platform_names_the_iommu_mode(types: dict[str, int], mode: str | None) -> None:
    facts = {"iommu": {"kind": "intel", "default_domain_types": types}}
    assert _platform_summary(facts)["iommu_mode"] == mode
    assert _platform_summary({})["iommu_mode"] is None


def test_iommu_table_digests_are_not_the_platform_key() -> None:
    """A firmware whose DMAR table changed, or a host whose facts lack the tables, is still the
    same platform as in the records from before the tables were read: its history and
    baselines are not split."""
    facts = {"iommu": {"kind": "intel"}, "kernel_release": "6.1.0-28-amd64"}
    summary = _platform_summary({**facts, "acpi_iommu_tables": ACPI_IOMMU_TABLES})
    before = {k: v for k, v in summary.items() if k != "acpi_iommu_tables"}
    changed = {"DMAR": {**ACPI_IOMMU_TABLES["DMAR"], "sha256": "0" * 64}}

    ids = {
        platform_key(_platform_summary({**facts, "acpi_iommu_tables": tables}))[0]
        for tables in (ACPI_IOMMU_TABLES, changed, {}, None)
    }

    assert summary["acpi_iommu_tables"] == ACPI_IOMMU_TABLES
    assert ids == {platform_key(before)[0]}
    assert "acpi_iommu_tables" not in platform_key(summary)[1]
