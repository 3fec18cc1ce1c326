"""DMA mapping semantics of a type1v2 container (VFIO_IOMMU_MAP_DMA / VFIO_IOMMU_UNMAP_DMA).

Runs on the DUT. Device-independent: a device's IOMMU group is attached to a new container
(the device itself is not opened) and the container is probed with valid and invalid
requests. The answer the kernel must give to each invalid request is written down as data
(:data:`TABLES`), so a kernel that answers differently is one line to change, with its reason.

Also home of the helpers the other DUT modules of this area share: a device in a container
of its own, and a huge page pool made available for the duration of a check (the container
and the ioctl transcript are in :mod:`.common`; the DMA engines in :mod:`.engines`).
"""

from __future__ import annotations

import errno
import mmap
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

from ..core import sysfs, uapi
from ..core.container import Container
from ..core.device import Device
from ..core.dma import HUGE_2M, DmaBuffer
from ..core.group import Group
from .common import RW, Transcript, answer, container_for, open_device, skipped

READ = uapi.VFIO_DMA_MAP_FLAG_READ
WRITE = uapi.VFIO_DMA_MAP_FLAG_WRITE
UNMAP_ALL = uapi.VFIO_DMA_UNMAP_FLAG_ALL
#: A flag bit no kernel defines (bits 0-2 are READ, WRITE, VADDR for map; bits 0-2 are
#: GET_DIRTY_BITMAP, ALL, VADDR for unmap).
UNKNOWN_FLAG = 1 << 8
IOVA_LIMIT = 1 << 64
#: Where the scratch mappings of a probe start: page-aligned, inside the first IOVA range of
#: every IOMMU VFIO supports, and clear of page 0 so that "one page below" still exists.
SCRATCH_IOVA = 0x100000
#: x86 interrupt (MSI) address window: a DMA write there is an interrupt request, so the IOMMU
#: driver reserves it and the container must not report it as mappable.
X86_MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)
DMA_ENTRY_LIMIT = "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit"
HUGEPAGES_NR = "/sys/kernel/mm/hugepages/hugepages-{kib}kB/nr_hugepages"

# -- shared helpers --------------------------------------------------------------------------


@contextmanager
def device_in_container(bdf: str) -> Iterator[Tuple[Container, Device]]:
    """``bdf`` opened through its group in a container of its own."""
    with open_device(bdf) as (container, _group, device):
        yield container, device


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read_int(path: str) -> int:
    with open(path) as fh:
        return int(fh.read())


@contextmanager
def hugepages(count: int, page_size: int = HUGE_2M) -> Iterator[Optional[Dict[str, str]]]:
    """Make ``count`` free huge pages of ``page_size`` available while the block runs.

    Grows the kernel's pool when it has too few free pages and shrinks it back afterwards.
    Yields None when the pages are there, or the answer that makes the check SKIP
    (:func:`.common.skipped`: the kernel has no such pages, or the host cannot spare them).
    """
    pool = sysfs.hugepage_pool(page_size)
    if pool is None:
        yield skipped("kernel", f"the kernel has no {page_size >> 10} KiB huge pages")
        return
    if pool.free >= count:
        yield None
        return
    path = HUGEPAGES_NR.format(kib=page_size >> 10)
    try:
        _write(path, str(pool.total + count - pool.free))
    except OSError as exc:
        yield skipped(
            "lab", f"cannot grow the {page_size >> 10} KiB huge page pool: {exc.strerror}"
        )
        return
    try:
        now = sysfs.hugepage_pool(page_size)
        if now is None or now.free < count:
            free = now.free if now else 0
            yield skipped(
                "lab",
                f"the {page_size >> 10} KiB huge page pool could not be filled: {free} free "
                f"of {count} needed (memory too fragmented or too small)",
            )
        else:
            yield None
    finally:
        _write(path, str(pool.total))


# -- the errno tables ------------------------------------------------------------------------


