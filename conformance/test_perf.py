"""PERF: what the platform delivers through VFIO, as figures: block reads on an NVMe
controller (IOPS, MiB/s, latency percentiles, CPU time per I/O), interrupt-driven reads and
MSI-X delivery, the same device on the kernel's nvme driver (the near-native ratio), DMA
map+unmap rates and MMIO latency.

The loops run on the DUT in the library's compiled hot path (cffi, built at install);
where it cannot load there, in pure Python, and the record's ``hot_path`` says so. Nothing
writes media. Without a baseline for the platform the checks report their figures and
PASS; with one (``vfio-hil baseline save``), a figure worse than its baseline by more than
its tolerance FAILs the check, naming the figure, the expected and the measured value.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from vfio_hil.core.perf import Figure
from vfio_hil.core.perf.measure import Measurement
from vfio_hil.lab.session import DeviceLease
from vfio_hil_pytest import check, skip

NVME_SPEC = "NVM Express Base Specification 2.0: I/O queues, Read command"
VFIO_RST = "Documentation/driver-api/vfio.rst: VFIO Usage Example"
#: Block I/O workloads of PERF-001 (vfio_hil.core.perf.loops.WORKLOADS).
POLLED = ("randread_4k_qd1", "randread_4k_qd32", "randread_512_qd32", "seqread_128k_qd8")
#: The workloads compared with the kernel's nvme driver (PERF-003).
NEAR_NATIVE = (("randread_4k_qd1", 4096, 1), ("randread_4k_qd32", 4096, 32))


def _measured(
    run: Dict[str, Any], evidence: Any, derive: Callable[[Measurement], List[Figure]]
) -> List[Figure]:
    """The figures of a DUT PerfRun (SKIP when none of its loops could run), with the run as
    evidence."""
    evidence.add("measurements", run)
    if not run["measurements"]:
        skipped = "; ".join(f"{k}: {v}" for k, v in run["skipped"].items())
        skip("capability", f"{run['bdf']}: {skipped}")
    return [f for m in run["measurements"] for f in derive(Measurement.from_dict(m))]


def _report(figures: Any, run: Dict[str, Any], found: List[Figure]) -> None:
    """Record the figures under the hot path that measured them and judge them."""
    figures.record(found, hot_path=run["hot_path"])
    figures.judge()


@check(
    "PERF-001",
    "Polled NVMe reads through VFIO: IOPS, bandwidth, latency percentiles, CPU per I/O",
    level="INFO",
    spec=NVME_SPEC,
    needs=("nvme",),
)
def test_polled_reads(dut_device: DeviceLease, evidence: Any, figures: Any, perf_time: Any) -> None:
    """Random 4 KiB reads at queue depth 1 and 32, random 512-byte reads at 32 and sequential
    128 KiB reads at 8, each after a warm-up, from a userspace driver polling its completion
    queue through VFIO: what a VFIO application gets from this device on this platform."""
    run = dut_device.call(
        "perf.nvme_io", bdf=dut_device.bdf, workloads=list(POLLED), **perf_time.kwargs()
    )
    _report(figures, run, _measured(run, evidence, Measurement.io_figures))


@check(
    "PERF-002",
    "Interrupt-driven NVMe reads and MSI-X delivery latency through VFIO",
    level="INFO",
    spec=f"{VFIO_RST}; include/uapi/linux/vfio.h VFIO_DEVICE_SET_IRQS",
    needs=("nvme", "msix"),
)
def test_interrupt_latency(
    dut_device: DeviceLease, evidence: Any, figures: Any, perf_time: Any
) -> None:
    """Random 4 KiB reads at queue depth 1 where the driver sleeps on the I/O queue's MSI-X
    eventfd instead of polling; and, per read, the time from its completion entry appearing
    to its interrupt reaching the eventfd (through interrupt remapping, the host's handler
    and vfio-pci)."""
    io = dut_device.call(
        "perf.nvme_io", bdf=dut_device.bdf, workloads=["randread_4k_qd1_irq"],
        **perf_time.kwargs(),
    )  # fmt: skip
    found = _measured(io, evidence, Measurement.io_figures)
    msi = dut_device.call("perf.irq_delivery", bdf=dut_device.bdf)
    evidence.add("msi delivery", msi)
    found += [
        f for m in msi["measurements"] for f in Measurement.from_dict(m).latency_figures("us")
    ]
    _report(figures, io, found)


@check(
    "PERF-003",
    "Near-native I/O: VFIO reads against the kernel's nvme driver with fio, same device",
    level="INFO",
    spec=f"{NVME_SPEC}; fio(1)",
    needs=("nvme",),
)
def test_near_native(dut_device: DeviceLease, evidence: Any, figures: Any, perf_time: Any) -> None:
    """The same random reads, back to back, through the library's VFIO driver and through
    the kernel's nvme driver measured by fio (read-only, direct I/O); the ratio of their
    IOPS is the near-native figure (above 1: userspace beats the kernel's block stack).
    The device goes back to vfio-pci after fio."""
    vfio = dut_device.call(
        "perf.nvme_io", bdf=dut_device.bdf, workloads=[n for n, _, _ in NEAR_NATIVE],
        **perf_time.kwargs(),
    )  # fmt: skip
    found = _measured(vfio, evidence, Measurement.io_figures)
    iops = {m["name"]: Measurement.from_dict(m).rate for m in vfio["measurements"]}
    kernel_runs = dut_device.call(
        "kernel_io.fio_runs", bdf=dut_device.bdf,
        workloads=[("randread", size, depth) for _, size, depth in NEAR_NATIVE],
        **perf_time.kwargs(),
    )  # fmt: skip
    evidence.add("kernel fio", kernel_runs)
    ratios = []
    for (name, _, _), kernel in zip(NEAR_NATIVE, kernel_runs):
        if not kernel["available"]:
            skip(
                kernel["why_not_kind"],
                f"{dut_device.bdf}: kernel side not measured: {kernel['why_not']}",
            )
        found += _kernel_figures(f"kernel_{name}", kernel)
        kernel_iops = kernel["measurement"]["iops"]
        if name in iops and kernel_iops:
            ratios.append(
                Figure(f"near_native.{name}", round(iops[name] / kernel_iops, 3), "ratio", True)
            )
    _report(figures, vfio, found + ratios)


def _kernel_figures(prefix: str, kernel: Dict[str, Any]) -> List[Figure]:
    """fio's figures of the kernel driver, named like the library's (latency: submission to
    completion, as fio's total latency)."""
    m = kernel["measurement"]
    latency = {
        "lat_mean": m["lat_mean_ns"],
        "lat_min": m["lat_min_ns"],
        "lat_max": m["lat_max_ns"],
        **{f"lat_{k.replace('.', '_')}": v for k, v in m["lat_percentiles_ns"].items()},
    }
    return [
        Figure(f"{prefix}.iops", round(m["iops"]), "IOPS", True),
        Figure(f"{prefix}.mib_s", round(m["bw_mib_s"], 2), "MiB/s", True),
        *(Figure(f"{prefix}.{k}", round(v / 1e3, 3), "us", False) for k, v in latency.items()),
        Figure(f"{prefix}.cpu_per_io", round(m["cpu_ns_per_io"] / 1e3, 3), "us", False),
    ]


@check(
    "PERF-004",
    "DMA map+unmap rate of the device's IOMMU context (4 KiB and 2 MiB)",
    level="INFO",
    spec="include/uapi/linux/vfio.h VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA",
    needs=("nvme",),
)
def test_map_rate(dut_device: DeviceLease, evidence: Any, figures: Any, perf_time: Any) -> None:
    """How fast a VFIO application can map and unmap DMA memory in the device's IOMMU
    context: pairs per second and their latency, for 4 KiB and 2 MiB mappings (what pinning,
    IOMMU page-table updates and IOTLB invalidation cost on this platform)."""
    run = dut_device.call("perf.map_unmap_rate", bdf=dut_device.bdf, seconds=perf_time.seconds / 2)
    _report(figures, run, _measured(run, evidence, Measurement.rate_figures))


@check(
    "PERF-005",
    "MMIO register latency through the BAR's mmap and through pread/pwrite",
    level="INFO",
    spec="include/uapi/linux/vfio.h VFIO_REGION_INFO_FLAG_MMAP",
    needs=("nvme",),
)
def test_mmio_latency(dut_device: DeviceLease, evidence: Any, figures: Any) -> None:
    """32-bit reads and writes of registers that change nothing, each timed: through the
    mmap'ed BAR (a load or store, trapped only by the hypervisor if any) and through
    pread/pwrite on the device fd (a system call into vfio-pci each)."""
    run = dut_device.call("perf.mmio_latency", bdf=dut_device.bdf)
    _report(figures, run, _measured(run, evidence, lambda m: m.latency_figures("ns")))
