"""Run folders, result records and the report writers.

A run writes ``reports/<run-id>/`` with ``results.json`` (``{"run": {...}, "results": [...]}``),
``junit.xml``, ``allure-results/`` and the Ansible artifacts, and points ``reports/latest`` at
it. Verdicts: PASS, FAIL (the platform or device broke a guarantee), SKIP (not applicable, with
a reason), ERROR (the harness or the lab broke).

Every record has ``skip_kind``: None unless its verdict is SKIP, then why, as one of
:data:`SKIP_KINDS` (so a certification profile can tell a device lacking a capability from a
lab that did not provide what a check needs). ``run.plan`` is what applies to the run's
inventory, whatever ``-k`` selected: the ID of every host check and of every device check of
the catalogue, and per device under test (host, bdf, model, its model's capabilities) the ID
of every device check it may run (:func:`check_plan`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfio_hil.core.perf import Figure
from vfio_hil.lab.errors import ResultsFileError

if TYPE_CHECKING:
    from vfio_hil.lab.inventory import Inventory

VERDICTS = ("PASS", "FAIL", "SKIP", "ERROR")

#: The kind of a SKIP raised without one.
UNCLASSIFIED = "unclassified"
#: Why a check SKIPped: a SKIP record's ``skip_kind`` (a check names it with
#: ``vfio_hil_pytest.skip(kind, reason)``).
SKIP_KINDS = (
    # The device or host lacks an optional hardware capability the check exercises: no
    # hotplug-capable slot, its engine raises no INTx, no expansion ROM, no bus or slot reset,
    # the IOMMU group has no other function, no MSI-X or too few vectors, MSI not maskable,
    # the device's DMA engine lacks a capability the check needs, no device of the inventory
    # has the capabilities the check needs.
    "capability",
    # The DUT's kernel does not offer the IOMMU backend the check runs under (iommufd: no
    # /dev/iommu, or no VFIO device cdevs).
    "backend",
    # The DUT's kernel lacks an optional feature the check relies on: a VFIO extension or
    # feature (VFIO_UNMAP_ALL, DMA_AVAIL, dma_entry_limit, ...), or a facility around it
    # (2 MiB huge pages, a module such as uio_pci_generic or nvme, io_uring and libaio).
    "kernel",
    # Not applicable to this platform's architecture or firmware description (its IOMMUs are
    # described by IORT/DT, or by no DMAR or IVRS table, ...).
    "platform",
    # Not run because another check's finding covers it; the reason names that check
    # ("(PLAT-001)", "(PLAT-002)").
    "covered",
    # The lab or inventory did not provide what the check needs: not a virtual host (so no
    # QMP), no second VFIO group or DMA-capable device to try, no DMA-engine driver of the
    # library for the device, no fio on the DUT, too little memory for a huge page, a device
    # not present or not bound to vfio-pci, ...
    "lab",
    # A SKIP raised without a kind (a plain ``pytest.skip``).
    UNCLASSIFIED,
)


def new_run_id() -> str:
    """A sortable, unique run id: ``20261124-134700-1a2b``."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def prepare_run_dir(reports: Path, run_id: str) -> Path:
    """Create ``reports/<run_id>`` and point ``reports/latest`` at it."""
    run_dir = reports / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = reports / "latest"
    tmp = reports / f".latest-{run_id}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(run_id)
    os.replace(tmp, latest)
    return run_dir


def check_plan(inventory: Inventory, catalogue: list[dict[str, Any]]) -> dict[str, Any]:
    """What applies to the hosts and devices of ``inventory``: ``run.plan`` of results.json.

    ``catalogue`` is the check catalogue (``vfio_hil_pytest.catalogue.load_catalogue()``:
    each check's ``id``, ``scope`` and ``needs``, which are ``[scope]`` for a check that
    declares none). Returns ``host_checks``, the ID of every host check (each runs on every
    host); ``device_checks``, the ID of every device check of the catalogue; and
    ``devices``, by host then bdf, each device's ``host``, ``bdf``, ``model``, the sorted
    ``capabilities`` of its model and its ``checks``: the ID of every device check whose
    needs it may have (:meth:`DutDevice.may_have <vfio_hil.lab.inventory.DutDevice.may_have>`,
    the rule by which a run parametrizes checks over devices). IDs are in catalogue order.
    Independent of which checks a run selected."""
    device_checks = [
        (c["id"], set() if c["needs"] == [c["scope"]] else set(c["needs"]))
        for c in catalogue
        if c["scope"] == "device"
    ]
    devices = sorted(inventory.devices(), key=lambda d: (d.host, d.bdf))
    return {
        "host_checks": [c["id"] for c in catalogue if c["scope"] == "host"],
        "device_checks": [check_id for check_id, _ in device_checks],
        "devices": [
            {
                "host": d.host,
                "bdf": d.bdf,
                "model": d.model,
                "capabilities": sorted(d.capabilities),
                "checks": [check_id for check_id, needs in device_checks if d.may_have(needs)],
            }
            for d in devices
        ],
    }


