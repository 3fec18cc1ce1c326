"""DMA: the mapping semantics of each IOMMU backend (VFIO_IOMMU_MAP_DMA / UNMAP_DMA of a
type1v2 or type1 container, IOMMU_IOAS_MAP / UNMAP of iommufd).

Device-independent: each check opens a DMA-capable device in a new IOMMU context of the
backend it runs under and probes the context. The errno each invalid request must get is a
table in ``vfio_hil.dut.mapping``, with the backends that answer otherwise (or where a
request does not apply) written beside the default answer, each with its kernel reference.
DMA-009 and DMA-010 are type1 concepts (the DMA_AVAIL capability, vfio_iommu_type1's
dma_entry_limit) and run under type1v2 only.
"""

from __future__ import annotations

from typing import Any

from vfio_hil.lab.session import DeviceLease
from vfio_hil_pytest import ALL_BACKENDS, check, skip

VFIO_H = "include/uapi/linux/vfio.h"
IOMMUFD_H = "include/uapi/linux/iommufd.h"
MAP_SPEC = f"{VFIO_H} VFIO_IOMMU_MAP_DMA, struct vfio_iommu_type1_dma_map"
UNMAP_SPEC = f"{VFIO_H} VFIO_IOMMU_UNMAP_DMA, struct vfio_iommu_type1_dma_unmap"
TYPE1_RST = "Documentation/driver-api/vfio.rst: VFIO Usage Example"


#: DMA-009/010 test a type1 container's own accounting: one backend, named in the record.
TYPE1_ONLY = ("type1v2",)


