"""Result records as the plugin writes them, for the tests that build runs: a rack machine's
platform (VT-d in DMA-FQ mode, remapping on, Debian's 6.1 under QEMU 7.2 TCG) and a record
maker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

PLATFORM = {
    "iommu": "intel",
    "iommu_mode": "DMA-FQ",
    "interrupt_remapping": True,
    "kernel_release": "6.1.0-28-amd64",
    "qemu_version": "7.2.22",
    "accel": "tcg",
    "firmware": {"vendor": "SeaBIOS", "version": "1.16.2", "date": "04/01/2014"},
    "cpu_model": "QEMU TCG CPU version 2.5+",
    "vm_host_cpu_model": "Intel(R) Xeon(R) Processor",
}


def record(
    check_id: str,
    verdict: str = "PASS",
    *,
    host: str = "vdut0",
    bdf: Optional[str] = "0000:00:06.0",
    variant: str = "",
    platform: Optional[dict[str, Any]] = None,
    figures: Sequence[tuple[str, float, str, bool]] = (),
    reason: str = "",
) -> dict[str, Any]:
    """A result record of ``check_id`` on ``host`` (and device ``bdf``), its pytest parameter
    id ``host/bdf-variant``; ``figures`` as (name, value, unit, higher_is_better)."""
    params = f"{host}/{bdf}" if bdf else host
    return {
        "check_id": check_id,
        "title": f"title of {check_id}",
        "level": "MUST",
        "spec": "s",
        "verdict": verdict,
        "reason": reason or ("" if verdict == "PASS" else f"{check_id} said {verdict}"),
        "host": host,
        "device": {"bdf": bdf, "vendor_device": "1b36:0010", "identity": {"serial": "hil6"}}
        if bdf
        else None,
        "platform": platform or PLATFORM,
        "duration_s": 0.5,
        "evidence": f"evidence/{check_id}.json",
        "figures": [
            {"name": n, "value": v, "unit": u, "higher_is_better": h} for n, v, u, h in figures
        ],
        "hot_path": "compiled" if figures else None,
        "baseline": None,
        "nodeid": f"test_x.py::test_{check_id}[{params}{'-' + variant if variant else ''}]",
        "engine": None,
        "backend": variant or None,
        "hotplug_way": None,
    }