class Pages(NamedTuple):
    """An expected non-negative result of so many pages (an UNMAP_DMA size)."""

    count: int


#: What a case must answer: errno names, ``"OK"`` (any non-negative result) or a size.
Expected = Tuple[Union[str, Pages], ...]
OK: Expected = ("OK",)
EINVAL: Expected = ("EINVAL",)
EEXIST: Expected = ("EEXIST",)
EFAULT: Expected = ("EFAULT",)
# Linux 6.19 ("vfio/type1: sanitize for overflow using check_*_overflow") answers an address
# range that wraps past 2^64 with EOVERFLOW instead of EINVAL. The commit is marked as a fix,
# so stable kernels may carry it too: either errno is that refusal.
WRAP: Expected = ("EINVAL", "EOVERFLOW")


def matches(expected: Expected, ret: int, page: int) -> bool:
    """Whether raw result ``ret`` is one of ``expected`` (page sizes resolved with ``page``)."""
    for want in expected:
        if isinstance(want, Pages):
            if ret == want.count * page:
                return True
        elif want == "OK":
            if ret >= 0:
                return True
        elif ret < 0 and errno.errorcode.get(-ret) == want:
            return True
    return False


def describe(expected: Expected) -> str:
    """``expected`` as a reader sees it: ``EINVAL or EOVERFLOW``, ``4 pages``."""
    return " or ".join(f"{w.count} pages" if isinstance(w, Pages) else w for w in expected)


@dataclass
class Bench:
    """A container with scratch memory, where the cases of a table run.

    ``vaddr`` is ``SCRATCH_PAGES`` of ordinary writable memory, ``base`` the IOVA cases use
    by default, ``page`` the IOMMU page size; ``special`` holds the addresses of memory the
    process may not write or access, and of no memory at all.
    """

    container: Container
    transcript: Transcript
    page: int
    vaddr: int
    base: int
    special: Dict[str, int] = field(default_factory=dict)
    _added: List[Tuple[int, int]] = field(default_factory=list)

    def pages(self, n: int) -> int:
        """The size of ``n`` IOMMU pages."""
        return n * self.page

    def map(
        self,
        iova: Optional[int] = None,
        size: Optional[int] = None,
        vaddr: Optional[int] = None,
        flags: int = RW,
    ) -> int:
        """MAP_DMA, defaults: one page of scratch memory at ``base``. A mapping a case makes
        is removed again after the case (see :meth:`undo`)."""
        iova = self.base if iova is None else iova
        size = self.page if size is None else size
        ret = self.transcript.map(
            self.container, self.vaddr if vaddr is None else vaddr, iova, size, flags
        )
        if ret >= 0:
            self._added.append((iova, size))
        return ret

    def unmap(self, iova: Optional[int] = None, size: Optional[int] = None, flags: int = 0) -> int:
        """UNMAP_DMA, defaults: one page at ``base``."""
        iova = self.base if iova is None else iova
        return self.transcript.unmap(
            self.container, iova, self.page if size is None else size, flags
        )

    def map_short_argsz(self) -> int:
        """MAP_DMA whose argsz does not cover the structure."""
        request = uapi.new(
            "vfio_iommu_type1_dma_map",
            argsz=8,
            flags=RW,
            vaddr=self.vaddr,
            iova=self.base,
            size=self.page,
        )
        ret = uapi.ioctl_raw(self.container.fd, "VFIO_IOMMU_MAP_DMA", request)
        if ret >= 0:
            self._added.append((self.base, self.page))
        return self.transcript.record("VFIO_IOMMU_MAP_DMA", {"argsz": 8, "iova": self.base}, ret)

    def undo(self) -> None:
        """Remove the mappings the last case made (only a wrongly accepted request makes one)."""
        while self._added:
            iova, size = self._added.pop()
            self.transcript.unmap(self.container, iova, size)


