"""DMA mapping semantics of an IOMMU backend: VFIO_IOMMU_MAP_DMA / VFIO_IOMMU_UNMAP_DMA of a
type1v2 or type1 container, IOMMU_IOAS_MAP / IOMMU_IOAS_UNMAP of an iommufd IOAS.

Runs on the DUT. Device-independent: a device is opened in an IOMMU context of its own
(:func:`vfio_hil.core.open_iommu` of the backend asked for) and the context is probed with
valid and invalid requests. The answer the kernel must give to each invalid request is
written down as data (:data:`TABLES`): a case's default answer, and beside it the backends
that answer differently (:class:`Differs`) or where the case asks the kernel nothing
(:class:`NotApplicable`), each with its reason in the kernel. A kernel that answers
differently is one line to change, with its reason.

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
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)

from ..core import sysfs, uapi
from ..core.backend import ContainerBackend, IommuBackend, open_iommu
from ..core.container import Container
from ..core.device import Device
from ..core.dma import HUGE_2M, DmaBuffer
from ..core.group import Group
from .common import DEFAULT_BACKEND, RW, Transcript, answer, open_device, skipped

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
    """An IOMMU context with scratch memory, where the cases of a table run.

    ``iommu`` is the context (a container of type1v2 or type1, or an iommufd IOAS), with the
    device the bench was built for opened in it; ``vaddr`` is ``SCRATCH_PAGES`` of ordinary
    writable memory, ``base`` the IOVA cases use by default, ``page`` the IOMMU page size;
    ``special`` holds the addresses of memory the process may not write or access, and of no
    memory at all.
    """

    iommu: IommuBackend
    transcript: Transcript
    page: int
    vaddr: int
    base: int
    special: Dict[str, int] = field(default_factory=dict)
    _added: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def backend(self) -> str:
        """The name of the bench's IOMMU backend (``"type1v2"``, ``"type1"``, ``"iommufd"``)."""
        return self.iommu.name

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
        """Map DMA (VFIO flags), defaults: one page of scratch memory at ``base``. A mapping
        a case makes is removed again after the case (see :meth:`undo`)."""
        iova = self.base if iova is None else iova
        size = self.page if size is None else size
        ret = self.transcript.map(
            self.iommu, self.vaddr if vaddr is None else vaddr, iova, size, flags
        )
        if ret >= 0:
            self._added.append((iova, size))
        return ret

    def unmap(self, iova: Optional[int] = None, size: Optional[int] = None, flags: int = 0) -> int:
        """Unmap DMA (VFIO flags), defaults: one page at ``base``."""
        iova = self.base if iova is None else iova
        return self.transcript.unmap(self.iommu, iova, self.page if size is None else size, flags)

    def unmap_everything(self) -> int:
        """Unmap every mapping with one request: VFIO_DMA_UNMAP_FLAG_ALL (IOVA and size 0) on
        a container, IOVA 0 and length U64_MAX on an IOAS (``iommufd_ioas_unmap``)."""
        if isinstance(self.iommu, ContainerBackend):
            return self.unmap(0, 0, UNMAP_ALL)
        return self.unmap(0, IOVA_LIMIT - 1)

    def dma_avail(self) -> Optional[int]:
        """The mappings the context still accepts (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL); None
        where it reports none (iommufd accounts pinned pages, not mappings)."""
        if isinstance(self.iommu, ContainerBackend):
            return self.iommu.container.info().dma_avail
        return None

    def map_short_argsz(self) -> int:
        """VFIO_IOMMU_MAP_DMA whose argsz does not cover the structure (a container's
        request: see the case's :class:`NotApplicable` for iommufd)."""
        assert isinstance(self.iommu, ContainerBackend), "argsz is a container's field"
        request = uapi.new(
            "vfio_iommu_type1_dma_map",
            argsz=8,
            flags=RW,
            vaddr=self.vaddr,
            iova=self.base,
            size=self.page,
        )
        ret = uapi.ioctl_raw(self.iommu.container.fd, "VFIO_IOMMU_MAP_DMA", request)
        if ret >= 0:
            self._added.append((self.base, self.page))
        return self.transcript.record("VFIO_IOMMU_MAP_DMA", {"argsz": 8, "iova": self.base}, ret)

    def undo(self) -> None:
        """Remove the mappings the last case made (only a wrongly accepted request makes one)."""
        while self._added:
            iova, size = self._added.pop()
            self.transcript.unmap(self.iommu, iova, size)


