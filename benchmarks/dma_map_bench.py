"""DMA map + unmap throughput: the vfio_hil core library against the same ioctls issued in a
tight C loop (the library's compiled hot path, :mod:`vfio_hil.core.perf`, built with cffi when
the package is installed).

Runs on a VFIO host as root, with ``--bdf`` bound to vfio-pci (any device: it only gives the
container an IOMMU). Prints pairs per second for 4 KiB and 2 MiB mappings and the overhead of
each library layer over C and over the Python floor; it measures, it does not judge (``make
bench`` runs it on a rack DUT).

The loops: ``C`` (the baseline: the compiled engine of the PERF checks, which also times each
pair with two vDSO clock reads), ``Python floor`` (the same two ioctls through
``fcntl.ioctl`` on requests packed once: the least any Python code pays per pair, no checks),
``cffi floor`` (the same through libffi, cffi's ABI mode, as the library once issued them),
then the library's ``Container`` and ``IommuBackend`` methods.

    python benchmarks/dma_map_bench.py --bdf 0000:00:04.0 [--rounds 5] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import statistics
import sys
import time
from types import ModuleType
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

from vfio_hil.core import (  # noqa: E402
    HUGE_2M,
    PAGE_4K,
    ContainerBackend,
    DmaBuffer,
    HugePagesUnavailableError,
    open_iommu,
    sysfs,
    uapi,
)
from vfio_hil.core.perf import hotpath  # noqa: E402
from vfio_hil.core.perf.loops import UNBOUNDED  # noqa: E402

IOVA = 0x4000_0000  # 1 GiB: aligned for any page size used here
RW = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE
HUGE_POOL = f"/sys/kernel/mm/hugepages/hugepages-{HUGE_2M >> 10}kB/nr_hugepages"
#: The Python layer's budget over the C loop, for the verdict line.
BUDGET_PCT = 10.0
#: Live mapping counts for the scaling figures (the kernel allows 65535 by default).
MANY = (500, 5000)
#: The loops the library layers are compared with (columns of the report).
REFERENCES = ("C", "Python floor")
#: Loops that are references, not library layers: they are not judged against the budget.
REFERENCE_LOOPS = ("C", "Python floor", "cffi floor")

Loop = Callable[[int], None]


class Result(NamedTuple):
    label: str
    rates: Dict[str, float]


def rate(loop: Loop, iterations: int) -> float:
    """Pairs per second of ``loop(iterations)``."""
    start = time.perf_counter()
    loop(iterations)
    return iterations / (time.perf_counter() - start)


def measure(loops: Dict[str, Loop], rounds: int, seconds: float) -> Dict[str, float]:
    """Median pairs per second of each loop; the loops alternate within each round so that
    drift of the (emulated) machine hits them alike."""
    loops["C"](10)
    iterations = max(20, int(rate(loops["C"], 50) * seconds))
    samples: Dict[str, List[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, loop in loops.items():
            samples[name].append(rate(loop, iterations))
    return {name: statistics.median(values) for name, values in samples.items()}


def loops_for(backend: ContainerBackend, compiled: ModuleType, buf: DmaBuffer) -> Dict[str, Loop]:
    container = backend.container
    size = buf.length
    result = compiled.ffi.new("struct vh_loop_result *")

    def c(n: int) -> None:
        status = compiled.lib.vh_map_unmap_loop(
            container.fd, buf.vaddr, IOVA, size, n, UNBOUNDED, result
        )
        if status or result.ops != n:
            raise OSError(-status, os.strerror(-status), "vh_map_unmap_loop")

    map_request = uapi.new(
        "vfio_iommu_type1_dma_map", flags=RW, vaddr=buf.vaddr, iova=IOVA, size=size
    )
    unmap_request = uapi.new("vfio_iommu_type1_dma_unmap", iova=IOVA, size=size)
    map_nr, unmap_nr = uapi.IOCTLS["VFIO_IOMMU_MAP_DMA"], uapi.IOCTLS["VFIO_IOMMU_UNMAP_DMA"]

    def cffi_floor(n: int) -> None:
        ioctl, fd = uapi.libc.ioctl, container.fd
        for _ in range(n):
            if ioctl(fd, map_nr, map_request) or ioctl(fd, unmap_nr, unmap_request):
                raise OSError(uapi.ffi.errno, os.strerror(uapi.ffi.errno), "cffi floor")

    map_packed = bytearray(uapi.ffi.buffer(map_request))
    unmap_packed = bytearray(uapi.ffi.buffer(unmap_request))

    def python_floor(n: int) -> None:
        # fcntl.ioctl raises OSError itself; the kernel rewrites only the unmapped size, which
        # stays the same.
        ioctl, fd = fcntl.ioctl, container.fd
        for _ in range(n):
            ioctl(fd, map_nr, map_packed, True)
            ioctl(fd, unmap_nr, unmap_packed, True)

    def through_container(n: int) -> None:
        for _ in range(n):
            container.map_dma(buf.vaddr, IOVA, size)
            container.unmap_dma(IOVA, size)

    def through_backend(n: int) -> None:
        for _ in range(n):
            backend.map_dma(buf.vaddr, IOVA, size)
            backend.unmap_dma(IOVA, size)

    return {
        "C": c,
        "Python floor": python_floor,
        "cffi floor": cffi_floor,
        "Container": through_container,
        "IommuBackend": through_backend,
    }


def many_mappings(backend: ContainerBackend, count: int) -> Tuple[float, float]:
    """Microseconds per mapping to map ``count`` live 4 KiB buffers with IOVAs from the
    backend's allocator (:meth:`map_buffer`), then to close them oldest first. Flat figures
    as ``count`` grows mean linear cost."""
    with contextlib.ExitStack() as stack:
        buffers = [stack.enter_context(DmaBuffer(PAGE_4K)) for _ in range(count)]
        start = time.perf_counter()
        mappings = [backend.map_buffer(buf) for buf in buffers]
        mapped = time.perf_counter()
        for mapping in mappings:
            mapping.close()
        closed = time.perf_counter()
    return (mapped - start) / count * 1e6, (closed - mapped) / count * 1e6


def huge_buffer(reserve: bool) -> DmaBuffer:
    """A 2 MiB buffer on a huge page if the pool has one (or ``reserve`` may add one), else on
    base pages."""
    try:
        return DmaBuffer(HUGE_2M, page_size=HUGE_2M)
    except HugePagesUnavailableError:
        pool = sysfs.hugepage_pool(HUGE_2M)
        if not reserve or pool is None:
            return DmaBuffer(HUGE_2M)
    with open(HUGE_POOL, "w") as f:
        f.write(str(pool.total + 1))
    try:
        return DmaBuffer(HUGE_2M, page_size=HUGE_2M)
    except HugePagesUnavailableError:
        return DmaBuffer(HUGE_2M)


def report(results: List[Result], header: str) -> Dict[str, bool]:
    """Print one row per mapping and loop: pairs per second and the extra time per pair over
    each of :data:`REFERENCES`. Return, per reference, whether every library layer stayed
    within the budget."""
    print(header)
    print(f"{'mapping':<22}{'loop':<14}{'pairs/s':>10}{'vs C loop':>12}{'vs Python floor':>17}")
    within = dict.fromkeys(REFERENCES, True)
    for r in results:
        for i, (name, value) in enumerate(r.rates.items()):
            row = f"{r.label if i == 0 else '':<22}{name:<14}{value:>10.0f}"
            for reference, width in zip(REFERENCES, (12, 17)):
                if name == reference or (reference != "C" and name == "C"):
                    row += " " * width
                    continue
                overhead = (r.rates[reference] / value - 1) * 100
                row += f"{overhead:>+{width - 1}.1f}%"
                if name not in REFERENCE_LOOPS:
                    within[reference] = within[reference] and overhead <= BUDGET_PCT
            print(row.rstrip())
    return within


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bdf", required=True, help="a device bound to vfio-pci")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="per loop and round")
    parser.add_argument(
        "--reserve-huge-page",
        action="store_true",
        help="add a 2 MiB page to the hugetlb pool for the run (restored after)",
    )
    args = parser.parse_args(argv)
    pool = sysfs.hugepage_pool(HUGE_2M)
    backend = open_iommu("type1v2")
    assert isinstance(backend, ContainerBackend)
    compiled, why = hotpath.load()
    if compiled is None:
        print(f"no C loop to compare with: {why}", file=sys.stderr)
        return 2
    with backend:
        backend.open_device(args.bdf)
        results = []
        try:
            with DmaBuffer(PAGE_4K) as small, huge_buffer(args.reserve_huge_page) as big:
                for label, buf in (
                    ("4 KiB, 4 KiB page", small),
                    (f"2 MiB, {'2 MiB page' if big.huge else '4 KiB pages'}", big),
                ):
                    rates = measure(loops_for(backend, compiled, buf), args.rounds, args.seconds)
                    results.append(Result(label, rates))
            scaling = {count: many_mappings(backend, count) for count in MANY}
        finally:
            if pool is not None and sysfs.hugepage_pool(HUGE_2M) != pool:
                with open(HUGE_POOL, "w") as f:
                    f.write(str(pool.total))
    within = report(
        results,
        f"DMA map+unmap pairs per second, median of {args.rounds} rounds "
        f"(backend {backend.name}, device {args.bdf}, Python {sys.version.split()[0]})",
    )
    for reference, ok in within.items():
        print(
            f"library layers within {BUDGET_PCT:.0f}% of the {reference} loop: "
            f"{'yes' if ok else 'NO'}"
        )
    print("IommuBackend.map_buffer with many live 4 KiB mappings, microseconds per mapping")
    print(f"{'mappings':>10}{'map':>10}{'close':>10}")
    for count, (map_us, close_us) in scaling.items():
        print(f"{count:>10}{map_us:>10.1f}{close_us:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
