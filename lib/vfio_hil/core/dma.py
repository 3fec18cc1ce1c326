"""Page-aligned process memory to map for device DMA."""

from __future__ import annotations

import mmap
import os
from types import TracebackType
from typing import Optional, Type

from . import uapi


class DmaBuffer:
    """An anonymous, page-aligned mapping of at least ``size`` bytes, initially zero.

    ``vaddr`` is what :meth:`Container.map_dma` takes. Unmap the IOVA range before closing
    the buffer: the kernel keeps the pages pinned until then anyway, but the device must not
    write to memory the process may reuse.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"DMA buffer size must be positive, not {size}")
        self.size = size
        #: Mapped length: ``size`` rounded up to whole pages.
        self.length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mm: Optional[mmap.mmap] = mmap.mmap(-1, self.length, flags=mmap.MAP_PRIVATE)
        # The address stays valid after the buffer export is released, as long as the mmap
        # is open; holding the export would make mmap.close() fail.
        with uapi.ffi.from_buffer(self._mm) as ptr:
            self.vaddr: int = int(uapi.ffi.cast("uintptr_t", ptr))

    def _live(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError("DMA buffer is closed")
        return self._mm

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range {offset:#x}+{length:#x} outside DMA buffer of size {self.size:#x}"
            )

    def fill(self, data: bytes, offset: int = 0) -> None:
        """Copy ``data`` into the buffer at ``offset``."""
        self._check_range(offset, len(data))
        self._live()[offset : offset + len(data)] = data

    def fill_random(self) -> bytes:
        """Fill the whole buffer (``size`` bytes) with random data and return that data."""
        data = os.urandom(self.size)
        self.fill(data)
        return data

    def zero(self) -> None:
        """Clear the whole buffer."""
        self.fill(bytes(self.size))

    def read(self, offset: int = 0, length: Optional[int] = None) -> bytes:
        """Return ``length`` bytes from ``offset`` (default: to the end of ``size``)."""
        if length is None:
            length = self.size - offset
        self._check_range(offset, length)
        return self._live()[offset : offset + length]

    def compare(self, expected: bytes, offset: int = 0) -> int:
        """Return how many bytes at ``offset`` differ from ``expected`` (0 means equal)."""
        actual = self.read(offset, len(expected))
        return sum(a != b for a, b in zip(actual, expected))

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._mm is None

    def close(self) -> None:
        """Unmap the memory. Idempotent."""
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()

    def __enter__(self) -> DmaBuffer:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DmaBuffer size={self.size:#x} vaddr={self.vaddr:#x}>"
