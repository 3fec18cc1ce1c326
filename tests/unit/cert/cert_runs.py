"""Run folders for the certification tests: records as the plugin writes them, the run's
check plan, junit.xml, evidence and the inventory, and a small profile."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from sample_records import PLATFORM as SAMPLE_PLATFORM
from sample_records import record

from vfio_hil.cert.profile import Profile, profile_from_data

PLATFORM = {
    **SAMPLE_PLATFORM,
    "acpi_iommu_tables": {"DMAR": {"sha256": "ab" * 32, "length": 176}},
}
EDU, NVME = "0000:00:04.0", "0000:00:06.0"
IDENTITY = {
    EDU: {"model": "edu", "vendor_device": "1234:11e8", "dsn": None},
    NVME: {
        "model": "nvme",
        "vendor_device": "1b36:0010",
        "identity": {"model": "QEMU NVMe Ctrl", "serial": "hil6"},
        "dsn": "00-11-22-33-44-55-66-77",
    },
}
#: Which checks apply where, as the plugin's plan says.
PLAN = {
    "host_checks": ["PLAT-001", "PLAT-003", "PLAT-006"],
    "device_checks": ["CFG-001", "HP-001", "ISO-001", "PERF-001"],
    "devices": [
        {"host": "vdut0", "bdf": EDU, "model": "edu", "capabilities": ["dma", "edu"],
         "checks": ["CFG-001", "HP-001", "ISO-001"]},
        {"host": "vdut0", "bdf": NVME, "model": "nvme", "capabilities": ["dma", "nvme"],
         "checks": ["CFG-001", "HP-001", "ISO-001", "PERF-001"]},
    ],
}  # fmt: skip
PROFILE = {
    "profile": "test-cert",
    "version": 1,
    "title": "a small profile for tests",
    "may_skip": ["capability"],
    "variant_may_skip": ["backend"],
    "checks": {
        "PLAT-001": {"require": "must"},
        "PLAT-003": {"require": "must"},
        "PLAT-006": {"require": "should"},
        "CFG-001": {"require": "must"},
        "HP-001": {"require": "must"},
        "ISO-001": {"require": "must"},
        "PERF-001": {"require": "report", "figures": ["*.iops"]},
    },
}
IOPS = [{"name": "randread_4k_qd1.iops", "value": 21000.0, "unit": "IOPS",
         "higher_is_better": True},
        {"name": "randread_4k_qd1.lat_max", "value": 900.0, "unit": "us",
         "higher_is_better": False}]  # fmt: skip


def profile(**changes: Any) -> Profile:
    """The test profile, with top-level ``changes``."""
    return profile_from_data({**PROFILE, **changes}, "test profile")


def rec(
    check_id: str,
    verdict: str = "PASS",
    *,
    bdf: Optional[str] = None,
    host: str = "vdut0",
    backend: Optional[str] = None,
    skip_kind: Optional[str] = None,
    reason: str = "",
    figures: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A result record (``bdf`` None: a host check) with its skip kind, the device's identity
    and an evidence file of its own."""
    made = record(check_id, verdict, host=host, bdf=bdf, variant=backend or "",
                  platform=PLATFORM, reason=reason)  # fmt: skip
    made.update(
        skip_kind=(skip_kind or "capability") if verdict == "SKIP" else None,
        device={"bdf": bdf, **IDENTITY[bdf]} if bdf else None,
        evidence=f"evidence/{check_id}_{host}_{(bdf or '').replace(':', '_')}.json",
        figures=list(figures),
    )
    return made


def passing() -> list[dict[str, Any]]:
    """Records of a run where every check of the test profile holds."""
    records = [rec("PLAT-001"), rec("PLAT-003"), rec("PLAT-006")]
    for bdf in (EDU, NVME):
        records += [
            rec("CFG-001", bdf=bdf),
            rec("HP-001", "SKIP", bdf=bdf, reason=f"{bdf} is in no hotplug-capable slot"),
            rec("ISO-001", bdf=bdf, backend="type1v2"),
            rec("ISO-001", "SKIP", bdf=bdf, backend="iommufd", skip_kind="backend"),
        ]
    records.append(rec("PERF-001", bdf=NVME, figures=IOPS))
    return records


def document(records: list[dict[str, Any]], plan: Any = PLAN) -> dict[str, Any]:
    """results.json's document of a run with these records."""
    run = {
        "id": "20261127-080000-c0de",
        "started": "2026-11-27T08:00:00+00:00",
        "finished": "2026-11-27T08:03:00+00:00",
        "hosts": ["vdut0"],
        "vfio_hil_version": "0.1.0",
        "exit_status": 0,
    }
    if plan is not None:
        run["plan"] = plan
    return {"run": run, "results": records}


def run_folder(root: Path, records: list[dict[str, Any]]) -> Path:
    """A run folder as `vfio-hil run` writes it, with an inventory beside it."""
    inventory = root / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    vdut0: {}\n")
    doc = document(records)
    doc["run"]["inventory"] = str(inventory)
    run = root / "reports" / doc["run"]["id"]
    (run / "evidence").mkdir(parents=True)
    for r in records:
        (run / r["evidence"]).write_text(json.dumps({"check": r["check_id"]}))
    (run / "results.json").write_text(json.dumps(doc, indent=2))
    (run / "junit.xml").write_text('<testsuites><testsuite name="vfio-hil"/></testsuites>\n')
    return run
