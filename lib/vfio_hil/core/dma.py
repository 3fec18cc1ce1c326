"""Page-aligned process memory to map for device DMA: anonymous pages, huge pages, memfd."""

from __future__ import annotations

import errno
import mmap
import os
import platform
from typing import Optional

from . import sysfs, uapi
from .errors import HugePagesUnavailableError
from .handle import Closing

PAGE_4K = 4096
HUGE_2M = 2 << 20
HUGE_1G = 1 << 30

# mmap(2)/memfd_create(2) flags Python's modules do not export everywhere. MAP_HUGETLB is
# 0x40000 except on the architectures listed; the page size goes in bits 26+ as log2.
MAP_HUGETLB = 0x80000 if platform.machine().startswith("mips") else 0x40000
MAP_HUGE_SHIFT = 26
MFD_CLOEXEC = 0x0001
MFD_HUGETLB = 0x0004

#: How a :class:`DmaBuffer` gets its memory.
BACKINGS = ("anonymous", "memfd")


def _huge_flags(page_size: int) -> int:
    return page_size.bit_length() - 1 << MAP_HUGE_SHIFT


class DmaBuffer(Closing):
    """A page-aligned mapping of at least ``size`` bytes, initially zero.

    ``page_size`` selects base pages (the default) or huge pages (:data:`HUGE_2M`,
    :data:`HUGE_1G`, from the kernel's hugetlb pool); ``backing`` is ``"anonymous"``
    (private anonymous memory) or ``"memfd"`` (a memfd, kept open in :attr:`fd`, so the
    same memory can be mapped again: see :meth:`remap`).

    ``vaddr`` is what :meth:`Container.map_dma` takes. Unmap the IOVA range before closing
    the buffer: the kernel keeps the pages pinned until then anyway, but the device must not
    write to memory the process may reuse.

    Raises :class:`~vfio_hil.core.errors.HugePagesUnavailableError` when huge pages of that
    size do not exist or the pool has too few free.
    """

    def __init__(
        self, size: int, page_size: int = mmap.PAGESIZE, backing: str = "anonymous"
    ) -> None:
        if size <= 0:
            raise ValueError(f"DMA buffer size must be positive, not {size}")
        if backing not in BACKINGS:
            raise ValueError(f"DMA buffer backing must be one of {BACKINGS}, not {backing!r}")
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page size must be a power of two, not {page_size}")
        self.size = size
        self.page_size = page_size
        self.backing = backing
        self.huge = page_size > mmap.PAGESIZE
        #: Mapped length: ``size`` rounded up to whole pages.
        self.length = -(-size // page_size) * page_size
        #: The memfd behind a ``"memfd"`` buffer, else None.
        self.fd: Optional[int] = None
        self._mm: Optional[mmap.mmap] = None
        self.vaddr = 0
        if self.huge:
            self._check_pool()
        try:
            if backing == "memfd":
                self.fd = self._memfd()
            self._map()
        except BaseException:
            self.close()
            raise

    def _check_pool(self) -> None:
        pool = sysfs.hugepage_pool(self.page_size)
        if pool is None:
            raise HugePagesUnavailableError(
                errno.EINVAL,
                f"{self.page_size >> 20} MiB huge pages are not supported by this kernel/CPU "
                f"(no /sys/kernel/mm/hugepages/hugepages-{self.page_size >> 10}kB)",
            )
        needed = self.length // self.page_size
        if pool.free < needed:
            raise HugePagesUnavailableError(
                errno.ENOMEM,
                f"{needed} free {self.page_size >> 20} MiB huge pages needed, the pool has "
                f"{pool.free} free of {pool.total} (raise "
                f"/sys/kernel/mm/hugepages/hugepages-{self.page_size >> 10}kB/nr_hugepages)",
            )

    def _memfd(self) -> int:
        flags = MFD_CLOEXEC | (MFD_HUGETLB | _huge_flags(self.page_size) if self.huge else 0)
        fd = os.memfd_create("vfio-hil-dma", flags)
        try:
            os.ftruncate(fd, self.length)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _map(self) -> None:
        try:
            if self.fd is not None:
                mm = mmap.mmap(self.fd, self.length, flags=mmap.MAP_SHARED)
            else:
                flags = mmap.MAP_PRIVATE
                if self.huge:
                    flags |= MAP_HUGETLB | _huge_flags(self.page_size)
                mm = mmap.mmap(-1, self.length, flags=flags)
        except OSError as e:
            if self.huge and e.errno == errno.ENOMEM:
                # The pool emptied between the check and the reservation.
                raise HugePagesUnavailableError(
                    e.errno, f"no {self.page_size >> 20} MiB huge pages left for {self.length}"
                ) from None
            raise
        # The address stays valid after the buffer export is released, as long as the mmap
        # is open; holding the export would make mmap.close() fail.
        with uapi.ffi.from_buffer(mm) as ptr:
            self.vaddr = int(uapi.ffi.cast("uintptr_t", ptr))
        self._mm = mm

    def remap(self) -> int:
        """Map the same memory at a new address, unmap the old one, return the new ``vaddr``.

        Only for ``"memfd"`` buffers. This is the process side of a VFIO vaddr update
        (:meth:`Container.invalidate_vaddr`, then :meth:`Container.update_vaddr`).
        """
        old = self._live()
        if self.fd is None:
            raise ValueError("only a memfd-backed DMA buffer can be remapped")
        self._map()
        old.close()
        return self.vaddr

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
        return self._mm is None and self.fd is None

    def close(self) -> None:
        """Unmap the memory and close the memfd. Idempotent."""
        mm, self._mm = self._mm, None
        fd, self.fd = self.fd, None
        try:
            if mm is not None:
                mm.close()
        finally:
            if fd is not None:
                os.close(fd)

    def __repr__(self) -> str:
        return (
            f"<DmaBuffer size={self.size:#x} vaddr={self.vaddr:#x} {self.backing} "
            f"pages={self.page_size:#x}>"
        )