@dataclass(frozen=True)
class Case:
    """One request and the answer the kernel must give to it.

    ``request`` issues the request on the table's bench (a :class:`Bench` here) and returns
    the raw result: non-negative, or ``-errno``.
    """

    name: str
    expected: Expected
    request: Callable[[Any], int]


def run_case(case: Case, bench: Any, page: int = 0) -> Dict[str, Any]:
    """Run ``case`` on ``bench``: what it expected, what it got, and whether they agree."""
    ret = case.request(bench)
    return {
        "case": case.name,
        "expected": describe(case.expected),
        "got": answer(ret),
        "ok": matches(case.expected, ret, page),
    }


#: Mapped by the tables that need an existing mapping: 4 pages at ``base``.
MAPPED_PAGES = 4


MAP_MALFORMED: Tuple[Case, ...] = (
    Case("IOVA not page aligned", EINVAL, lambda b: b.map(iova=b.base + 1)),
    Case("vaddr not page aligned", EINVAL, lambda b: b.map(vaddr=b.vaddr + 1)),
    Case("size not a multiple of the page size", EINVAL, lambda b: b.map(size=b.page + 1)),
    Case("size 0", EINVAL, lambda b: b.map(size=0)),
    Case("neither READ nor WRITE", EINVAL, lambda b: b.map(flags=0)),
    Case("unknown flag bit", EINVAL, lambda b: b.map(flags=RW | UNKNOWN_FLAG)),
    Case("argsz smaller than the structure", EINVAL, Bench.map_short_argsz),
    Case(
        "IOVA range wraps past 2^64",
        WRAP,
        lambda b: b.map(iova=IOVA_LIMIT - b.page, size=b.pages(2)),
    ),
    Case(
        "vaddr range wraps past 2^64",
        WRAP,
        lambda b: b.map(vaddr=IOVA_LIMIT - b.page, size=b.pages(2)),
    ),
)

MAP_OVERLAP: Tuple[Case, ...] = (
    Case("the same range again", EEXIST, lambda b: b.map(size=b.pages(MAPPED_PAGES))),
    Case("one page inside it", EEXIST, lambda b: b.map(iova=b.base + b.page)),
    Case(
        "a range over its first page",
        EEXIST,
        lambda b: b.map(iova=b.base - b.page, size=b.pages(2)),
    ),
    Case(
        "a range over its last page",
        EEXIST,
        lambda b: b.map(iova=b.base + b.pages(MAPPED_PAGES - 1), size=b.pages(2)),
    ),
    Case(
        "a range enclosing it",
        EEXIST,
        lambda b: b.map(iova=b.base - b.page, size=b.pages(MAPPED_PAGES + 2)),
    ),
    Case("the page just below it", OK, lambda b: b.map(iova=b.base - b.page)),
    Case("the page just above it", OK, lambda b: b.map(iova=b.base + b.pages(MAPPED_PAGES))),
    Case(
        "the same memory at a second IOVA",
        OK,
        lambda b: b.map(iova=b.base + b.pages(4 * MAPPED_PAGES), size=b.pages(MAPPED_PAGES)),
    ),
)

UNMAP_SPLIT: Tuple[Case, ...] = (
    Case("its first page", EINVAL, lambda b: b.unmap()),
    Case("its last page", EINVAL, lambda b: b.unmap(iova=b.base + b.pages(MAPPED_PAGES - 1))),
    Case("its middle pages", EINVAL, lambda b: b.unmap(iova=b.base + b.page, size=b.pages(2))),
    Case(
        "from below it into it",
        EINVAL,
        lambda b: b.unmap(iova=b.base - b.page, size=b.pages(2)),
    ),
    Case(
        "from inside it to above it",
        EINVAL,
        lambda b: b.unmap(iova=b.base + b.pages(2), size=b.pages(MAPPED_PAGES)),
    ),
    # After the refusals the mapping must be whole: still there, and removable as one.
    Case("mapping it again (still mapped)", EEXIST, lambda b: b.map()),
    Case(
        "unmapping exactly it (whole)",
        (Pages(MAPPED_PAGES),),
        lambda b: b.unmap(size=b.pages(MAPPED_PAGES)),
    ),
)

