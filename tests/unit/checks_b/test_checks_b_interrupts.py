"""Pure logic of vfio_hil.dut.interrupts: IRQ info against config space, and the SET_IRQS
table's requests."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

from vfio_hil.core import uapi
from vfio_hil.dut.interrupts import (
    ERR,
    INTX,
    INTX_FLAGS,
    MSI,
    MSIX,
    REQ,
    SET_IRQS_CASES,
    _IrqBench,
    irq_mismatches,
)
from vfio_hil.dut.mapping import run_case

EVENTFD = uapi.VFIO_IRQ_INFO_EVENTFD
MSI_FLAGS = EVENTFD | uapi.VFIO_IRQ_INFO_NORESIZE

# What vfio-pci reports for QEMU's edu (conventional PCI, one MSI vector, INTx pin A) ...
EDU_CONFIG = {"pin": 1, "msi": 1, "msix": 0, "pcie": False}
EDU_IRQS = {INTX: (INTX_FLAGS, 1), MSI: (MSI_FLAGS, 1), MSIX: (MSI_FLAGS, 0), ERR: None,
            REQ: (MSI_FLAGS, 1)}  # fmt: skip
# ... and for QEMU's NVMe controller (PCI Express, 65 MSI-X vectors, no MSI).
NVME_CONFIG = {"pin": 1, "msi": 0, "msix": 65, "pcie": True}
NVME_IRQS = {INTX: (INTX_FLAGS, 1), MSI: (MSI_FLAGS, 0), MSIX: (MSI_FLAGS, 65),
             ERR: (MSI_FLAGS, 1), REQ: (MSI_FLAGS, 1)}  # fmt: skip


def test_consistent_devices_have_no_mismatch() -> None:
    assert irq_mismatches(EDU_IRQS, EDU_CONFIG) == []
    assert irq_mismatches(NVME_IRQS, NVME_CONFIG) == []
    no_pin = {**EDU_IRQS, INTX: (INTX_FLAGS, 0), MSI: (MSI_FLAGS, 0)}
    assert irq_mismatches(no_pin, {**EDU_CONFIG, "pin": 0, "msi": 0}) == []


def test_count_mismatches_are_named() -> None:
    irqs = {**NVME_IRQS, MSIX: (MSI_FLAGS, 64), ERR: None}
    problems = irq_mismatches(irqs, NVME_CONFIG)
    assert problems == [
        "MSI-X: count 64, expected 65 for MSI-X table size 65",
        "ERR: refused, expected 1 for a PCI Express capability",
    ]


def test_intx_without_pin_and_missing_flags() -> None:
    irqs = {**EDU_IRQS, INTX: (INTX_FLAGS, 1)}
    assert irq_mismatches(irqs, {**EDU_CONFIG, "pin": 0}) == [
        "INTx: count 1, expected 0 for interrupt pin 0"
    ]
    irqs = {**EDU_IRQS, INTX: (EVENTFD, 1), REQ: (0, 1)}
    assert irq_mismatches(irqs, EDU_CONFIG) == [
        "INTx: flags 0x1 lack MASKABLE|AUTOMASKED",
        "REQ: flags 0x0 lack EVENTFD",
    ]


class FakeDevice:
    """A device with 5 IRQ indices whose SET_IRQS accepts everything and records it."""

    def __init__(self) -> None:
        self.requests: list[tuple[Any, ...]] = []

    def info(self) -> Any:
        return SimpleNamespace(num_irqs=uapi.VFIO_PCI_NUM_IRQS)

    def raw_set_irqs(self, index: int, flags: int, start: int, count: int, data: bytes) -> int:
        self.requests.append((index, flags, start, count, data))
        return 0


def _bench(device: FakeDevice) -> _IrqBench:
    return _IrqBench(device, SimpleNamespace(fd=7), not_eventfd=3, closed=99)  # type: ignore[arg-type]


def test_irq_bench_builds_req_payloads() -> None:
    device = FakeDevice()
    bench = _bench(device)
    bench.req((7, 7))
    bench.req((), count=1)
    trigger = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
    assert device.requests == [
        (REQ, trigger, 0, 2, struct.pack("=2i", 7, 7)),
        (REQ, trigger, 0, 1, b""),
    ]
    assert bench.transcript.entries[0]["args"]["data"] == struct.pack("=2i", 7, 7).hex()


def test_set_irqs_table_flags_an_accepted_refusal() -> None:
    bench = _bench(FakeDevice())
    results = [run_case(case, bench) for case in SET_IRQS_CASES]
    # A device that accepts everything passes only the two control rows.
    assert [r["case"] for r in results if r["ok"]] == [
        "a valid REQ eventfd (control)",
        "removing it with fd -1 (control)",
    ]
