"""NVMe random and sequential reads through VFIO with the library's compiled hot path (and,
for contrast, its pure-Python loop): IOPS, MiB/s, latency percentiles, CPU time per I/O.

Runs on a VFIO host as root, with ``--bdf`` (an NVMe controller) bound to vfio-pci. Reads
only. Prints figures; judges nothing (``make bench`` runs it on a rack DUT).

    python benchmarks/nvme_perf_bench.py --bdf 0000:00:06.0 [--seconds 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

from vfio_hil.core.perf.measure import Measurement  # noqa: E402
from vfio_hil.dut import perf  # noqa: E402

#: The compiled engine's workloads, then a short pure-Python run for contrast.
COMPILED = ("randread_512_qd32", "randread_4k_qd32", "randread_4k_qd1", "seqread_128k_qd8")
PYTHON = ("randread_4k_qd32", "randread_4k_qd1")
COLUMNS = ("IOPS", "MiB/s", "mean", "p50", "p90", "p99", "p99.9", "p99.99", "cpu/io")


def _row(hot_path: str, m: Measurement) -> str:
    hist = m.histogram
    us = [hist.mean_ns / 1e3, *(v / 1e3 for v in hist.percentiles().values())]
    cells = [
        f"{m.rate:>9.0f}",
        f"{m.bytes / (m.elapsed_ns / 1e9) / 2**20:>7.1f}",
        *(f"{v:>7.1f}" for v in us),
        f"{m.cpu_ns / max(m.ops, 1) / 1e3:>7.2f}",
    ]
    return f"{m.name:<20} {hot_path:<9} " + " ".join(cells)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bdf", required=True, help="an NVMe controller bound to vfio-pci")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured, per workload")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured, per workload")
    args = parser.parse_args(argv)
    widths = (9, 7, 7, 7, 7, 7, 7, 7, 7)
    print(
        f"NVMe reads on {args.bdf} through VFIO, {args.seconds:g} s each after "
        f"{args.warmup:g} s warm-up (latency in us, submission to completion seen)"
    )
    print(f"{'workload':<20} {'loop':<9} " + " ".join(c.rjust(w) for c, w in zip(COLUMNS, widths)))
    for hot_path, workloads, seconds in (
        ("auto", COMPILED, args.seconds),
        ("python", PYTHON, min(args.seconds, 2.0)),
    ):
        run = perf.nvme_io(args.bdf, workloads, seconds, args.warmup, hot_path=hot_path)
        if run["why_python"] and hot_path == "auto":
            print(f"compiled hot path unavailable: {run['why_python']}")
        for data in run["measurements"]:
            print(_row(run["hot_path"], Measurement.from_dict(data)))
        for name, why in run["skipped"].items():
            print(f"{name:<20} {hot_path:<9} not run: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