UNMAP_MALFORMED: Tuple[Case, ...] = (
    Case("size 0", EINVAL, lambda b: b.unmap(size=0)),
    Case("IOVA not page aligned", EINVAL, lambda b: b.unmap(iova=b.base + 1)),
    Case("size not a multiple of the page size", EINVAL, lambda b: b.unmap(size=b.page + 1)),
    Case(
        "IOVA range wraps past 2^64",
        WRAP,
        lambda b: b.unmap(iova=IOVA_LIMIT - b.page, size=b.pages(2)),
    ),
    Case("unknown flag bit", EINVAL, lambda b: b.unmap(flags=UNKNOWN_FLAG)),
    # These would unmap everything if accepted: MAPPED_PAGES are in place to show it.
    Case("UNMAP_ALL with an IOVA", EINVAL, lambda b: b.unmap(size=0, flags=UNMAP_ALL)),
    Case("UNMAP_ALL with a size", EINVAL, lambda b: b.unmap(iova=0, flags=UNMAP_ALL)),
    Case(
        "the mapping survived (unmapping it whole)",
        (Pages(MAPPED_PAGES),),
        lambda b: b.unmap(size=b.pages(MAPPED_PAGES)),
    ),
)

PINNING: Tuple[Case, ...] = (
    Case("device-read-only mapping of writable memory", OK, lambda b: b.map(flags=READ)),
    Case("device-write-only mapping of writable memory", OK, lambda b: b.map(flags=WRITE)),
    Case(
        "device-read-only mapping of read-only memory",
        OK,
        lambda b: b.map(vaddr=b.special["read_only"], flags=READ),
    ),
    # The device could write memory the process itself may not: pinning must refuse.
    Case(
        "device-writable mapping of read-only memory",
        EFAULT,
        lambda b: b.map(vaddr=b.special["read_only"], flags=RW),
    ),
    Case(
        "mapping of inaccessible (PROT_NONE) memory",
        EFAULT,
        lambda b: b.map(vaddr=b.special["no_access"], flags=READ),
    ),
    Case(
        "mapping of an address with no memory behind it",
        EFAULT,
        lambda b: b.map(vaddr=b.special["unmapped"]),
    ),
)


class Table(NamedTuple):
    """A table of cases and how many pages of the scratch memory its setup maps at ``base``."""

    cases: Tuple[Case, ...]
    premapped: int


TABLES: Dict[str, Table] = {
    "map_malformed": Table(MAP_MALFORMED, 0),
    "map_overlap": Table(MAP_OVERLAP, MAPPED_PAGES),
    "unmap_split": Table(UNMAP_SPLIT, MAPPED_PAGES),
    "unmap_malformed": Table(UNMAP_MALFORMED, MAPPED_PAGES),
    "pinning": Table(PINNING, 0),
}
#: Scratch memory of a bench, in pages: room for every case above.
SCRATCH_PAGES = 4 * MAPPED_PAGES


def min_page_size(pgsizes: int) -> int:
    """The IOMMU's smallest page size: the lowest bit of ``iova_pgsizes``."""
    return pgsizes & -pgsizes


def _special_memory(stack: ExitStack, page: int) -> Dict[str, int]:
    """Addresses of memory the process cannot write, cannot access, and of no memory at all;
    ``stack`` unmaps them."""

    def anonymous(prot: int) -> Any:
        addr = uapi.libc.mmap(
            uapi.ffi.NULL, page, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0
        )
        if int(uapi.ffi.cast("intptr_t", addr)) == -1:
            raise OSError(uapi.ffi.errno, os.strerror(uapi.ffi.errno), "mmap")
        return addr

    read_only = anonymous(mmap.PROT_READ)
    stack.callback(uapi.libc.munmap, read_only, page)
    no_access = anonymous(0)  # PROT_NONE, which the mmap module does not export
    stack.callback(uapi.libc.munmap, no_access, page)
    # Memory mapped and unmapped at once leaves an address with nothing behind it.
    hole = anonymous(mmap.PROT_READ)
    uapi.libc.munmap(hole, page)
    return {
        name: int(uapi.ffi.cast("uintptr_t", addr))
        for name, addr in (("read_only", read_only), ("no_access", no_access), ("unmapped", hole))
    }


