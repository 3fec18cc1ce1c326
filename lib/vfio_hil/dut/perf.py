"""Performance measurements through VFIO. Runs on the DUT; measures, never judges.

Each function opens the device in a type1v2 container of its own, runs its timed loops in
the compiled hot path where it loads (else in pure Python, and the result says so and why)
and returns a :class:`PerfRun`. The controller derives figures from it and judges them
against the platform's baseline. Nothing here writes media: the block I/O loops only read.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..core import uapi
from ..core.backend import IommuBackend, open_iommu
from ..core.device import Device
from ..core.dma import DmaBuffer
from ..core.drivers import EngineMemory, NvmeController, probe_engine
from ..core.drivers.nvme import is_nvme
from ..core.perf.loops import WORKLOADS, Loops, NvmeLoops
from ..core.perf.measure import Measurement
from .engines import DEFAULT_BACKEND, NoEngineError

#: IOVA of the map+unmap loop's buffer: clear of the engine window and of the checks' IOVAs.
MAP_IOVA = 0x40000000


@dataclass
class PerfRun:
    """What one DUT call measured: each loop's :class:`Measurement` (as a dict), the hot path
    that ran them, why not the compiled one ("" when it ran) and, per loop that could not
    run on this device, why."""

    bdf: str
    hot_path: str
    why_python: str
    measurements: List[Dict[str, Any]] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)

    def add(self, measurement: Measurement) -> None:
        """Keep one loop's measurement."""
        self.measurements.append(measurement.to_dict())


@contextmanager
def _opened(bdf: str) -> Iterator[Tuple[IommuBackend, Device, EngineMemory]]:
    with open_iommu(DEFAULT_BACKEND) as iommu:
        device = iommu.open_device(bdf)
        with EngineMemory.of(iommu) as memory:
            yield iommu, device, memory


@contextmanager
def _nvme(
    bdf: str, scratch: bool, hot_path: str
) -> Iterator[Tuple[Device, Optional[NvmeLoops], PerfRun]]:
    """The device, its NVMe loops (None, with the reason in the run's ``skipped``, for a
    device that is not an NVMe controller) and the run to fill."""
    loops = Loops(hot_path)
    with _opened(bdf) as (_iommu, device, memory):
        run = PerfRun(device.bdf, loops.name, loops.why_python)
        if not is_nvme(device):
            code = device.config_read(0x08, 4) >> 8
            run.skipped["nvme"] = f"not an NVMe controller (class code {code:06x})"
            yield device, None, run
            return
        with NvmeController(device, memory, scratch=scratch) as ctrl:
            yield device, loops.nvme(ctrl), run


def _msix_problem(device: Device) -> str:
    if device.irq_info(uapi.VFIO_PCI_MSIX_IRQ_INDEX).count:
        return ""
    return "the device offers no MSI-X vector"


def nvme_io(
    bdf: str,
    workloads: Sequence[str],
    seconds: float = 1.0,
    warmup_s: float = 0.25,
    scratch: bool = False,
    hot_path: str = "auto",
) -> Dict[str, Any]:
    """Run the block I/O ``workloads`` (names of :data:`WORKLOADS`) on NVMe ``bdf``, one
    after the other on one controller bring-up: ``warmup_s`` unmeasured, ``seconds``
    measured each. Interrupt-driven ones wait on MSI-X vector 0."""
    with _nvme(bdf, scratch, hot_path) as (device, nvme, run):
        for name in workloads if nvme is not None else ():
            workload = WORKLOADS[name]
            problem = nvme.problem(workload) or (
                _msix_problem(device) if workload.interrupts else ""
            )
            if problem:
                run.skipped[name] = problem
            elif workload.interrupts:
                with device.irq_eventfds(uapi.VFIO_PCI_MSIX_IRQ_INDEX, 1) as irqs:
                    run.add(nvme.run(workload, seconds, warmup_s, irqs[0]))
            else:
                run.add(nvme.run(workload, seconds, warmup_s))
        return asdict(run)


def irq_delivery(bdf: str, count: int = 1000, hot_path: str = "auto") -> Dict[str, Any]:
    """MSI-X delivery latency of NVMe ``bdf``: ``count`` single reads, each timed from its
    completion entry to its interrupt's eventfd (``msi_delivery``)."""
    with _nvme(bdf, False, hot_path) as (device, nvme, run):
        problem = _msix_problem(device)
        if nvme is not None and problem:
            run.skipped["msi_delivery"] = problem
        elif nvme is not None:
            with device.irq_eventfds(uapi.VFIO_PCI_MSIX_IRQ_INDEX, 1) as irqs:
                run.add(nvme.irq_delivery("msi_delivery", count, irqs[0]))
        return asdict(run)


def mmio_latency(
    bdf: str, count: int = 5000, scratch: bool = False, hot_path: str = "auto"
) -> Dict[str, Any]:
    """Latency of 32-bit register reads and writes through the BAR's mmap and through
    pread/pwrite on the device fd, on the registers the device's engine names as harmless
    (``mmio_read_mmap``, ``mmio_write_mmap``, ``mmio_read_pread``, ``mmio_write_pread``)."""
    loops = Loops(hot_path)
    with _opened(bdf) as (_iommu, device, memory):
        engine = probe_engine(device, memory, scratch)
        if engine is None:
            raise NoEngineError(f"no DMA engine drives {bdf}: no registers known to be harmless")
        with engine:
            regs = engine.timing_registers()
            run = PerfRun(device.bdf, loops.name, loops.why_python)
            for via in ("mmap", "pread"):
                if via == "mmap" and regs.bar.address(regs.read_offset) is None:
                    run.skipped[f"mmio_read_{via}"] = f"BAR{regs.bar.index} is not mmap'ed"
                    continue
                run.add(loops.mmio(f"mmio_read_{via}", regs.bar, regs.read_offset, count, via=via))
                run.add(
                    loops.mmio(
                        f"mmio_write_{via}", regs.bar, regs.write_offset, count,
                        write_value=regs.write_value, via=via,
                    )
                )  # fmt: skip
            return asdict(run)


def map_unmap_rate(
    bdf: str, sizes: Sequence[int] = (4096, 2 << 20), seconds: float = 0.5, hot_path: str = "auto"
) -> Dict[str, Any]:
    """VFIO_IOMMU_MAP_DMA + UNMAP_DMA pairs per second, per mapping size, of base-page memory
    in the IOMMU context of ``bdf``'s group (``dma_map_unmap_4k``, ``dma_map_unmap_2m``)."""
    loops = Loops(hot_path)
    with _opened(bdf) as (iommu, device, _memory):
        run = PerfRun(device.bdf, loops.name, loops.why_python)
        for size in sizes:
            name = f"dma_map_unmap_{_size_text(size)}"
            # memfd (shmem) memory is backed by base pages whatever the buffer's alignment;
            # anonymous memory may or may not get a transparent huge page, which changes a
            # 2 MiB pair's cost tenfold from one run to the next (seen on the rack).
            with DmaBuffer(size, backing="memfd") as buffer:
                run.add(loops.map_unmap(name, iommu, buffer, MAP_IOVA, seconds))
        return asdict(run)


def _size_text(size: int) -> str:
    """``4k``, ``2m``."""
    for unit, scale in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
