"""The KCIDB v5 export: a valid document (checked with kcidb-io), its mapping, and a broken
document refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from kcidb_io import schema
from sample_records import PLATFORM, record
from synthetic_runs import write_runs

from vfio_hil.lab.baseline import platform_key
from vfio_hil.lab.errors import ExportError, StoreError
from vfio_hil.results import ResultsStore
from vfio_hil.results.kcidb import ORIGIN, kcidb_document, validate

PLATFORM_ID = platform_key(PLATFORM)[0]


@pytest.fixture
def document(store_url: str, tmp_path: Path) -> dict:
    runs = [
        [
            record("DMA-001"),
            record("PLAT-001", "FAIL", bdf=None),
            record("ISO-002", "SKIP", variant="iommufd"),
            record("PERF-001", figures=[("randread_4k_qd1.iops", 4.2e4, "IOPS", True)]),
        ],
        [record("DMA-001", "ERROR")],
    ]
    with ResultsStore.open(store_url) as store:
        for run_dir in write_runs(tmp_path, runs):
            store.add_run(run_dir)
        return kcidb_document(store, ["run-01"])


def test_export_is_valid_kcidb_v5(document: dict) -> None:
    assert schema.V5_3.is_valid_exactly(document)
    assert document["version"] == {"major": 5, "minor": 3}
    ids = [o["id"] for kind in ("checkouts", "builds", "tests") for o in document[kind]]
    assert all(i.startswith(f"{ORIGIN}:") for i in ids) and len(set(ids)) == len(ids)


def test_export_maps_runs_platforms_records_and_figures(document: dict) -> None:
    assert [c["id"] for c in document["checkouts"]] == [f"{ORIGIN}:run-run-01"]
    (build,) = document["builds"]
    assert build["misc"]["platform_id"] == PLATFORM_ID
    assert build["config_name"] == "6.1.0-28-amd64"
    tests = {t["path"]: t for t in document["tests"]}
    assert {p: t["status"] for p, t in tests.items()} == {
        "vfio.dma.DMA-001": "PASS",
        "vfio.iso.ISO-002": "SKIP",
        "vfio.perf.PERF-001": "PASS",
        "vfio.perf.PERF-001.randread_4k_qd1.iops": "DONE",
        "vfio.plat.PLAT-001": "FAIL",
    }
    figure = tests["vfio.perf.PERF-001.randread_4k_qd1.iops"]
    assert figure["number"] == {"value": 4.2e4, "unit": "IOPS"}
    device = tests["vfio.dma.DMA-001"]["environment"]["misc"]["device"]
    assert device == {"bdf": "0000:00:06.0", "vendor_device": "1b36:0010", "serial": "hil6"}
    assert tests["vfio.plat.PLAT-001"]["log_excerpt"] == "PLAT-001 said FAIL"
    assert all(t["build_id"] == build["id"] for t in document["tests"])


def test_a_broken_document_does_not_validate(document: dict) -> None:
    broken = copy.deepcopy(document)
    broken["tests"][0]["status"] = "MAYBE"
    with pytest.raises(ExportError, match=r"tests/0/status: 'MAYBE' is not one of"):
        validate(broken)
    nulls = copy.deepcopy(document)
    nulls["checkouts"][0]["comment"] = None
    with pytest.raises(ExportError, match="checkouts/0/comment"):
        validate(nulls)


def test_export_of_an_unknown_run(store_url: str) -> None:
    with ResultsStore.open(store_url) as store, pytest.raises(StoreError, match="no run 'x'"):
        kcidb_document(store, ["x"])