def errno_table(bdf: str, table: str) -> Dict[str, Any]:
    """Run the cases of :data:`TABLES` ``[table]`` on a container with ``bdf``'s group.

    Returns each case with what it expected and got (``ok`` when they agree), the kernel
    release, and the ioctl transcript.
    """
    spec = TABLES[table]
    transcript = Transcript()
    with ExitStack() as stack:
        container, _group = stack.enter_context(container_for(bdf))
        page = min_page_size(container.info().iova_pgsizes)
        scratch = stack.enter_context(DmaBuffer(SCRATCH_PAGES * page))
        bench = Bench(container, transcript, page, scratch.vaddr, SCRATCH_IOVA)
        bench.special = _special_memory(stack, page)
        if spec.premapped:
            container.map_dma(scratch.vaddr, bench.base, spec.premapped * page)
        results = []
        for case in spec.cases:
            results.append(run_case(case, bench, page))
            bench.undo()
    return {
        "table": table,
        "kernel": os.uname().release,
        "page_size": page,
        "cases": results,
        "ioctls": transcript.entries,
    }


# -- IOVA ranges -----------------------------------------------------------------------------


def range_edge_cases(ranges: List[Tuple[int, int]], page: int) -> List[Tuple[str, int, int, bool]]:
    """Probe requests at the edges of inclusive IOVA ``ranges``: ``(name, iova, size, ok)``.

    The first and the last page of every range must map; the page just below and just above
    a range must not (unless it belongs to a neighbouring range), nor may a mapping that
    starts inside a range and runs out of it.
    """

    def inside(iova: int, size: int) -> bool:
        return any(start <= iova and iova + size - 1 <= last for start, last in ranges)

    cases: List[Tuple[str, int, int, bool]] = []
    for start, last in ranges:
        span = f"[{start:#x}, {last:#x}]"
        cases.append((f"first page of {span}", start, page, True))
        cases.append((f"last page of {span}", last + 1 - page, page, True))
        if start >= page and not inside(start - page, page):
            cases.append((f"page just below {span}", start - page, page, False))
        if last + page < IOVA_LIMIT and not inside(last + 1, page):
            cases.append((f"page just above {span}", last + 1, page, False))
            cases.append((f"two pages across the end of {span}", last + 1 - page, 2 * page, False))
    return cases


def iova_range_edges(bdf: str) -> Dict[str, Any]:
    """Map one page at each edge of every reported IOVA range, and just outside them."""
    transcript = Transcript()
    with container_for(bdf) as (container, _group), ExitStack() as stack:
        info = container.info()
        page = min_page_size(info.iova_pgsizes)
        ranges = [(r.start, r.last) for r in info.iova_ranges]
        scratch = stack.enter_context(DmaBuffer(2 * page))
        results = []
        for name, iova, size, ok in range_edge_cases(ranges, page):
            ret = transcript.map(container, scratch.vaddr, iova, size)
            if ret >= 0:
                transcript.unmap(container, iova, size)
            results.append(
                {
                    "case": name,
                    "iova": hex(iova),
                    "expected": "OK" if ok else "EINVAL",
                    "got": answer(ret),
                    "ok": ret >= 0 if ok else ret == -errno.EINVAL,
                }
            )
    msi_reserved = not any(
        start <= X86_MSI_WINDOW[1] and X86_MSI_WINDOW[0] <= last for start, last in ranges
    )
    return {
        "ranges": [[hex(s), hex(e)] for s, e in ranges],
        "page_size": page,
        "x86": os.uname().machine in ("x86_64", "i686"),
        "msi_window_reserved": msi_reserved,
        "cases": results,
        "ioctls": transcript.entries,
    }


