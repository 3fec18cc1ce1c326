"""The timed loops against the fake NVMe controller: the compiled loop (its doorbell stores
forwarded to the fake by a thread, as a device would notice them) and the pure-Python loop
must count what completed, put each read's data where its PRPs point, keep the queue's
state for the driver, and give up on a controller that stops completing."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Dict, Iterator

import pytest
from nvme_fake import FakeIommu, FakeNvme, FakePciDevice, block_pattern

from vfio_hil.core.drivers import EngineMemory
from vfio_hil.core.drivers.nvme import spec
from vfio_hil.core.drivers.nvme.controller import CommandTimeout, NvmeController
from vfio_hil.core.perf import hotpath
from vfio_hil.core.perf.loops import WORKLOADS, Loops, Workload
from vfio_hil.core.perf.measure import COMPILED, PYTHON

BAR_SIZE = 0x2000


class MemoryBar:
    """BAR0 of the fake, with its doorbells in real memory the compiled loop stores to; a
    thread hands every new doorbell value to the fake, which then fetches and completes."""

    def __init__(self, nvme: FakeNvme) -> None:
        self.nvme = nvme
        self.memory = (ctypes.c_uint32 * (BAR_SIZE // 4))()
        self.lock = threading.Lock()
        self.seen: Dict[int, int] = {}
        self.stop = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def address(self, offset: int, width: int = 4) -> int:
        return ctypes.addressof(self.memory) + offset

    def _watch(self) -> None:
        while not self.stop:
            for offset in range(spec.REG_DOORBELLS, spec.REG_DOORBELLS + 16, 4):
                value = self.memory[offset // 4]
                if self.seen.get(offset, 0) != value:
                    with self.lock:
                        self.seen[offset] = value
                        self.nvme.write32(offset, value)
            time.sleep(0)

    def write32(self, offset: int, value: int) -> None:
        with self.lock:
            if offset >= spec.REG_DOORBELLS:
                self.memory[offset // 4] = value
                self.seen[offset] = value
            self.nvme.write32(offset, value)

    def __getattr__(self, name: str) -> object:
        return getattr(self.nvme, name)  # read32, read64, write64, close, mmapped


@pytest.fixture
def rig() -> Iterator[tuple]:
    iommu = FakeIommu()
    nvme = FakeNvme(iommu, block_size=512, blocks=1 << 16)
    bar = MemoryBar(nvme)
    memory = EngineMemory(iommu.map, iommu.unmap)
    ctrl = NvmeController(FakePciDevice(nvme), memory, bar=bar, timeout_s=1.0)  # type: ignore[arg-type]
    yield ctrl, nvme, iommu
    bar.stop = True
    bar.thread.join()
    ctrl.close()
    memory.close()


@pytest.mark.parametrize("hot_path", [COMPILED, PYTHON])
@pytest.mark.parametrize("name", ["randread_4k_qd32", "randread_512_qd32", "seqread_128k_qd8"])
def test_reads_complete_and_land_where_their_prps_point(
    rig: tuple, hot_path: str, name: str
) -> None:
    ctrl, nvme, iommu = rig
    loops = Loops(hot_path)
    assert loops.name == hot_path, loops.why_python
    nvme_loops = loops.nvme(ctrl)
    workload = WORKLOADS[name]
    m = nvme_loops.run(workload, seconds=0.2, warmup_s=0.05)
    assert m.hot_path == hot_path and m.errors == 0
    assert m.ops > 0 and m.histogram.count == m.ops and m.bytes == m.ops * workload.io_bytes
    assert 0.15e9 < m.elapsed_ns < 0.5e9 and m.cpu_ns > 0
    reads = [i for i in nvme.issued if not i.admin and i.opcode == spec.NVM_READ]
    assert len(reads) >= m.ops
    # Every in-flight slot holds whole blocks of the fake's pattern for some LBA: the PRP
    # entries (and lists, for 128 KiB) pointed at the right pages.
    for slot in range(workload.queue_depth):
        iova = nvme_loops.data_iova + slot * max(workload.io_bytes, spec.PAGE)
        data = iommu.read(iova, workload.io_bytes)
        assert data is not None
        first_lba = int.from_bytes(data[:8], "little")  # block_pattern starts with its LBA
        expected = b"".join(block_pattern(first_lba + b, 512)
                            for b in range(workload.io_bytes // 512))  # fmt: skip
        assert data == expected, f"slot {slot}"
    # The driver goes on where the loop left the queue.
    assert ctrl.read(0, 1, nvme_loops.data_iova).ok


def test_sequential_reads_walk_the_namespace(rig: tuple) -> None:
    ctrl, nvme, _ = rig
    Loops(COMPILED).nvme(ctrl).run(WORKLOADS["seqread_128k_qd8"], seconds=0.05, warmup_s=0)
    lbas = [i.cdw10 for i in nvme.issued if not i.admin and i.opcode == spec.NVM_READ]
    assert lbas[:4] == [0, 256, 512, 768]


@pytest.mark.parametrize("hot_path", [COMPILED, PYTHON])
def test_a_controller_that_stops_completing_is_reset(
    rig: tuple, hot_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctrl, nvme, _ = rig
    monkeypatch.setattr("vfio_hil.core.perf.loops.TIMEOUT_S", 0.2)
    nvme_loops = Loops(hot_path).nvme(ctrl)
    nvme.hang = True
    resets = nvme.resets
    with pytest.raises(CommandTimeout, match=r"controller reset|stalled"):
        nvme_loops.run(WORKLOADS["randread_4k_qd1"], seconds=0.1, warmup_s=0)
    assert nvme.resets == resets + 1 and nvme.ready
    assert ctrl.read(0, 1, nvme_loops.data_iova).ok  # usable again


def test_workloads_a_namespace_cannot_run_are_named(rig: tuple) -> None:
    ctrl, _, _ = rig
    nvme_loops = Loops(PYTHON).nvme(ctrl)
    assert nvme_loops.problem(WORKLOADS["randread_512_qd32"]) == ""
    assert "queue depth 200" in nvme_loops.problem(Workload("deep", 512, 200))
    assert "exceed the data area" in nvme_loops.problem(Workload("wide", 1 << 20, 2))
    assert "blocks" in nvme_loops.problem(Workload("odd", 700, 1))
    with pytest.raises(ValueError, match="waits on an eventfd"):
        nvme_loops.run(WORKLOADS["randread_4k_qd1_irq"], seconds=0.1, warmup_s=0)


def test_forced_python_and_unknown_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hotpath.FORCE_ENV, "python")
    assert Loops().name == PYTHON and hotpath.FORCE_ENV in Loops().why_python
    with pytest.raises(RuntimeError, match="pure-Python"):
        Loops(COMPILED)
    with pytest.raises(ValueError, match="hot path"):
        Loops("fast")
