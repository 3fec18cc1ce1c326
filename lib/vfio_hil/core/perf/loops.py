"""The timed loops: NVMe block I/O (polled or interrupt-driven), interrupt delivery, MMIO
access, DMA map+unmap.

Each loop runs in the compiled hot path (:mod:`.hotpath`) where it loads, else in pure
Python; the :class:`~.measure.Measurement` it returns says which (``hot_path``), and
:attr:`Loops.why_python` why the compiled one was not used. Python sets everything up through
the library (device, controller, queues, mappings, eventfds); the loops only run.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from ..backend import ContainerBackend, IommuBackend
from ..dma import DmaBuffer
from ..drivers.nvme import spec
from ..drivers.nvme.controller import CommandTimeout, NvmeController
from ..irq import EventFd
from ..region import Bar
from . import hotpath
from .histogram import Histogram
from .measure import COMPILED, PYTHON, Measurement

#: A command that does not complete within this ends the loop (the controller is reset).
TIMEOUT_S = 5.0
_SEED = 0x5EED5EED
#: No limit on a compiled loop's operation count (it runs for its time).
UNBOUNDED = (1 << 64) - 1


@dataclass(frozen=True)
class Workload:
    """A block I/O workload: reads of ``io_bytes`` with ``queue_depth`` commands in flight,
    at random aligned offsets over the whole namespace or sequentially; ``interrupts``: the
    loop sleeps on the I/O queue's MSI-X eventfd instead of polling."""

    name: str
    io_bytes: int
    queue_depth: int
    sequential: bool = False
    interrupts: bool = False


WORKLOADS: Dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("randread_4k_qd1", 4096, 1),
        Workload("randread_4k_qd32", 4096, 32),
        Workload("randread_512_qd32", 512, 32),
        Workload("seqread_128k_qd8", 128 * 1024, 8, sequential=True),
        Workload("randread_4k_qd1_irq", 4096, 1, interrupts=True),
    )
}


