"""Synthetic bundle data for the certification report's tests: a bundle's
``certification.json`` and ``platform.json`` as the bundle writer makes them, for a CERTIFIED
run of two devices and a NOT CERTIFIED one."""

from __future__ import annotations

import copy
from typing import Any

from sample_records import PLATFORM as SAMPLE_PLATFORM

PLATFORM_ID = "3f2a9c1b7d10"
NVME = "0000:00:06.0"
EDU = "0000:00:09.0"
NVME_SERIAL = "hildev6"
EDU_DSN = "00-11-22-33-44-55-66-77"
PLAT_003_REASON = (
    "PLAT-003 FAIL on vdut0: unsafe interrupts allowed (vfio_iommu_type1 allow_unsafe_interrupts=Y)"
)
ISO_002_REASON = (
    "ISO-002 FAIL on vdut0 0000:00:06.0: a write to an unmapped IOVA reached memory, "
    "no IOMMU fault was logged"
)

PLATFORM = {
    **SAMPLE_PLATFORM,
    "acpi_iommu_tables": {
        "DMAR": {
            "sha256": "9b1d4c0e5f3a2b7c8d6e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c",
            "length": 176,
            "oem_id": "BOCHS",
            "oem_table_id": "BXPC",
            "oem_revision": 1,
        }
    },
}
NVME_DEVICE = {
    "bdf": NVME,
    "model": "nvme",
    "vendor_device": "1b36:0010",
    "subsystem_vendor_device": "1af4:1100",
    "class_code": "01:08:02",
    "revision": "02",
    "identity": {"model": "QEMU NVMe Ctrl", "serial": NVME_SERIAL, "firmware": "7.2.22"},
    "dsn": None,
}
EDU_DEVICE = {
    "bdf": EDU,
    "model": "edu",
    "vendor_device": "1234:11e8",
    "subsystem_vendor_device": "1af4:1100",
    "class_code": "00:ff:00",
    "revision": "10",
    "dsn": EDU_DSN,
}
#: The checks of the profile the samples run: id, title, requirement.
CHECKS = (
    ("PLAT-003", "Unsafe VFIO modes are off: no unsafe interrupts, no no-IOMMU mode", "must"),
    ("CFG-001", "Vendor and device IDs read through the VFIO config region equal sysfs", "must"),
    ("DMA-001", "Device DMA at mapped IOVAs: what the device writes arrives", "must"),
    ("DMA-009", "The DMA_AVAIL capability goes down by one per mapping", "should"),
    ("ISO-002", "A device write to an unmapped IOVA lands nowhere and the IOMMU logs it", "must"),
    ("IRQ-001", "The device raises its MSI (or MSI-X): the eventfd counts one interrupt", "must"),
    ("PERF-001", "NVMe random read through VFIO: IOPS and latency", "report"),
)


def _check(check_id: str, title: str, requirement: str, host: str, bdf: str) -> dict[str, Any]:
    slug = f"{host}_{bdf.replace(':', '_')}"
    return {
        "check_id": check_id,
        "title": title,
        "requirement": requirement,
        "outcome": "pass",
        "verdicts": ["PASS", "PASS"] if check_id == "ISO-002" else ["PASS"],
        "note": "",
        "evidence": [f"evidence/{check_id.lower()}_{slug}.json"],
    }


def _device(host: str, device: dict[str, Any]) -> dict[str, Any]:
    checks = [_check(*check, host, device["bdf"]) for check in CHECKS]
    return {
        "host": host,
        "bdf": device["bdf"],
        "platform_id": PLATFORM_ID,
        "device": copy.deepcopy(device),
        "verdict": "CERTIFIED",
        "reasons": [],
        "checks": checks,
        "figures": [],
    }


def certified() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(certification, facts)`` of a CERTIFIED bundle: an NVMe controller (serial
    hildev6, with PERF-001 figures) and an edu device (a DSN, no serial) on host vdut0; the
    edu device skips DMA-009 and PERF-001."""
    nvme = _device("vdut0", NVME_DEVICE)
    nvme["figures"] = [
        {"check_id": "PERF-001", "name": "randread_4k_qd1.iops", "value": 22216.0,
         "unit": "IOPS", "better": "higher"},
        {"check_id": "PERF-001", "name": "randread_4k_qd1.lat_p99", "value": 61.5,
         "unit": "us", "better": "lower"},
    ]  # fmt: skip
    edu = _device("vdut0", EDU_DEVICE)
    for check in edu["checks"]:
        if check["check_id"] in ("DMA-009", "PERF-001"):
            check.update(
                outcome="skip", verdicts=["SKIP"], note="capability: not an NVMe", evidence=[]
            )
    certification = {
        "profile": {
            "id": "vfio-cert-1",
            "version": 1,
            "title": "VFIO passthrough certification, profile 1",
            "sha256": "5e0c2a7d9b3f4e6a8c1d0b2e4f6a8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a1b",
        },
        "run": {
            "id": "20261127-101500-ab12",
            "started": "2026-11-27T10:15:00+00:00",
            "finished": "2026-11-27T10:42:31+00:00",
            "vfio_hil_version": "0.1.0",
            "hosts": ["vdut0", "vdut1"],
        },
        "scope": ["vdut0"],
        "verdict": "CERTIFIED",
        "devices": [nvme, edu],
        "platforms": [
            {
                "platform_id": PLATFORM_ID,
                "text": "intel IOMMU (DMA-FQ), interrupt remapping on, kernel 6.1.0-28-amd64, "
                "QEMU 7.2.22 (tcg), SeaBIOS 1.16.2",
                "hosts": ["vdut0"],
            }
        ],
    }
    facts = {
        "hosts": {
            "vdut0": {
                "platform_id": PLATFORM_ID,
                "platform": copy.deepcopy(PLATFORM),
                "devices": {NVME: copy.deepcopy(NVME_DEVICE), EDU: copy.deepcopy(EDU_DEVICE)},
            }
        }
    }
    return certification, facts


def not_certified() -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle of :func:`certified` after a run where the host allowed unsafe interrupts
    (PLAT-003 fails on both devices) and the NVMe's unmapped write reached memory (ISO-002
    fails), RST-001 did not run on the NVMe and DMA-009 warns on it."""
    certification, facts = certified()
    certification["verdict"] = "NOT CERTIFIED"
    nvme, edu = certification["devices"]
    for device in (nvme, edu):
        device["verdict"] = "NOT CERTIFIED"
        device["reasons"] = [PLAT_003_REASON]
        _set(device, "PLAT-003", "fail", ["FAIL"], "allow_unsafe_interrupts=Y")
    nvme["reasons"] += [ISO_002_REASON, "RST-001 not run"]
    _set(nvme, "ISO-002", "fail", ["FAIL", "PASS"], "iommufd: the write reached memory")
    _set(nvme, "DMA-009", "warn", ["FAIL"], "DMA_AVAIL did not go down")
    nvme["checks"].append(
        {"check_id": "RST-001", "title": "A function-level reset of the device",
         "requirement": "must", "outcome": "incomplete", "verdicts": [], "note": "not run",
         "evidence": []}
    )  # fmt: skip
    certification["platforms"][0]["text"] = certification["platforms"][0]["text"].replace(
        "remapping on", "remapping off"
    )
    facts["hosts"]["vdut0"]["platform"]["interrupt_remapping"] = False
    return certification, facts


def _set(
    device: dict[str, Any], check_id: str, outcome: str, verdicts: list[str], note: str
) -> None:
    check = next(c for c in device["checks"] if c["check_id"] == check_id)
    check.update(outcome=outcome, verdicts=verdicts, note=note)
