"""EventFd and DmaBuffer work on any Linux host."""

from __future__ import annotations

import mmap
import time

import pytest
from vfio_hil.core import DmaBuffer, EventFd


def test_eventfd_counts() -> None:
    with EventFd() as efd:
        efd.signal()
        efd.signal(2)
        assert efd.read_count(1.0) == 3
        assert efd.read_count(0) == 0


def test_eventfd_timeout() -> None:
    with EventFd() as efd:
        start = time.monotonic()
        assert efd.read_count(0.1) == 0
        assert time.monotonic() - start >= 0.09
    assert efd.closed


def test_dma_buffer() -> None:
    with DmaBuffer(100) as buf:
        assert buf.vaddr % mmap.PAGESIZE == 0
        assert buf.length == mmap.PAGESIZE
        assert buf.read() == bytes(100)
        data = buf.fill_random()
        assert len(data) == 100 and buf.read() == data
        assert buf.compare(data) == 0
        buf.fill(b"\x00\x00", 10)
        assert buf.compare(data) == sum(b != 0 for b in data[10:12])
        assert buf.compare(data[50:], 50) == 0
        buf.zero()
        assert buf.read(90) == bytes(10)
        with pytest.raises(ValueError):
            buf.fill(b"x", 100)
        with pytest.raises(ValueError):
            buf.read(0, 101)
    assert buf.closed
    with pytest.raises(ValueError, match="closed"):
        buf.read()
    buf.close()


def test_dma_buffer_rounds_to_pages() -> None:
    with DmaBuffer(mmap.PAGESIZE + 1) as buf:
        assert buf.length == 2 * mmap.PAGESIZE
    with pytest.raises(ValueError):
        DmaBuffer(0)
