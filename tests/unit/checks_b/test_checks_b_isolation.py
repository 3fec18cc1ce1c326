"""Pure logic of vfio_hil.dut.isolation: IOMMU fault records, pagemap entries, the sentinel
data."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest

from vfio_hil.dut import isolation
from vfio_hil.dut.common import parse_fault
from vfio_hil.dut.isolation import FaultWatch, _nonzero_random, dma_fault, faults_for, pfn_of

INTEL_61 = (
    "DMAR: [DMA Write NO_PASID] Request device [00:04.0] fault addr 0x41da000 "
    "[fault reason 0x05] PTE Write access is not set"
)
INTEL_OLD = (
    "DMAR: [DMA Read] Request device [00:05.0] PASID ffffffff fault addr 200000 "
    "[fault reason 06] PTE Read access is not set"
)
AMD_DEV = (
    "vfio-pci 0000:00:04.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x000b "
    "address=0x200040 flags=0x0020]"
)
AMD_NODEV = (
    "AMD-Vi: Event logged [IO_PAGE_FAULT device=0000:01:00.0 domain=0x0000 "
    "address=0x300000 flags=0x0000]"
)


@pytest.mark.parametrize(
    ("line", "access", "device", "address"),
    [
        (INTEL_61, "write", "0000:00:04.0", 0x41DA000),
        (INTEL_OLD, "read", "0000:00:05.0", 0x200000),
        (AMD_DEV, "write", "0000:00:04.0", 0x200040),
        (AMD_NODEV, "read", "0000:01:00.0", 0x300000),
    ],
)
def test_dma_fault(line: str, access: str, device: str, address: int) -> None:
    fault = dma_fault(line)
    assert fault is not None
    assert (fault.access, fault.device, fault.address) == (access, device, address)


@pytest.mark.parametrize(
    "line",
    [
        "DMAR: DRHD: handling fault status reg 2",
        "DMAR: [INTR-REMAP] Request device [00:1f.0] fault index 0x1a [fault reason 0x25] x",
        "vfio-pci 0000:01:00.0: Relaying device request to user (#0)",
    ],
)
def test_lines_that_are_no_dma_fault(line: str) -> None:
    assert dma_fault(line) is None


def test_other_iommu_faults_carry_no_address() -> None:
    # An IOMMU fault all the same (the PLAT checks count it), but no DMA page fault.
    fault = parse_fault("DMAR: [INTR-REMAP] Request device [00:1f.0] fault index 0x1a")
    assert fault is not None
    assert (fault.kind, fault.device, fault.access, fault.address) == (
        "INTR-REMAP",
        "0000:00:1f.0",
        None,
        None,
    )


def test_faults_for_matches_device_page_and_access() -> None:
    lines = [INTEL_61, INTEL_OLD, AMD_DEV, "unrelated"]
    assert faults_for(lines, "0000:00:04.0", 0x41DA123, "write") == [INTEL_61]
    # The same page from another device, or the other direction, is not this fault.
    assert faults_for(lines, "0000:00:05.0", 0x41DA000, "write") == []
    assert faults_for(lines, "0000:00:05.0", 0x200FFF, "read") == [INTEL_OLD]
    assert faults_for(lines, "0000:00:05.0", 0x200000, "write") == []
    # AMD reports the address to the byte; the page is what counts.
    assert faults_for(lines, "0000:00:04.0", 0x200000, "write") == [AMD_DEV]


def test_pfn_of_pagemap_entries() -> None:
    present = 1 << 63
    assert pfn_of(present | 0x1234) == 0x1234
    assert pfn_of(0x1234) is None  # not present
    assert pfn_of(present) is None  # frame numbers hidden from unprivileged readers
    assert pfn_of(present | 1 << 55 | 0x10) == 0x10  # soft-dirty bit is not part of the PFN


def test_sentinel_bytes_cannot_look_like_a_failed_transfer() -> None:
    data = _nonzero_random(4096)
    assert len(data) == 4096
    assert 0 not in data and 0xFF not in data


def test_pace_lets_three_faults_through_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three faults go at once; the fourth waits until the first is a window (5 s and a
    margin) ago, so no 5 s window of the kernel's rate limit holds more than three."""
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    clock = SimpleNamespace(monotonic=lambda: now[0], sleep=sleep)
    monkeypatch.setattr(isolation, "time", clock)
    monkeypatch.setattr(FaultWatch, "_provoked", deque(maxlen=3))
    provoked = []
    for step in (0.0, 0.5, 0.5, 0.5, 3.0, 4.0):
        now[0] += step
        FaultWatch.pace()
        provoked.append(round(now[0], 2))

    assert provoked == [100.0, 100.5, 101.0, 105.25, 108.25, 112.25]
    windows = [[t for t in provoked if start <= t < start + 5.0] for start in provoked]
    assert max(len(w) for w in windows) <= 3