# -- unmap semantics and accounting ---------------------------------------------------------


@contextmanager
def _scratch_container(bdf: str, pages: int) -> Iterator[Tuple[Container, DmaBuffer, int]]:
    """A container for ``bdf`` and ``pages`` IOMMU pages of scratch memory; yields the
    container, the memory and the IOMMU page size."""
    with container_for(bdf) as (container, _group):
        page = min_page_size(container.info().iova_pgsizes)
        with DmaBuffer(pages * page) as scratch:
            yield container, scratch, page


def unmap_coverage(bdf: str) -> Dict[str, Any]:
    """UNMAP_DMA of ranges that hold nothing, and of one range covering two mappings and the
    hole between them: the sizes reported, and whether the mappings are really gone."""
    transcript = Transcript()
    with _scratch_container(bdf, 2) as (container, scratch, page):
        base = SCRATCH_IOVA
        empty_before = transcript.unmap(container, base, 16 * page)
        mappings = [(base, 2 * page), (base + 4 * page, page)]
        for iova, size in mappings:
            container.map_dma(scratch.vaddr, iova, size)
        empty_between = transcript.unmap(container, base + 8 * page, 8 * page)
        covering = transcript.unmap(container, base, 8 * page)
        # Gone means the same ranges can be mapped again.
        remaps = [transcript.map(container, scratch.vaddr, iova, size) for iova, size in mappings]
    return {
        "page_size": page,
        "empty_before_any_mapping": answer(empty_before),
        "empty_range": answer(empty_between),
        "covering": answer(covering),
        "covering_expected": sum(size for _iova, size in mappings),
        "remaps": [answer(r) for r in remaps],
        "ioctls": transcript.entries,
    }


def unmap_all(bdf: str) -> Dict[str, Any]:
    """VFIO_DMA_UNMAP_FLAG_ALL: the total size it reports, the DMA-available count after it,
    and whether every mapping is really gone."""
    transcript = Transcript()
    with _scratch_container(bdf, 4) as (container, scratch, page):
        if not container.check_extension(uapi.VFIO_UNMAP_ALL):
            return {"supported": False}
        avail_before = container.info().dma_avail
        mappings = [(SCRATCH_IOVA, page), (SCRATCH_IOVA + 4 * page, 3 * page), (1 << 30, page)]
        for iova, size in mappings:
            container.map_dma(scratch.vaddr, iova, size)
        total = transcript.unmap(container, 0, 0, UNMAP_ALL)
        avail_after = container.info().dma_avail
        remaps = [transcript.map(container, scratch.vaddr, iova, size) for iova, size in mappings]
    return {
        "supported": True,
        "unmapped": answer(total),
        "expected": sum(size for _iova, size in mappings),
        "dma_avail_before": avail_before,
        "dma_avail_after": avail_after,
        "remaps": [answer(r) for r in remaps],
        "ioctls": transcript.entries,
    }


def dma_avail_accounting(bdf: str, mappings: int = 8) -> Dict[str, Any]:
    """The DMA_AVAIL capability before, after each of ``mappings`` maps and each unmap."""
    with _scratch_container(bdf, mappings) as (container, scratch, page):
        trail = [container.info().dma_avail]
        if trail[0] is None:
            return {"reported": False}
        # Every other page, so that no two mappings are adjacent.
        iovas = [SCRATCH_IOVA + 2 * i * page for i in range(mappings)]
        for i, iova in enumerate(iovas):
            container.map_dma(scratch.vaddr + i * page, iova, page)
            trail.append(container.info().dma_avail)
        for iova in iovas:
            container.unmap_dma(iova, page)
            trail.append(container.info().dma_avail)
    return {"reported": True, "mappings": mappings, "trail": trail}


