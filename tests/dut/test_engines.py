"""The DMA-engine drivers against real devices: edu and the NVMe controller, under every
IOMMU backend the kernel offers. Run inside a DUT (tests/e2e/test_core_integration.py)."""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Dict, Iterator, List

import pytest

from vfio_hil.core import DmaBuffer, IommuBackend, uapi
from vfio_hil.core.drivers import DmaEngine, EduEngine, EngineMemory, NvmeEngine, probe_engine
from vfio_hil.core.drivers.nvme import MediaWriteRefused
from vfio_hil.dut.isolation import FaultWatch

IOVA = 0x100000
UNMAPPED = 0x900000


@pytest.fixture(params=["edu", "nvme"])
def engine(
    request: pytest.FixtureRequest, vfio_devices: Dict[str, List[str]], iommu: IommuBackend
) -> Iterator[DmaEngine]:
    """Each model's device in ``iommu``, driven as the engine its driver offers."""
    bdf = next(iter(vfio_devices.get(request.param, [])), None)
    if bdf is None:
        pytest.fail(f"no {request.param} device on vfio-pci on this DUT")
    device = iommu.open_device(bdf)
    with EngineMemory.of(iommu) as memory:
        found = probe_engine(device, memory)
        assert found is not None, f"no engine probed for {bdf}"
        with found:
            yield found


def test_probe_picks_the_driver(engine: DmaEngine) -> None:
    expected = {"edu": EduEngine, "nvme": NvmeEngine}[engine.name]
    assert isinstance(engine, expected)
    assert {"dma_to_host", "device_irq", "device_registers"} <= set(engine.caps.names())


def test_transfers_arrive_and_blocked_ones_leave_a_fault(
    engine: DmaEngine, iommu: IommuBackend
) -> None:
    with ExitStack() as stack:
        buf = stack.enter_context(DmaBuffer(2 * 4096))
        stack.enter_context(iommu.map_buffer(buf, iova=IOVA))
        payload = engine.prime(os.urandom(engine.caps.to_host_size))[: engine.caps.to_host_size]
        assert engine.to_host(IOVA + 0x40).ok
        assert buf.read(0x40, len(payload)) == payload
        assert buf.read(0, 0x40) == bytes(0x40)
        secret = os.urandom(engine.caps.from_host_size)
        buf.fill(secret, 4096)
        assert engine.from_host(IOVA + 4096).ok
        assert engine.holds(secret)
        watch = FaultWatch()
        FaultWatch.pace()
        blocked = engine.to_host(UNMAPPED)
        assert not blocked.timed_out
        assert watch.wait_for(engine.device.bdf, UNMAPPED, "write"), (
            f"no IOMMU fault for {engine.name}'s blocked write ({blocked.status})"
        )


def test_device_raised_interrupt_counts_once(engine: DmaEngine) -> None:
    index = next(
        i
        for i in (uapi.VFIO_PCI_MSI_IRQ_INDEX, uapi.VFIO_PCI_MSIX_IRQ_INDEX)
        if i in engine.caps.irq_indexes
    )
    engine.ack_irq()
    with engine.device.irq_eventfds(index, 1) as irqs:
        assert engine.raise_irq(index).ok
        assert irqs.wait(0, 5.0) == 1
        engine.ack_irq()
        assert irqs.wait(0, 0.3) == 0


def test_registers_through_mmap(engine: DmaEngine) -> None:
    probe = engine.probe_registers()
    assert probe.mmapped and not probe.identity_problem
    assert probe.read_back == probe.expected_read_back
    # The engine still works after the register probe (NVMe: disabled and re-enabled).
    assert engine.raise_irq(engine.caps.irq_indexes[-1]).ok
    engine.ack_irq()


def test_nvme_refuses_media_writes_unless_scratch(
    vfio_devices: Dict[str, List[str]], iommu: IommuBackend
) -> None:
    device = iommu.open_device(vfio_devices["nvme"][0])
    with EngineMemory.of(iommu) as memory, NvmeEngine(device, memory) as engine:
        with pytest.raises(MediaWriteRefused, match="scratch"):
            engine.ctrl.write(0, 1, memory.alloc()[1])
        assert engine.ctrl.namespace is not None
        _buf, iova = memory.alloc(16 * 4096)
        assert engine.ctrl.read(0, 16 * 4096 // engine.ctrl.namespace.block_size, iova).ok


def test_nvme_read_waited_for_on_its_msix_eventfd(
    vfio_devices: Dict[str, List[str]], iommu: IommuBackend
) -> None:
    """A read waited for on the I/O queue's MSI-X vector 0 eventfd (not by busy polling)
    completes, and its data is what a polled read of the same blocks returns."""
    device = iommu.open_device(vfio_devices["nvme"][0])
    with EngineMemory.of(iommu) as memory, NvmeEngine(device, memory) as engine:
        ctrl = engine.ctrl
        assert ctrl.namespace is not None
        blocks = 4096 // ctrl.namespace.block_size
        polled, polled_iova = memory.alloc()
        woken, woken_iova = memory.alloc()
        # Different garbage in each: only the reads themselves can make them equal.
        polled.fill(b"\xaa" * 4096)
        woken.fill(b"\x55" * 4096)
        assert ctrl.read(0, blocks, polled_iova).ok
        with device.irq_eventfds(uapi.VFIO_PCI_MSIX_IRQ_INDEX, 1) as irqs:
            assert ctrl.read(0, blocks, woken_iova, eventfd=irqs[0]).ok
        assert woken.read() == polled.read()