@dataclass(frozen=True)
class Differs:
    """What a backend answers to a case instead of the case's default, and ``why``: where in
    the kernel the answer comes from."""

    answer: Expected
    why: str


@dataclass(frozen=True)
class NotApplicable:
    """A case a backend cannot put to the kernel (e.g. a container's field iommufd has not),
    and ``why``. The case is not run there and is reported as not applicable, never as an
    answer of the kernel."""

    why: str


#: How a backend departs from a case's default answer.
Departure = Union[Differs, NotApplicable]


@dataclass(frozen=True)
class Case:
    """One request and the answer the kernel must give to it.

    ``request`` issues the request on the table's bench (a :class:`Bench` here) and returns
    the raw result: non-negative, or ``-errno``. ``expected`` is the answer of every backend
    not in ``by_backend``; ``by_backend`` names the backends that answer otherwise
    (:class:`Differs`) or where the case does not apply (:class:`NotApplicable`).
    """

    name: str
    expected: Expected
    request: Callable[[Any], int]
    by_backend: Mapping[str, Departure] = field(default_factory=dict)


def run_case(
    case: Case, bench: Any, page: int = 0, backend: Optional[str] = None
) -> Dict[str, Any]:
    """Run ``case`` on ``bench`` under IOMMU ``backend`` (None: the case's default answer
    applies): what it expected, what it got, and whether they agree.

    Under a backend the case :class:`Differs` for, its answer is expected and the result
    says so (``answer``: the backend, ``why``: the kernel's reason). Under one it is
    :class:`NotApplicable` for, the request is not issued: ``ok`` is None, ``got`` says not
    applicable and ``why`` why.
    """
    departure = case.by_backend.get(backend) if backend else None
    result: Dict[str, Any] = {"case": case.name}
    if isinstance(departure, NotApplicable):
        return {
            **result,
            "expected": "not applicable",
            "got": "not applicable",
            "ok": None,
            "answer": backend,
            "why": departure.why,
        }
    expected = departure.answer if departure else case.expected
    ret = case.request(bench)
    result.update(expected=describe(expected), got=answer(ret), ok=matches(expected, ret, page))
    if departure:
        result.update(answer=backend, why=departure.why)
    else:
        result["answer"] = "default"
    return result


#: Mapped by the tables that need an existing mapping: 4 pages at ``base``.
MAPPED_PAGES = 4

# Where the backends depart from the defaults (type1v2's answers), measured on Linux 6.12
# (docs/backend-differences.md). The iommufd IOAS is drivers/iommu/iommufd/io_pagetable.c,
# the container drivers/vfio/vfio_iommu_type1.c.
_IOMMUFD_WRAP = Differs(
    ("EOVERFLOW",),
    "iommufd: check_add_overflow in iopt_check_iova/iopt_unmap_iova (io_pagetable.c)",
)
_IOMMUFD_NO_AREA = Differs(
    ("ENOENT",),
    "iommufd: iopt_unmap_iova_range refuses a range that does not hold whole areas with "
    "ENOENT, and checks no alignment on unmap (io_pagetable.c)",
)
_IOMMUFD_NO_MAP_FLAGS = NotApplicable(
    "IOMMU_IOAS_MAP has only FIXED_IOVA/WRITEABLE/READABLE: the library refuses any other "
    "VFIO flag itself (IommufdBackend.raw_map_dma), the kernel is not asked"
)
_IOMMUFD_NO_UNMAP_FLAGS = NotApplicable(
    "struct iommu_ioas_unmap has no flags: the library refuses any VFIO unmap flag itself "
    "(IommufdBackend.raw_unmap_dma), the kernel is not asked"
)
_TYPE1_GONE = Differs(
    (Pages(0),),
    "type1 v1: the first partial unmap removed the whole mapping (vfio_dma_do_unmap)",
)