def write_results(run_dir: Path, run: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    """Write ``results.json`` atomically and return its path."""
    ordered = sorted(results, key=_order)
    run = {**run, "counts": verdict_counts(ordered)}
    path = run_dir / "results.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run": run, "results": ordered}, indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path


def read_results(path: Path) -> dict[str, Any]:
    """The ``{"run": {...}, "results": [...]}`` document of the run at ``path`` (a run folder
    such as ``reports/latest``, or its results.json); ResultsFileError naming the problem when
    it is not there or is not a vfio-hil results file."""
    results = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(results.read_text())
    except FileNotFoundError:
        raise ResultsFileError(f"no such run: {path} (no results.json there)") from None
    except (OSError, ValueError) as exc:
        raise ResultsFileError(f"{results}: not a vfio-hil results file ({exc})") from None
    run = data.get("run") if isinstance(data, dict) else None
    if not isinstance(run, dict) or "id" not in run or not isinstance(data.get("results"), list):
        raise ResultsFileError(
            f"{results}: not a vfio-hil results file (no run id or no results list)"
        )
    return data


def _order(record: dict[str, Any]) -> tuple[str, str, str]:
    return (record["check_id"], record["host"] or "", (record["device"] or {}).get("bdf", ""))


def verdict_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    """How many records carry each verdict (every verdict listed, zeros included)."""
    counts = Counter(r["verdict"] for r in results)
    return {v: counts.get(v, 0) for v in VERDICTS}


def lost_hosts(results: list[dict[str, Any]]) -> dict[str, str]:
    """The hosts lost during a run, each with the reason its checks ERRORed with."""
    lost: dict[str, str] = {}
    for r in sorted(results, key=_order):
        if r.get("host_lost") and r["verdict"] == "ERROR":
            lost.setdefault(r["host"], r["reason"])
    return lost


def summary_table(results: list[dict[str, Any]], results_path: Path | None) -> str:
    """The human summary printed at the end of a run. The checks a lost host left undone
    are one line per host, not one per check."""
    rows = [("CHECK", "HOST", "DEVICE", "VERDICT", "REASON")]
    undone: Counter[str] = Counter()
    for r in sorted(results, key=_order):
        if r.get("host_lost") and r["verdict"] == "ERROR":
            undone[r["host"]] += 1
            continue
        dev = r["device"]["bdf"] if r.get("device") else "-"
        reason = r["reason"] if r["verdict"] != "PASS" else ""
        rows.append((r["check_id"], r["host"] or "-", dev, r["verdict"], reason[:90]))
    for host, reason in lost_hosts(results).items():
        rows.append((f"{undone[host]} checks", host, "-", "ERROR", reason))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ]
    lines += figures_section(results)
    counts = verdict_counts(results)
    lines.append("")
    lines.append("verdicts: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS))
    if results_path is not None:
        lines.append(f"report:   {results_path.parent}")
    return "\n".join(line.rstrip() for line in lines)


def figures_section(results: list[dict[str, Any]]) -> list[str]:
    """The summary's figures: per record that has any (a check on a host and device), a
    heading naming what measured them and what they were compared with, then per workload
    (the figures' common name prefix) a line of its rates and one of its latencies. No lines
    when no record has figures."""
    lines = []
    for r in sorted(results, key=_order):
        if not r.get("figures"):
            continue
        dev = r["device"]["bdf"] if r.get("device") else "-"
        baseline = r.get("baseline")
        judged = (
            f"baseline {baseline['platform_id']}: {baseline['compared']} compared"
            if baseline
            else "no baseline: reported only"
        )
        lines.append(f"{r['check_id']}  {r['host'] or '-'}  {dev}  [{r['hot_path']}; {judged}]")
        lines += _figure_lines([Figure.from_dict(f) for f in r["figures"]])
    return ["", "figures:", *lines] if lines else []


#: Quantities whose unit says what they are (``161234 IOPS``, not ``iops 161234 IOPS``).
_SELF_EXPLAINING = ("iops", "mib_s", "rate")


def _figure_lines(figures: list[Figure]) -> list[str]:
    """``    randread_4k_qd1  22216 IOPS, 86.78 MiB/s, cpu_per_io 45.02 us`` and, below it,
    ``    lat us: mean 44.33  p50 18.82 ...``, per workload, in the order recorded."""
    groups: dict[str, list[Figure]] = {}
    for f in figures:
        groups.setdefault(f.name.rpartition(".")[0], []).append(f)
    width = max(len(g) for g in groups)
    lines = []
    for group, members in groups.items():
        plain = [f for f in members if not f.name.rpartition(".")[2].startswith("lat_")]
        latency = [f for f in members if f not in plain]
        quantity = [
            f.quantity() if f.name.rpartition(".")[2] in _SELF_EXPLAINING
            else f"{f.name.rpartition('.')[2]} {f.quantity()}"
            for f in plain
        ]  # fmt: skip
        lines.append(f"    {group.ljust(width)}  {', '.join(quantity)}".rstrip())
        if latency:
            values = "  ".join(
                f"{f.name.rpartition('.lat_')[2].replace('_', '.')} {f.quantity().split()[0]}"
                for f in latency
            )
            lines.append(f"    {''.ljust(width)}  latency {latency[0].unit}: {values}")
    return lines