def _stride(io_bytes: int) -> int:
    return -(-io_bytes // spec.PAGE) * spec.PAGE


class Loops:
    """The loops, compiled where possible. ``hot_path`` ``"python"`` forces pure Python."""

    def __init__(self, hot_path: str = "auto") -> None:
        if hot_path not in ("auto", COMPILED, PYTHON):
            raise ValueError(f"hot path must be auto, {COMPILED} or {PYTHON}, not {hot_path!r}")
        module, why = (None, "asked for the pure-Python loops") if hot_path == PYTHON else (
            hotpath.load()
        )  # fmt: skip
        if module is None and hot_path == COMPILED:
            raise RuntimeError(why)
        self.module = module
        #: Why the loops run in Python ("" when compiled).
        self.why_python = why

    @property
    def name(self) -> str:
        """``compiled`` or ``python``."""
        return COMPILED if self.module is not None else PYTHON

    def _measurement(self, name: str, r: Any, ops: int, nbytes: int = 0) -> Measurement:
        """A Measurement from a compiled loop's result structure."""
        lat = r.lat
        hist = Histogram.from_counts(lat.count, lat.sum_ns, lat.min_ns, lat.max_ns, lat.buckets)
        return Measurement(
            name, COMPILED, ops, nbytes, int(getattr(r, "errors", 0)),
            int(getattr(r, "first_error", 0)), int(r.elapsed_ns), int(r.cpu_ns), hist.to_dict(),
        )  # fmt: skip

    def _checked(self, what: str, status: int) -> None:
        if status < 0:
            raise OSError(-status, f"{what}: the compiled loop failed ({-status})")

    # -- MMIO --------------------------------------------------------------------------

    def mmio(
        self, name: str, bar: Bar, offset: int, count: int, write_value: Optional[int] = None,
        via: str = "mmap",
    ) -> Measurement:  # fmt: skip
        """``count`` timed 32-bit accesses of the register at ``offset``: reads, or writes of
        ``write_value``; through the region's mmap (``via="mmap"``) or pread/pwrite on the
        device fd (``via="pread"``)."""
        if via not in ("mmap", "pread"):
            raise ValueError(f"MMIO access goes via mmap or pread, not {via!r}")
        address = bar.address(offset) if via == "mmap" else None
        if via == "mmap" and address is None:
            raise ValueError(f"BAR{bar.index} offset {offset:#x} is not mmap'ed")
        if self.module is None:
            return self._python_mmio(name, bar, offset, count, write_value, via)
        lib, ffi = self.module.lib, self.module.ffi
        r = ffi.new("struct vh_loop_result *")
        if address is not None:
            if write_value is None:
                lib.vh_mmio_read_loop(address, count, r)
            else:
                lib.vh_mmio_write_loop(address, write_value, count, r)
        else:
            write = write_value is not None
            status = lib.vh_pio_loop(
                bar.fd, bar.file_offset(offset), int(write), write_value or 0, count, r
            )
            self._checked(f"{'pwrite' if write else 'pread'} of BAR{bar.index}+{offset:#x}", status)
        return self._measurement(name, r, int(r.ops))

    def _python_mmio(
        self, name: str, bar: Bar, offset: int, count: int, write_value: Optional[int], via: str
    ) -> Measurement:
        access: Callable[[], Any]
        if via == "mmap":
            access = (
                (lambda: bar.read32(offset)) if write_value is None
                else (lambda: bar.write32(offset, write_value))
            )  # fmt: skip
        else:
            word = (write_value or 0).to_bytes(4, "little")
            access = (
                (lambda: bar.read_block(offset, 4)) if write_value is None
                else (lambda: bar.write_block(offset, word))
            )  # fmt: skip
        return _python_timed(name, count, access)

    # -- DMA mapping ---------------------------------------------------------------------

    def map_unmap(
        self, name: str, iommu: IommuBackend, buffer: DmaBuffer, iova: int, seconds: float
    ) -> Measurement:
        """Map ``buffer`` at ``iova`` and unmap it again, for ``seconds``; each pair timed."""
        if self.module is None or not isinstance(iommu, ContainerBackend):
            # The compiled loop speaks the type1 ioctls; iommufd's go through the library.
            return _python_for(
                name, seconds,
                lambda: (iommu.map_dma(buffer.vaddr, iova, buffer.length),
                         iommu.unmap_dma(iova, buffer.length)),
            )  # fmt: skip
        lib, ffi = self.module.lib, self.module.ffi
        r = ffi.new("struct vh_loop_result *")
        status = lib.vh_map_unmap_loop(
            iommu.container.fd, buffer.vaddr, iova, buffer.length, UNBOUNDED, int(seconds * 1e9), r
        )
        self._checked(f"MAP_DMA/UNMAP_DMA of {buffer.length} bytes at {iova:#x}", status)
        return self._measurement(name, r, int(r.ops))

    # -- NVMe ------------------------------------------------------------------------------

    def nvme(self, ctrl: NvmeController) -> NvmeLoops:
        """Block I/O loops on ``ctrl``'s I/O queue pair."""
        return NvmeLoops(self, ctrl)


def _python_timed(name: str, count: int, access: Callable[[], Any]) -> Measurement:
    hist = Histogram()
    clock = time.monotonic_ns
    cpu0, start = time.thread_time_ns(), clock()
    for _ in range(count):
        t0 = clock()
        access()
        hist.add(clock() - t0)
    elapsed, cpu = clock() - start, time.thread_time_ns() - cpu0
    return Measurement(name, PYTHON, count, 0, 0, 0, elapsed, cpu, hist.to_dict())


def _python_for(name: str, seconds: float, operation: Callable[[], Any]) -> Measurement:
    hist = Histogram()
    clock = time.monotonic_ns
    cpu0, start = time.thread_time_ns(), clock()
    end = start + int(seconds * 1e9)
    t1 = start
    while t1 < end:
        t0 = clock()
        operation()
        t1 = clock()
        hist.add(t1 - t0)
    elapsed, cpu = clock() - start, time.thread_time_ns() - cpu0
    return Measurement(name, PYTHON, hist.count, 0, 0, 0, elapsed, cpu, hist.to_dict())


class NvmeLoops:
    """Reads on an enabled controller's I/O queue pair, with data slots of their own in the
    controller's engine memory (one per command in flight). Every command passes the
    controller's media-safety gate; reads change nothing."""

    #: Enough for 8 x 128 KiB and for 32 x 4 KiB in flight.
    DATA_BYTES = 1 << 20

    def __init__(self, loops: Loops, ctrl: NvmeController) -> None:
        if ctrl.namespace is None:
            raise ValueError(f"{ctrl.device.bdf}: NVMe namespace 1 is not active: nothing to read")
        self.loops = loops
        self.ctrl = ctrl
        self.namespace = ctrl.namespace
        self.queue = ctrl.io_queue()
        self.data, self.data_iova = ctrl.memory.alloc(self.DATA_BYTES)

    def problem(self, workload: Workload) -> str:
        """Why ``workload`` cannot run on this namespace ("" when it can)."""
        block = self.namespace.block_size
        if workload.io_bytes % block:
            return f"{workload.io_bytes}-byte reads on a namespace of {block}-byte blocks"
        if _stride(workload.io_bytes) * workload.queue_depth > self.DATA_BYTES:
            return f"{workload.queue_depth} x {workload.io_bytes} bytes exceed the data area"
        if workload.queue_depth >= self.queue.depth:
            return (
                f"queue depth {workload.queue_depth} needs a queue deeper than {self.queue.depth}"
            )
        if self.namespace.size_blocks * block < workload.io_bytes:
            return "the namespace is smaller than one read"
        return ""

    def _job(self, workload: Workload, seconds: float, warmup_s: float, eventfd: int) -> Any:
        ffi = self.loops.module.ffi
        job = ffi.new("struct vh_nvme_job *")
        job.opcode = spec.NVM_READ
        job.nsid = self.ctrl.block_command(spec.NVM_READ, 0, 1).nsid
        job.block_size = self.namespace.block_size
        job.io_bytes = workload.io_bytes
        job.blocks = self.namespace.size_blocks
        job.queue_depth = workload.queue_depth
        job.sequential = int(workload.sequential)
        job.data_iova = self.data_iova
        job.warmup_ns = int(warmup_s * 1e9)
        job.run_ns = int(seconds * 1e9)
        job.timeout_ns = int(TIMEOUT_S * 1e9)
        job.seed = _SEED
        job.eventfd = eventfd
        return job

    def _queue_view(self) -> Any:
        """The I/O queue pair as the compiled loop sees it (None where BAR0's doorbells are
        not mmap'ed)."""
        q, bar = self.queue, self.ctrl.bar
        sq_doorbell, cq_doorbell = bar.address(q.sq_doorbell), bar.address(q.cq_doorbell)
        if sq_doorbell is None or cq_doorbell is None:
            return None
        view = self.loops.module.ffi.new("struct vh_nvme_queue *")
        view.sq, view.cq = q.sq.vaddr, q.cq.vaddr
        view.sq_doorbell, view.cq_doorbell = sq_doorbell, cq_doorbell
        view.prp_lists, view.prp_lists_iova = q.lists.vaddr, q.lists_iova
        view.depth, view.tail, view.head, view.phase = q.depth, q.tail, q.head, q.phase
        return view

    def _settle(self, view: Any, status: int, what: str) -> None:
        """Take the queue state back from the compiled loop; a timeout resets the
        controller, as a timed-out command does in the driver."""
        self.queue.tail, self.queue.head, self.queue.phase = view.tail, view.head, view.phase
        if status == -110:  # ETIMEDOUT
            self.ctrl.enable()
            raise CommandTimeout(
                f"{self.ctrl.device.bdf}: {what}: no completion within {TIMEOUT_S:.0f} s; "
                "controller reset"
            )
        self.loops._checked(f"{self.ctrl.device.bdf}: {what}", status)

    def run(
        self, workload: Workload, seconds: float, warmup_s: float, eventfd: Optional[EventFd] = None
    ) -> Measurement:
        """Run ``workload`` for ``warmup_s`` unmeasured, then ``seconds`` measured. An
        interrupt-driven workload needs ``eventfd``, wired to MSI-X vector 0."""
        problem = self.problem(workload)
        if problem:
            raise ValueError(f"{self.ctrl.device.bdf}: {workload.name}: {problem}")
        if workload.interrupts and eventfd is None:
            raise ValueError(f"{workload.name} waits on an eventfd; none given")
        blocks = workload.io_bytes // self.namespace.block_size
        # The gate every command passes, once for the loop's (fixed) opcode.
        self.ctrl.check_safe(False, self.ctrl.block_command(spec.NVM_READ, 0, blocks))
        fd = eventfd.fd if (eventfd is not None and workload.interrupts) else -1
        view = self._queue_view() if self.loops.module is not None else None
        if view is None:
            return self._python_run(workload, seconds, warmup_s, eventfd if fd >= 0 else None)
        lib, ffi = self.loops.module.lib, self.loops.module.ffi
        result = ffi.new("struct vh_io_result *")
        status = lib.vh_nvme_io(view, self._job(workload, seconds, warmup_s, fd), result)
        self._settle(view, status, workload.name)
        return self.loops._measurement(workload.name, result, int(result.ios), int(result.bytes))

    def irq_delivery(self, name: str, count: int, eventfd: EventFd) -> Measurement:
        """``count`` single 4 KiB reads; for each, the time from its completion entry being
        visible to its interrupt reaching ``eventfd`` (MSI-X vector 0)."""
        workload = Workload(name, max(self.namespace.block_size, 4096), 1)
        view = self._queue_view() if self.loops.module is not None else None
        self.ctrl.check_safe(False, self.ctrl.block_command(spec.NVM_READ, 0, 1))
        if view is None:
            return self._python_delivery(workload, count, eventfd)
        lib, ffi = self.loops.module.lib, self.loops.module.ffi
        result = ffi.new("struct vh_loop_result *")
        status = lib.vh_nvme_irq_delivery(
            view, self._job(workload, 0, 0, eventfd.fd), count, result
        )
        self._settle(view, status, name)
        return self.loops._measurement(name, result, int(result.ops))

    # -- the pure-Python loops -------------------------------------------------------------

    def _submit(self, workload: Workload, tag: int, lba: int) -> int:
        blocks = workload.io_bytes // self.namespace.block_size
        command = self.ctrl.prepared(
            self.queue,
            self.ctrl.block_command(spec.NVM_READ, lba, blocks),
            self.data_iova + tag * _stride(workload.io_bytes),
            workload.io_bytes,
        )
        return self.ctrl.submit(self.queue, command)

    def _lbas(self, workload: Workload) -> Callable[[], int]:
        per_io = workload.io_bytes // self.namespace.block_size
        slots = self.namespace.size_blocks // per_io
        if workload.sequential:
            cursor = iter(range(1 << 62))
            return lambda: next(cursor) % slots * per_io
        rng = random.Random(_SEED)
        return lambda: rng.randrange(slots) * per_io

    def _python_run(
        self, workload: Workload, seconds: float, warmup_s: float, eventfd: Optional[EventFd]
    ) -> Measurement:
        clock, queue = time.monotonic_ns, self.queue
        hist = Histogram()
        next_lba = self._lbas(workload)
        tags: Dict[int, int] = {}
        submitted: Dict[int, int] = {}
        ops = errors = first_error = 0
        cpu0, start = time.thread_time_ns(), clock()
        measure_from, measuring = start + int(warmup_s * 1e9), False
        end = measure_from + int(seconds * 1e9)
        for tag in range(workload.queue_depth):
            tags[self._submit(workload, tag, next_lba())] = tag
            submitted[tag] = clock()
        last = clock()
        while tags:
            cqe = queue.poll()
            now = clock()
            if cqe is None:
                if now - last > TIMEOUT_S * 1e9:
                    self.ctrl.enable()
                    raise CommandTimeout(f"{self.ctrl.device.bdf}: {workload.name}: stalled")
                if eventfd is not None:
                    eventfd.read_count(TIMEOUT_S)
                continue
            queue.ring()
            last = now
            if not measuring and now >= measure_from:
                measuring, measure_from, end = True, now, now + int(seconds * 1e9)
                cpu0 = time.thread_time_ns()
            tag = tags.pop(cqe.cid)
            if measuring and now < end:
                hist.add(now - submitted[tag])
                ops += 1
                if not cqe.ok:
                    errors += 1
                    first_error = first_error or (cqe.status_code_type << 8 | cqe.status_code)
            if now < end:
                tags[self._submit(workload, tag, next_lba())] = tag
                submitted[tag] = clock()
        elapsed = min(clock(), end) - measure_from
        return Measurement(
            workload.name, PYTHON, ops, ops * workload.io_bytes, errors, first_error, elapsed,
            time.thread_time_ns() - cpu0, hist.to_dict(),
        )  # fmt: skip

    def _python_delivery(self, workload: Workload, count: int, eventfd: EventFd) -> Measurement:
        clock, queue = time.monotonic_ns, self.queue
        hist = Histogram()
        next_lba = self._lbas(workload)
        eventfd.read_count(0)  # a stale signal would be counted as the first command's
        cpu0, start = time.thread_time_ns(), clock()
        for _ in range(count):
            cid = self._submit(workload, 0, next_lba())
            deadline = clock() + int(TIMEOUT_S * 1e9)
            cqe = queue.poll()
            while cqe is None and clock() < deadline:
                cqe = queue.poll()
            seen = clock()
            while not eventfd.read_count(0) and clock() < deadline:
                pass
            fired = clock()
            if cqe is None or cqe.cid != cid or fired >= deadline:
                self.ctrl.enable()
                raise CommandTimeout(f"{self.ctrl.device.bdf}: {workload.name}: no interrupt")
            hist.add(fired - seen)
            queue.ring()
        elapsed, cpu = clock() - start, time.thread_time_ns() - cpu0
        return Measurement(workload.name, PYTHON, hist.count, 0, 0, 0, elapsed, cpu, hist.to_dict())