MAP_MALFORMED: Tuple[Case, ...] = (
    Case("IOVA not page aligned", EINVAL, lambda b: b.map(iova=b.base + 1)),
    Case("vaddr not page aligned", EINVAL, lambda b: b.map(vaddr=b.vaddr + 1)),
    Case("size not a multiple of the page size", EINVAL, lambda b: b.map(size=b.page + 1)),
    Case("size 0", EINVAL, lambda b: b.map(size=0)),
    Case("neither READ nor WRITE", EINVAL, lambda b: b.map(flags=0)),
    Case(
        "unknown flag bit",
        EINVAL,
        lambda b: b.map(flags=RW | UNKNOWN_FLAG),
        {"iommufd": _IOMMUFD_NO_MAP_FLAGS},
    ),
    Case(
        "argsz smaller than the structure",
        EINVAL,
        Bench.map_short_argsz,
        {
            "iommufd": NotApplicable(
                "argsz is VFIO_IOMMU_MAP_DMA's: iommufd checks its own size field in "
                "iommufd_fops_ioctl (drivers/iommu/iommufd/main.c), which the library sets"
            )
        },
    ),
    Case(
        "IOVA range wraps past 2^64",
        WRAP,
        lambda b: b.map(iova=IOVA_LIMIT - b.page, size=b.pages(2)),
        {"iommufd": _IOMMUFD_WRAP},
    ),
    Case(
        "vaddr range wraps past 2^64",
        WRAP,
        lambda b: b.map(vaddr=IOVA_LIMIT - b.page, size=b.pages(2)),
        {"iommufd": _IOMMUFD_WRAP},
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

#: A partial unmap of a mapping under type1 v1 and iommufd, after its first row.
_PARTIAL_UNMAP = {"type1": _TYPE1_GONE, "iommufd": _IOMMUFD_NO_AREA}

UNMAP_SPLIT: Tuple[Case, ...] = (
    Case(
        "its first page",
        EINVAL,
        lambda b: b.unmap(),
        {
            "type1": Differs(
                (Pages(MAPPED_PAGES),),
                "type1 v1: vfio_dma_do_unmap checks the bisection only for iommu->v2; v1 "
                "unmaps every mapping the range touches, whole",
            ),
            "iommufd": _IOMMUFD_NO_AREA,
        },
    ),
    Case(
        "its last page",
        EINVAL,
        lambda b: b.unmap(iova=b.base + b.pages(MAPPED_PAGES - 1)),
        _PARTIAL_UNMAP,
    ),
    Case(
        "its middle pages",
        EINVAL,
        lambda b: b.unmap(iova=b.base + b.page, size=b.pages(2)),
        _PARTIAL_UNMAP,
    ),
    Case(
        "from below it into it",
        EINVAL,
        lambda b: b.unmap(iova=b.base - b.page, size=b.pages(2)),
        _PARTIAL_UNMAP,
    ),
    Case(
        "from inside it to above it",
        EINVAL,
        lambda b: b.unmap(iova=b.base + b.pages(2), size=b.pages(MAPPED_PAGES)),
        _PARTIAL_UNMAP,
    ),
    # After the refusals the mapping must be whole: still there, and removable as one.
    Case(
        "mapping it again (still mapped)",
        EEXIST,
        lambda b: b.map(),
        {"type1": Differs(OK, _TYPE1_GONE.why)},
    ),
    Case(
        "unmapping exactly it (whole)",
        (Pages(MAPPED_PAGES),),
        lambda b: b.unmap(size=b.pages(MAPPED_PAGES)),
        {"type1": _TYPE1_GONE},
    ),
)

UNMAP_MALFORMED: Tuple[Case, ...] = (
    Case("size 0", EINVAL, lambda b: b.unmap(size=0)),
    Case(
        "IOVA not page aligned",
        EINVAL,
        lambda b: b.unmap(iova=b.base + 1),
        {"iommufd": _IOMMUFD_NO_AREA},
    ),
    Case(
        "size not a multiple of the page size",
        EINVAL,
        lambda b: b.unmap(size=b.page + 1),
        {"iommufd": _IOMMUFD_NO_AREA},
    ),
    Case(
        "IOVA range wraps past 2^64",
        WRAP,
        lambda b: b.unmap(iova=IOVA_LIMIT - b.page, size=b.pages(2)),
        {"iommufd": _IOMMUFD_WRAP},
    ),
    Case(
        "unknown flag bit",
        EINVAL,
        lambda b: b.unmap(flags=UNKNOWN_FLAG),
        {"iommufd": _IOMMUFD_NO_UNMAP_FLAGS},
    ),
    # These would unmap everything if accepted: MAPPED_PAGES are in place to show it.
    Case(
        "UNMAP_ALL with an IOVA",
        EINVAL,
        lambda b: b.unmap(size=0, flags=UNMAP_ALL),
        {"iommufd": _IOMMUFD_NO_UNMAP_FLAGS},
    ),
    Case(
        "UNMAP_ALL with a size",
        EINVAL,
        lambda b: b.unmap(iova=0, flags=UNMAP_ALL),
        {"iommufd": _IOMMUFD_NO_UNMAP_FLAGS},
    ),
    Case(
        "the mapping survived (unmapping it whole)",
        (Pages(MAPPED_PAGES),),
        lambda b: b.unmap(size=b.pages(MAPPED_PAGES)),
    ),
)

#: The unmaps of DMA-006 (:func:`unmap_coverage`) that find nothing mapped.
_IOMMUFD_NOTHING = Differs(
    ("ENOENT",),
    "iommufd: iopt_unmap_iova_range answers ENOENT when it unmapped nothing (io_pagetable.c); "
    "a container succeeds with size 0",
)
UNMAP_EMPTY: Tuple[Case, ...] = (
    Case(
        "a range before any mapping",
        (Pages(0),),
        lambda b: b.unmap(size=b.pages(16)),
        {"iommufd": _IOMMUFD_NOTHING},
    ),
    Case(
        "a range beside mappings, holding none",
        (Pages(0),),
        lambda b: b.unmap(iova=b.base + b.pages(8), size=b.pages(8)),
        {"iommufd": _IOMMUFD_NOTHING},
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


def _page_size(iommu: IommuBackend) -> int:
    """The IOMMU's smallest page size: a container's ``iova_pgsizes``, an IOAS's IOVA
    alignment (IOMMU_IOAS_IOVA_RANGES ``out_iova_alignment``, at least the CPU page)."""
    if isinstance(iommu, ContainerBackend):
        return min_page_size(iommu.container.info().iova_pgsizes)
    _ranges, alignment = iommu.ioas.iova_ranges()  # type: ignore[attr-defined]
    return max(alignment, mmap.PAGESIZE)


def open_bench(stack: ExitStack, bdf: str, backend: str, pages: int = SCRATCH_PAGES) -> Bench:
    """A :class:`Bench` of ``pages`` IOMMU pages of scratch memory on a new IOMMU context
    (``backend`` as :func:`vfio_hil.core.open_iommu` takes it) with ``bdf`` opened in it, so
    that the context has its IOMMU domain and reserved ranges; ``stack`` closes it."""
    iommu = stack.enter_context(open_iommu(backend))
    iommu.open_device(bdf)
    page = _page_size(iommu)
    scratch = stack.enter_context(DmaBuffer(pages * page))
    return Bench(iommu, Transcript(), page, scratch.vaddr, SCRATCH_IOVA)


def errno_table(bdf: str, table: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Run the cases of :data:`TABLES` ``[table]`` under IOMMU ``backend``, in a context with
    ``bdf`` opened.

    Returns each case with what it expected and got (``ok`` when they agree, None for a
    case not applicable to the backend) and which answer applied, the backend, the kernel
    release, and the ioctl transcript.
    """
    spec = TABLES[table]
    with ExitStack() as stack:
        bench = open_bench(stack, bdf, backend)
        bench.special = _special_memory(stack, bench.page)
        if spec.premapped:
            bench.iommu.map_dma(bench.vaddr, bench.base, bench.pages(spec.premapped))
        results = []
        for case in spec.cases:
            results.append(run_case(case, bench, bench.page, bench.backend))
            bench.undo()
    return {
        "table": table,
        "backend": bench.backend,
        "kernel": os.uname().release,
        "page_size": bench.page,
        "cases": results,
        "ioctls": bench.transcript.entries,
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


def iova_range_edges(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Under IOMMU ``backend``, map one page at each edge of every reported IOVA range, and
    just outside them (a container's VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, an IOAS's
    IOMMU_IOAS_IOVA_RANGES: both refuse a fixed IOVA outside them with EINVAL)."""
    with ExitStack() as stack:
        bench = open_bench(stack, bdf, backend, 2)
        ranges = [(r.start, r.last) for r in bench.iommu.iova_ranges()]
        results = []
        for name, iova, size, ok in range_edge_cases(ranges, bench.page):
            ret = bench.map(iova, size)
            bench.undo()
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
        "backend": bench.backend,
        "ranges": [[hex(s), hex(e)] for s, e in ranges],
        "page_size": bench.page,
        "x86": os.uname().machine in ("x86_64", "i686"),
        "msi_window_reserved": msi_reserved,
        "cases": results,
        "ioctls": bench.transcript.entries,
    }


# -- unmap semantics and accounting ---------------------------------------------------------


def unmap_coverage(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Under IOMMU ``backend``, unmap ranges that hold nothing (the :data:`UNMAP_EMPTY`
    cases, before and beside mappings), and one range covering two mappings and the hole
    between them: the answers, the size reported, and whether the mappings are really gone."""
    with ExitStack() as stack:
        bench = open_bench(stack, bdf, backend, 2)
        page, base = bench.page, bench.base
        before, beside = UNMAP_EMPTY
        empty = [run_case(before, bench, page, bench.backend)]
        mappings = [(base, 2 * page), (base + 4 * page, page)]
        for iova, size in mappings:
            bench.iommu.map_dma(bench.vaddr, iova, size)
        empty.append(run_case(beside, bench, page, bench.backend))
        covering = bench.unmap(base, 8 * page)
        # Gone means the same ranges can be mapped again.
        remaps = [bench.map(iova, size) for iova, size in mappings]
    return {
        "backend": bench.backend,
        "page_size": page,
        "empty": empty,
        "covering": answer(covering),
        "covering_expected": sum(size for _iova, size in mappings),
        "remaps": [answer(r) for r in remaps],
        "ioctls": bench.transcript.entries,
    }


def unmap_all(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Under IOMMU ``backend``, unmap every mapping with one request
    (:meth:`Bench.unmap_everything`): the total size it reports, the DMA-available count
    after it, and whether every mapping is really gone. A container without the
    VFIO_UNMAP_ALL extension answers ``supported`` False."""
    with ExitStack() as stack:
        bench = open_bench(stack, bdf, backend, 4)
        iommu, page = bench.iommu, bench.page
        if isinstance(iommu, ContainerBackend) and not iommu.container.check_extension(
            uapi.VFIO_UNMAP_ALL
        ):
            return {"supported": False, "backend": bench.backend}
        avail_before = bench.dma_avail()
        mappings = [(SCRATCH_IOVA, page), (SCRATCH_IOVA + 4 * page, 3 * page), (1 << 30, page)]
        for iova, size in mappings:
            iommu.map_dma(bench.vaddr, iova, size)
        total = bench.unmap_everything()
        avail_after = bench.dma_avail()
        remaps = [bench.map(iova, size) for iova, size in mappings]
    return {
        "supported": True,
        "backend": bench.backend,
        "unmapped": answer(total),
        "expected": sum(size for _iova, size in mappings),
        "dma_avail_before": avail_before,
        "dma_avail_after": avail_after,
        "remaps": [answer(r) for r in remaps],
        "ioctls": bench.transcript.entries,
    }


def dma_avail_accounting(
    bdf: str, mappings: int = 8, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """Under IOMMU ``backend``, the DMA_AVAIL capability before, after each of ``mappings``
    maps and each unmap (``reported`` False where the backend reports none: a type1
    container's capability, iommufd has no mapping budget)."""
    with ExitStack() as stack:
        bench = open_bench(stack, bdf, backend, mappings)
        iommu, page = bench.iommu, bench.page
        trail = [bench.dma_avail()]
        if trail[0] is None:
            return {"reported": False, "backend": bench.backend}
        # Every other page, so that no two mappings are adjacent.
        iovas = [SCRATCH_IOVA + 2 * i * page for i in range(mappings)]
        for i, iova in enumerate(iovas):
            iommu.map_dma(bench.vaddr + i * page, iova, page)
            trail.append(bench.dma_avail())
        for iova in iovas:
            iommu.unmap_dma(iova, page)
            trail.append(bench.dma_avail())
    return {"reported": True, "backend": bench.backend, "mappings": mappings, "trail": trail}


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


def hugepage_mapping(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Under IOMMU ``backend``, map a 2 MiB huge page as one mapping, and one IOMMU page
    inside it at another IOVA."""
    with hugepages(1) as unavailable:
        if unavailable:
            return unavailable
        with ExitStack() as stack:
            bench = open_bench(stack, bdf, backend, 1)
            page = bench.page
            huge = stack.enter_context(DmaBuffer(HUGE_2M, page_size=HUGE_2M))
            huge.fill(b"\xa5" * huge.size)  # fault the huge page in
            # Aligned to the huge page, so the IOMMU may map it with one large page.
            iova, inner_iova = 2 * HUGE_2M, 4 * HUGE_2M
            avail = [bench.dma_avail()]
            whole = bench.map(iova, HUGE_2M, huge.vaddr)
            inner = bench.map(inner_iova, page, huge.vaddr + 5 * page)
            avail.append(bench.dma_avail())
            unmapped = [bench.unmap(iova, HUGE_2M), bench.unmap(inner_iova, page)]
            avail.append(bench.dma_avail())
    return {
        "backend": bench.backend,
        "huge_page_size": HUGE_2M,
        "page_size": page,
        "map_whole": answer(whole),
        "map_inner_page": answer(inner),
        "unmapped": [answer(u) for u in unmapped],
        "dma_avail": avail,
        "ioctls": bench.transcript.entries,
    }