def _cases(evidence: Any, backend: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep ``cases`` (:func:`vfio_hil.dut.mapping.run_case` results) as evidence, those not
    applicable to ``backend`` apart with why, and named in the record's reason (they are no
    answer of the kernel); return the cases whose answer was wrong."""
    evidence.add("cases", [c for c in cases if c["ok"] is not None])
    not_applicable = {c["case"]: c["why"] for c in cases if c["ok"] is None}
    if not_applicable:
        evidence.add("not applicable", not_applicable)
        evidence.note = f"not applicable under {backend} (the kernel is not asked): " + ", ".join(
            not_applicable
        )
    return [c for c in cases if c["ok"] is False]


def _run_table(
    dut_device: DeviceLease, backend: str, evidence: Any, table: str
) -> list[dict[str, Any]]:
    """Run one errno table on the DUT under IOMMU ``backend``; return the cases whose answer
    was wrong."""
    r = dut_device.call("mapping.errno_table", bdf=dut_device.bdf, table=table, backend=backend)
    evidence.add("ioctls", r["ioctls"])
    return _cases(evidence, backend, r["cases"])


def _wrong(backend: str, bad: list[dict[str, Any]]) -> str:
    """The wrong answers of ``bad`` cases, naming the backend and the answer that applied."""
    return f"under {backend}: " + "; ".join(
        f"{c['case']}: got {c['got']}, expected {c['expected']}"
        + ("" if c["answer"] == "default" else f" ({c['why']})")
        for c in bad
    )


@check(
    "DMA-002",
    "MAP_DMA refuses malformed requests (alignment, size 0, no access, unknown flag, wrap)",
    level="MUST",
    spec=MAP_SPEC,
    needs=("dma",),
    backends=ALL_BACKENDS,
)
def test_map_malformed(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """A mapping request that is not page-aligned, empty, grants the device no access, carries
    a flag the kernel does not know, has a short argsz or wraps past the end of the address
    space must be refused with the errno the uapi promises, and must not create a mapping.
    A kernel that rounds, truncates or wraps such a request maps memory the caller did not
    ask for."""
    bad = _run_table(dut_device, iommu_backend, evidence, "map_malformed")
    assert not bad, (
        f"{dut_device.bdf}: malformed MAP_DMA not refused as specified {_wrong(iommu_backend, bad)}"
    )


@check(
    "DMA-003",
    "MAP_DMA over an existing mapping fails with EEXIST; adjacent and aliasing mappings work",
    level="MUST",
    spec=MAP_SPEC,
    needs=("dma",),
    backends=ALL_BACKENDS,
)
def test_map_overlap(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """An IOVA translates to one page only: mapping any range that overlaps an existing
    mapping (the same range, inside it, across either end, around it) must fail with EEXIST
    rather than silently replace the translation a device may be using. Ranges right next to
    it, and the same memory at a second IOVA, are legitimate and must be accepted."""
    bad = _run_table(dut_device, iommu_backend, evidence, "map_overlap")
    assert not bad, f"{dut_device.bdf}: overlapping MAP_DMA mishandled {_wrong(iommu_backend, bad)}"


@check(
    "DMA-004",
    "Reported IOVA ranges are exact: their edge pages map, the pages just outside do not",
    level="MUST",
    spec=f"{VFIO_H} VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE",
    needs=("dma",),
    backends=ALL_BACKENDS,
)
def test_iova_range_edges(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Userspace places its DMA by the IOVA ranges the container reports. The first and the
    last page of every range must map (including the very top of the address width), and a
    page just outside a range (a reserved window such as the x86 MSI window at 0xfee00000,
    or beyond the IOMMU's address width) must be refused with EINVAL. On x86 the MSI window
    itself must not be reported as mappable: a DMA mapping there would shadow interrupts."""
    r = dut_device.call("mapping.iova_range_edges", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("iova ranges", r["ranges"])
    evidence.add("cases", r["cases"])
    evidence.add("ioctls", r["ioctls"])
    assert r["ranges"], f"{dut_device.bdf}: {iommu_backend} reports no IOVA ranges"
    if r["x86"]:
        assert r["msi_window_reserved"], (
            f"{dut_device.bdf}: the IOVA ranges {r['ranges']} include the x86 MSI window "
            "0xfee00000-0xfeefffff"
        )
    bad = [c for c in r["cases"] if not c["ok"]]
    assert not bad, (
        f"{dut_device.bdf}: {iommu_backend} IOVA ranges {r['ranges']} do not match what maps: "
        + "; ".join(
            f"{c['case']} ({c['iova']}): got {c['got']}, expected {c['expected']}" for c in bad
        )
    )


@check(
    "DMA-005",
    "An unmap that would split a mapping never unmaps part of it (type1v2, iommufd: refused)",
    level="MUST",
    spec=f"{UNMAP_SPEC}; {VFIO_H} VFIO_TYPE1v2_IOMMU; {IOMMUFD_H} IOMMU_IOAS_UNMAP",
    needs=("dma",),
    backends=ALL_BACKENDS,
)
def test_unmap_split_refused(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """type1v2 tracks mappings as units: an unmap that covers only part of a mapping (its first
    or last page, its middle, or a range reaching into it) must fail with EINVAL (iommufd:
    ENOENT), and the mapping must stay exactly as it was, so that it can later be removed
    whole. Legacy type1 (v1) instead unmaps every mapping the range touches, whole, and
    reports it (the table's type1 answers). A kernel that unmaps part of a mapping leaves
    userspace with a different view of the IOMMU than the kernel."""
    bad = _run_table(dut_device, iommu_backend, evidence, "unmap_split")
    assert not bad, f"{dut_device.bdf}: partial UNMAP_DMA mishandled {_wrong(iommu_backend, bad)}"


@check(
    "DMA-006",
    "UNMAP_DMA of an empty range reports 0 bytes; one covering mappings reports their sum",
    level="MUST",
    spec=UNMAP_SPEC,
    needs=("dma",),
    backends=ALL_BACKENDS,
)
def test_unmap_coverage(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """UNMAP_DMA returns in ``size`` how much it unmapped: a range that holds no mapping
    succeeds with 0 (iommufd: ENOENT, as the table in ``vfio_hil.dut.mapping`` records), and
    a range covering two whole mappings and the hole between them removes both and reports
    exactly their total size (not the requested size). Userspace relies on the figure to know
    what the device can no longer reach."""
    r = dut_device.call("mapping.unmap_coverage", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("ioctls", r["ioctls"])
    bad = _cases(evidence, iommu_backend, r["empty"])
    assert not bad, (
        f"{dut_device.bdf}: unmapping an empty range mishandled {_wrong(iommu_backend, bad)}"
    )
    assert r["covering"] == r["covering_expected"], (
        f"{dut_device.bdf}: under {iommu_backend} an unmap over two mappings reported "
        f"{r['covering']}, expected {r['covering_expected']} bytes"
    )
    assert r["remaps"] == [0, 0], (
        f"{dut_device.bdf}: under {iommu_backend}, after the covering unmap the ranges could "
        f"not be mapped again ({r['remaps']}): they were not really unmapped"
    )


@check(
    "DMA-007",
    "UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_ALL removes every mapping and reports their total",
    level="MUST",
    spec=f"{UNMAP_SPEC} VFIO_DMA_UNMAP_FLAG_ALL; {VFIO_H} VFIO_UNMAP_ALL",
    needs=("dma",),
    backends=ALL_BACKENDS,
)
def test_unmap_all(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Where the container offers the VFIO_UNMAP_ALL extension, one UNMAP_DMA with FLAG_ALL
    (IOVA and size 0) must remove every mapping, report their total size, and give every
    DMA mapping entry back. iommufd's unmap-all is IOMMU_IOAS_UNMAP of IOVA 0, length
    U64_MAX (``iommufd_ioas_unmap``), held to the same."""
    r = dut_device.call("mapping.unmap_all", bdf=dut_device.bdf, backend=iommu_backend)
    if not r["supported"]:
        skip("kernel", f"the kernel on {dut_device.host.name} lacks the VFIO_UNMAP_ALL extension")
    evidence.add("ioctls", r["ioctls"])
    assert r["unmapped"] == r["expected"], (
        f"{dut_device.bdf}: unmap-all under {iommu_backend} reported {r['unmapped']}, expected the "
        f"{r['expected']} bytes mapped"
    )
    assert r["remaps"] == [0, 0, 0], (
        f"{dut_device.bdf}: after FLAG_ALL the ranges could not be mapped again ({r['remaps']})"
    )
    if r["dma_avail_before"] is not None:
        assert r["dma_avail_after"] == r["dma_avail_before"], (
            f"{dut_device.bdf}: DMA_AVAIL is {r['dma_avail_after']} after FLAG_ALL, "
            f"{r['dma_avail_before']} before the mappings"
        )


@check(
    "DMA-008",
    "UNMAP_DMA refuses malformed requests (size 0, alignment, wrap, unknown flag, bad ALL)",
    level="MUST",
    spec=UNMAP_SPEC,
    needs=("dma",),
    backends=ALL_BACKENDS,
)
def test_unmap_malformed(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """An unmap request with size 0, an unaligned IOVA or size, a range that wraps past 2^64,
    an unknown flag, or FLAG_ALL combined with an IOVA or size must be refused (EINVAL, or
    EOVERFLOW for the wrap on newer kernels) and must leave existing mappings alone: FLAG_ALL
    misread would silently unmap everything."""
    bad = _run_table(dut_device, iommu_backend, evidence, "unmap_malformed")
    assert not bad, f"{dut_device.bdf}: malformed UNMAP_DMA mishandled {_wrong(iommu_backend, bad)}"


@check(
    "DMA-009",
    "The DMA_AVAIL capability goes down by one per mapping and back up per unmap",
    level="SHOULD",
    spec=f"{VFIO_H} VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL",
    needs=("dma",),
    backends=TYPE1_ONLY,
)
def test_dma_avail_accounting(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """The container reports how many more DMA mappings it accepts (the budget set by
    dma_entry_limit). Each mapping, whatever its size, must take exactly one entry and each
    unmap must give it back, so userspace can plan its mappings before hitting ENOSPC."""
    r = dut_device.call("mapping.dma_avail_accounting", bdf=dut_device.bdf, backend=iommu_backend)
    if not r["reported"]:
        skip("kernel", f"the kernel on {dut_device.host.name} does not report DMA_AVAIL")
    trail = r["trail"]
    evidence.add("dma_avail", trail)
    n = r["mappings"]
    expected = [trail[0] - i for i in range(n + 1)] + [trail[0] - n + i for i in range(1, n + 1)]
    assert trail == expected, (
        f"{dut_device.bdf}: DMA_AVAIL over {n} maps and {n} unmaps was {trail}, expected {expected}"
    )


@check(
    "DMA-010",
    "dma_entry_limit is enforced: a container takes that many mappings, the next is ENOSPC",
    level="MUST",
    spec="drivers/vfio/vfio_iommu_type1.c module parameter dma_entry_limit; " + MAP_SPEC,
    needs=("dma",),
    backends=TYPE1_ONLY,
)
def test_dma_entry_limit(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """The per-container mapping limit bounds the kernel memory a user can pin down in
    tracking structures. With the limit lowered (temporarily, restored afterwards), a
    container set up afterwards must report that budget, accept exactly that many mappings,
    refuse the next one with ENOSPC, and accept one again after an unmap. A type1v2
    container's (``iommu_backend`` is always ``type1v2``): iommufd has no entry limit."""
    r = dut_device.call("mapping.dma_entry_limit", bdf=dut_device.bdf, limit=4)
    if not r["supported"]:
        skip("kernel", f"vfio_iommu_type1 on {dut_device.host.name} has no dma_entry_limit")
    evidence.add("ioctls", r["ioctls"])
    evidence.add(
        "budgets",
        {k: r[k] for k in ("original", "earlier_container_avail", "new_container_avail")},
    )
    assert r["restored"] == r["original"], (
        f"dma_entry_limit on {dut_device.host.name} is {r['restored']} after the check, "
        f"it was {r['original']}"
    )
    limit = r["limit"]
    if r["new_container_avail"] is not None:
        assert r["new_container_avail"] == limit, (
            f"{dut_device.bdf}: a container set up under dma_entry_limit={limit} reports "
            f"DMA_AVAIL {r['new_container_avail']}"
        )
    expected = [0] * limit + ["ENOSPC"]
    assert r["maps"] == expected, (
        f"{dut_device.bdf}: with dma_entry_limit={limit}, {limit + 1} mappings answered "
        f"{r['maps']}, expected {expected}"
    )
    assert r["map_after_unmap"] == 0, (
        f"{dut_device.bdf}: after an unmap under the limit, MAP_DMA answered {r['map_after_unmap']}"
    )


@check(
    "DMA-011",
    "A 2 MiB huge page maps as one mapping, and a page inside it maps on its own",
    level="SHOULD",
    spec=MAP_SPEC,
    needs=("dma",),
    backends=ALL_BACKENDS,
)
def test_hugepage_mapping(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Huge-page backed memory is what DMA-heavy userspace (DPDK, SPDK, VMMs) maps. A whole
    2 MiB huge page must map as a single mapping (one DMA_AVAIL entry) and unmap with its
    full size, and a single page inside it must be mappable at another IOVA too. The huge
    page pool is filled for the check and restored afterwards."""
    r = dut_device.call("mapping.hugepage_mapping", bdf=dut_device.bdf, backend=iommu_backend)
    if "skip" in r:
        skip(r["skip_kind"], f"{dut_device.host.name}: {r['skip']}")
    evidence.add("ioctls", r["ioctls"])
    assert r["map_whole"] == 0, (
        f"{dut_device.bdf}: MAP_DMA of a 2 MiB huge page answered {r['map_whole']}"
    )
    assert r["map_inner_page"] == 0, (
        f"{dut_device.bdf}: MAP_DMA of one page inside a huge page answered {r['map_inner_page']}"
    )
    expected = [r["huge_page_size"], r["page_size"]]
    assert r["unmapped"] == expected, (
        f"{dut_device.bdf}: unmapping the huge page and the inner page reported "
        f"{r['unmapped']}, expected {expected}"
    )
    avail = r["dma_avail"]
    if avail[0] is not None:
        assert avail == [avail[0], avail[0] - 2, avail[0]], (
            f"{dut_device.bdf}: DMA_AVAIL went {avail} around a huge page and an inner page "
            "mapping, expected one entry each"
        )


@check(
    "DMA-012",
    "MAP_DMA pins only what the process may access: read-only memory maps read-only only",
    level="MUST",
    spec=f"{MAP_SPEC} VFIO_DMA_MAP_FLAG_READ/WRITE",
    needs=("dma",),
    backends=ALL_BACKENDS,
)
def test_map_pinning(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """READ and WRITE are the device's rights. A device-read-only or device-write-only mapping
    of ordinary memory, and a device-read-only mapping of read-only memory, are legitimate;
    a device-writable mapping of memory the process may only read, a mapping of PROT_NONE
    memory or of an address with no memory behind it must fail with EFAULT: otherwise a user
    could have a device write what it cannot write itself."""
    bad = _run_table(dut_device, iommu_backend, evidence, "pinning")
    assert not bad, f"{dut_device.bdf}: MAP_DMA pinning rules broken {_wrong(iommu_backend, bad)}"
