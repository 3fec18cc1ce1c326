"""The kernel-driver side of the near-native ratio on the rack's NVMe: ``fio_run`` moves the
controller from vfio-pci to the nvme driver, reads its namespace with fio and gives it back.

The figures are printed (run with ``-s``), not judged: speed belongs to the PERF checks and
their baselines, not to a test that could flake on a loaded controller.
"""

from __future__ import annotations

from typing import Any, Dict

import pytest

from vfio_hil.core import sysfs
from vfio_hil.dut.kernel_io import IOENGINES, fio_run
from vfio_hil.dut.ownership import driver_override

#: (rw, block size, queue depth): the PERF area's kernel-side workloads.
WORKLOADS = [("randread", 4096, 1), ("randread", 4096, 32), ("read", 131072, 8)]


@pytest.mark.parametrize(("rw", "block_size", "queue_depth"), WORKLOADS)
def test_fio_on_the_nvme_driver_and_back(
    nvme_bdf: str, rw: str, block_size: int, queue_depth: int
) -> None:
    override = driver_override(nvme_bdf)

    result: Dict[str, Any] = fio_run(
        nvme_bdf, rw=rw, block_size=block_size, queue_depth=queue_depth, seconds=1.0
    )

    assert sysfs.driver(nvme_bdf) == "vfio-pci"
    assert driver_override(nvme_bdf) == override
    assert result["available"], result["why_not"]
    assert result["driver"] == "nvme"
    assert result["block_device"].startswith("/dev/nvme")
    assert result["ioengine"] in IOENGINES
    assert "--readonly" in result["command"]
    m = result["measurement"]
    print(
        f"\n[kernel-io] {rw} {block_size} B QD{queue_depth} on {result['block_device']} "
        f"({result['ioengine']}, {result['fio_version']}): {m['iops']:.0f} IOPS, "
        f"{m['bw_mib_s']:.1f} MiB/s, lat mean {m['lat_mean_ns'] / 1000:.1f} us, "
        + ", ".join(f"{p} {v / 1000:.1f} us" for p, v in m["lat_percentiles_ns"].items())
        + f", CPU {m['cpu_ns_per_io'] / 1000:.1f} us/IO, {m['ios']} I/Os in {m['runtime_s']} s"
    )
    assert m["ios"] > 0 and m["iops"] > 0 and m["bw_mib_s"] > 0
    percentiles = list(m["lat_percentiles_ns"].values())
    assert list(m["lat_percentiles_ns"]) == ["p50", "p90", "p99", "p99.9", "p99.99"]
    assert percentiles[0] > 0 and percentiles == sorted(percentiles)
    assert 0 < m["lat_min_ns"] <= m["lat_mean_ns"] <= m["lat_max_ns"]
    assert m["cpu_ns_per_io"] > 0
