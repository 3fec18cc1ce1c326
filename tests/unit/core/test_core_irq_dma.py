"""EventFd and DmaBuffer work on any Linux host."""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from vfio_hil.core import HUGE_1G, HUGE_2M, DmaBuffer, EventFd, HugePagesUnavailableError, sysfs


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


def test_memfd_buffer_and_remap() -> None:
    with DmaBuffer(5000, backing="memfd") as buf:
        assert buf.fd is not None and buf.length == 2 * mmap.PAGESIZE
        data = buf.fill_random()
        old = buf.vaddr
        assert buf.remap() != old
        assert buf.read() == data
        fd = buf.fd
    assert buf.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_only_memfd_buffers_remap() -> None:
    with DmaBuffer(100) as buf, pytest.raises(ValueError, match="memfd"):
        buf.remap()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backing": "shm"}, "backing must be one of"),
        ({"page_size": 3000}, "power of two"),
    ],
)
def test_bad_buffer_arguments(kwargs: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DmaBuffer(4096, **kwargs)


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        (None, "2 MiB huge pages are not supported"),
        (
            sysfs.HugePagePool(HUGE_2M, 4, 1),
            "2 free 2 MiB huge pages needed, the pool has 1 free of 4",
        ),
    ],
)
def test_huge_pages_unavailable(
    monkeypatch: pytest.MonkeyPatch, pool: Optional[sysfs.HugePagePool], message: str
) -> None:
    monkeypatch.setattr(sysfs, "hugepage_pool", lambda _size: pool)
    with pytest.raises(HugePagesUnavailableError, match=message) as info:
        DmaBuffer(HUGE_2M + 1, page_size=HUGE_2M)
    assert "hugepages-2048kB" in str(info.value)


def test_hugepage_pool_from_sysfs(tmp_path: Path) -> None:
    base = tmp_path / "sys/kernel/mm/hugepages/hugepages-2048kB"
    base.mkdir(parents=True)
    (base / "nr_hugepages").write_text("8\n")
    (base / "free_hugepages").write_text("3\n")
    assert sysfs.hugepage_pool(HUGE_2M, str(tmp_path)) == sysfs.HugePagePool(HUGE_2M, 8, 3)
    assert sysfs.hugepage_pool(HUGE_1G, str(tmp_path)) is None
