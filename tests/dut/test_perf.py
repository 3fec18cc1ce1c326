"""The PERF measurements on a real device through the real kernel: the compiled hot path and
the pure-Python loops both read the NVMe controller, MSI-X delivery is timed, MMIO and map
rates are measured, and a device that is not an NVMe controller is named as such."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from vfio_hil.core.perf.measure import Measurement
from vfio_hil.dut import perf

SHORT = {"seconds": 0.3, "warmup_s": 0.05}


def _measured(run: Dict[str, Any]) -> Dict[str, Measurement]:
    assert not run["skipped"], run["skipped"]
    return {m["name"]: Measurement.from_dict(m) for m in run["measurements"]}


@pytest.mark.parametrize("hot_path", ["compiled", "python"])
def test_reads_through_either_hot_path(nvme_bdf: str, hot_path: str) -> None:
    run = perf.nvme_io(
        nvme_bdf, ["randread_4k_qd32", "seqread_128k_qd8", "randread_4k_qd1_irq"],
        hot_path=hot_path, **SHORT,
    )  # fmt: skip
    assert run["hot_path"] == hot_path and (run["why_python"] == "") == (hot_path == "compiled")
    measured = _measured(run)
    for m in measured.values():
        assert m.ops > 0 and m.errors == 0 and m.histogram.count == m.ops
        assert m.histogram.percentile(50) <= m.histogram.percentile(99.9) <= m.histogram.max_ns
    assert measured["seqread_128k_qd8"].bytes == measured["seqread_128k_qd8"].ops * 128 * 1024


def test_msix_delivery_is_timed(nvme_bdf: str) -> None:
    (delivery,) = _measured(perf.irq_delivery(nvme_bdf, count=200)).values()
    assert delivery.ops == 200 and 0 < delivery.histogram.percentile(50) < 50e6


def test_mmio_and_map_rates(nvme_bdf: str, edu_bdf: str) -> None:
    mmio = _measured(perf.mmio_latency(nvme_bdf, count=500))
    assert set(mmio) == {
        f"mmio_{op}_{via}" for op in ("read", "write") for via in ("mmap", "pread")
    }
    # A system call into vfio-pci costs more than a load from the mapping.
    assert mmio["mmio_read_pread"].histogram.percentile(50) > mmio[
        "mmio_read_mmap"
    ].histogram.percentile(50)
    rates = _measured(perf.map_unmap_rate(edu_bdf, seconds=0.2))
    assert set(rates) == {"dma_map_unmap_4k", "dma_map_unmap_2m"}
    assert all(m.ops > 0 for m in rates.values())


def test_a_device_that_is_not_nvme_is_named(edu_bdf: str) -> None:
    run = perf.nvme_io(edu_bdf, ["randread_4k_qd1"], **SHORT)
    assert run["measurements"] == [] and "not an NVMe controller" in run["skipped"]["nvme"]
