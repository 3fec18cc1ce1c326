"""KCIDB v5 export of the store's runs (the schema of the ``kcidb-io`` package).

The mapping:

- a **checkout** per run (``vfio_hil:run-<run-id>``): KCIDB's root object; vfio-hil does not
  build kernels, so it names the run, its start time and its controller;
- a **build** per run and platform (``vfio_hil:run-<run-id>:<platform-id>``): the kernel that
  ran on the platform, the platform's facts in ``misc``;
- a **test** per result record (``vfio_hil:run-<run-id>:<n>``, n its place in the run), path
  ``vfio.<area>.<check-id>`` (``vfio.dma.DMA-003``), status PASS/FAIL/ERROR/SKIP as they are,
  the host and device in ``environment.misc``; and a test per figure of a record
  (``…:<n>.<figure>``, path ``vfio.<area>.<check-id>.<figure-name>``, status DONE) with its
  value and unit as the test's ``number``.

Every document is validated with kcidb-io before it is returned.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any, Optional

import jsonschema
from kcidb_io import schema

from vfio_hil.lab.errors import ExportError
from vfio_hil.results.store import PlatformInfo, ResultsStore, RunInfo, StoredResult

#: The name of this CI system in KCIDB (the prefix of every id).
ORIGIN = "vfio_hil"
#: The KCIDB schema version the export writes.
SCHEMA = schema.V5_3
#: Characters a KCIDB path segment may not hold.
_PATH_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")


def kcidb_document(store: ResultsStore, run_ids: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """The KCIDB v5 document of the runs ``run_ids`` (every run of the store when None),
    validated (ExportError when it does not validate; StoreError for an unknown run)."""
    runs = [store.run(r) for r in run_ids] if run_ids else store.runs()
    platforms = {p.id: p for p in store.platforms()}
    document: dict[str, Any] = {
        "version": {"major": SCHEMA.major, "minor": SCHEMA.minor},
        "checkouts": [],
        "builds": [],
        "tests": [],
    }
    for run in runs:
        document["checkouts"].append(_checkout(run))
        document["builds"] += [_build(run, platforms[p]) for p in run.platform_ids]
        for index, result in enumerate(store.results(run.id)):
            document["tests"] += _tests(run, index, result)
    return validate(document)


def validate(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` when it is a valid KCIDB document of :data:`SCHEMA`; ExportError naming
    the first problem when not."""
    try:
        return SCHEMA.validate_exactly(document)
    except jsonschema.exceptions.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the document"
        raise ExportError(f"KCIDB export does not validate at {where}: {exc.message}") from None


def _checkout_id(run: RunInfo) -> str:
    return f"{ORIGIN}:run-{run.id}"


def _build_id(run: RunInfo, platform_id: str) -> str:
    return f"{_checkout_id(run)}:{platform_id}"


def _time(stamp: dt.datetime) -> str:
    return stamp.isoformat()


def _checkout(run: RunInfo) -> dict[str, Any]:
    return {
        "id": _checkout_id(run),
        "origin": ORIGIN,
        "comment": f"vfio-hil run {run.id} on {', '.join(run.hosts) or 'no host'}",
        "start_time": _time(run.started),
        "valid": True,
        "misc": {
            "run_id": run.id,
            "hosts": list(run.hosts),
            "exit_status": run.exit_status,
            "vfio_hil_version": run.vfio_hil_version,
        },
    }


def _build(run: RunInfo, platform: PlatformInfo) -> dict[str, Any]:
    kernel = platform.facts.get("kernel_release")
    build: dict[str, Any] = {
        "id": _build_id(run, platform.id),
        "checkout_id": _checkout_id(run),
        "origin": ORIGIN,
        "comment": platform.label,
        "start_time": _time(run.started),
        "status": "PASS",
        "misc": {"platform_id": platform.id, "platform": platform.facts},
    }
    if kernel:
        build["config_name"] = str(kernel)
    return build


def _tests(run: RunInfo, index: int, result: StoredResult) -> list[dict[str, Any]]:
    """The test of one record, then one per figure."""
    key = result.key
    test_id = f"{_checkout_id(run)}:{index}"
    path = f"vfio.{_segment(key.check_id.split('-')[0].lower())}.{_segment(key.check_id)}"
    environment = {
        "comment": f"{key.host} {key.device_bdf or ''}".strip(),
        "misc": {
            "platform_id": key.platform_id,
            "host": key.host,
            "device": {
                "bdf": key.device_bdf,
                "vendor_device": result.vendor_device,
                "serial": result.serial,
            },
            "variant": key.variant,
            "backend": result.backend,
            "engine": result.engine,
            "hotplug_way": result.hotplug_way,
        },
    }
    common = {
        "build_id": _build_id(run, key.platform_id),
        "origin": ORIGIN,
        "environment": environment,
        "start_time": _time(run.started),
    }
    test: dict[str, Any] = {
        **common,
        "id": test_id,
        "path": path,
        "status": result.verdict,
        "comment": result.title,
        "misc": {
            "check_id": key.check_id,
            "level": result.level,
            "reason": result.reason,
            "nodeid": result.nodeid,
            "evidence": result.evidence,
            "hot_path": result.hot_path,
        },
    }
    if result.duration_s is not None:
        test["duration"] = result.duration_s
    if result.reason:
        test["log_excerpt"] = result.reason[:16384]
    figures = [
        {
            **common,
            "id": f"{test_id}.{_segment(f.name)}",
            "path": f"{path}.{'.'.join(_segment(p) for p in f.name.split('.'))}",
            "status": "DONE",
            "number": {"value": f.value, "unit": f.unit},
            "misc": {"higher_is_better": f.higher_is_better, "check_status": result.verdict},
        }
        for f in result.figures
    ]
    return [_without_nulls(test), *(_without_nulls(f) for f in figures)]


def _segment(text: str) -> str:
    """``text`` as one segment of a KCIDB path (letters, digits, ``_`` and ``-``)."""
    return _PATH_UNSAFE.sub("_", text) or "_"


def _without_nulls(value: Any) -> Any:
    """``value`` without the None members of its dicts: KCIDB forbids nulls outside misc."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value