def dma_entry_limit(bdf: str, limit: int = 4) -> Dict[str, Any]:
    """Lower ``vfio_iommu_type1.dma_entry_limit`` to ``limit`` and map past it.

    The kernel reads the parameter when a container selects its IOMMU (VFIO_SET_IOMMU): a
    container set up before the change keeps its budget (reported, as evidence), so the
    group moves to a container set up after it, where ``limit`` mappings fit and the next
    one must fail with ENOSPC. The parameter is restored whatever happens.
    """
    if not os.path.exists(DMA_ENTRY_LIMIT):
        return {"supported": False}
    transcript = Transcript()
    original = _read_int(DMA_ENTRY_LIMIT)
    with ExitStack() as stack:
        group = stack.enter_context(Group.of_device(bdf))
        earlier = stack.enter_context(Container())
        group.set_container(earlier)
        earlier.set_iommu(uapi.VFIO_TYPE1v2_IOMMU)
        page = min_page_size(earlier.info().iova_pgsizes)
        scratch = stack.enter_context(DmaBuffer((limit + 1) * page))
        stack.callback(_write, DMA_ENTRY_LIMIT, str(original))
        _write(DMA_ENTRY_LIMIT, str(limit))
        earlier_avail = earlier.info().dma_avail
        group.unset_container()
        later = stack.enter_context(Container())
        group.set_container(later)
        later.set_iommu(uapi.VFIO_TYPE1v2_IOMMU)
        later_avail = later.info().dma_avail
        maps = [
            transcript.map(later, scratch.vaddr + i * page, SCRATCH_IOVA + 2 * i * page, page)
            for i in range(limit + 1)
        ]
        # One unmap makes room for one mapping again.
        transcript.unmap(later, SCRATCH_IOVA, page)
        last = limit * page
        after_unmap = transcript.map(later, scratch.vaddr + last, SCRATCH_IOVA + 2 * last, page)
    return {
        "supported": True,
        "limit": limit,
        "original": original,
        "restored": _read_int(DMA_ENTRY_LIMIT),
        "earlier_container_avail": earlier_avail,
        "new_container_avail": later_avail,
        "maps": [answer(r) for r in maps],
        "map_after_unmap": answer(after_unmap),
        "ioctls": transcript.entries,
    }


def hugepage_mapping(bdf: str) -> Dict[str, Any]:
    """Map a 2 MiB huge page as one mapping, and one IOMMU page inside it at another IOVA."""
    transcript = Transcript()
    with hugepages(1) as unavailable:
        if unavailable:
            return unavailable
        with ExitStack() as stack:
            container, _group = stack.enter_context(container_for(bdf))
            huge = stack.enter_context(DmaBuffer(HUGE_2M, page_size=HUGE_2M))
            page = min_page_size(container.info().iova_pgsizes)
            huge.fill(b"\xa5" * huge.size)  # fault the huge page in
            # Aligned to the huge page, so the IOMMU may map it with one large page.
            iova, inner_iova = 2 * HUGE_2M, 4 * HUGE_2M
            avail = [container.info().dma_avail]
            whole = transcript.map(container, huge.vaddr, iova, HUGE_2M)
            inner = transcript.map(container, huge.vaddr + 5 * page, inner_iova, page)
            avail.append(container.info().dma_avail)
            unmapped = [
                transcript.unmap(container, iova, HUGE_2M),
                transcript.unmap(container, inner_iova, page),
            ]
            avail.append(container.info().dma_avail)
    return {
        "huge_page_size": HUGE_2M,
        "page_size": page,
        "map_whole": answer(whole),
        "map_inner_page": answer(inner),
        "unmapped": [answer(u) for u in unmapped],
        "dma_avail": avail,
        "ioctls": transcript.entries,
    }
