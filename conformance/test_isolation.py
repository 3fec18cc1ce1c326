"""ISO: DMA isolation through the IOMMU, proven with every DMA engine a device offers (any
NVMe controller on a lab rack, QEMU's edu on the virtual rack; see
``vfio_hil.core.drivers.engine``).

Each check looks at the memory the transfer aimed at (or at what the device obtained), and
at the IOMMU fault the kernel logged for it (such fault lines are expected here; they are
not kernel trouble). Every check runs under each IOMMU backend the DUT offers (type1,
type1v2, iommufd): isolation is each backend's promise. The device's own status for each
transfer is evidence, not a verdict: not every device reports a blocked DMA. QEMU's AMD-Vi
model blocks such DMA without logging it: there the data alone is judged, and the evidence
says so.
"""

from __future__ import annotations

from typing import Any

from vfio_hil.lab.inventory import DutDevice
from vfio_hil.lab.session import DeviceLease, Lab
from vfio_hil_pytest import ALL_BACKENDS, check, skip

VFIO_RST = "Documentation/driver-api/vfio.rst"
MAP_SPEC = "include/uapi/linux/vfio.h VFIO_IOMMU_MAP_DMA"
WRITER = ("dma_to_host",)
READER = ("dma_from_host",)
_NOT_FINDINGS = ("ioctls", "faults", "transfers", "engine", "backend")


def _probe(
    dut_device: DeviceLease, backend: str, evidence: Any, name: str, **kwargs: Any
) -> dict[str, Any]:
    """Run ``isolation.<name>`` for the device under IOMMU ``backend`` and keep its evidence
    in one shape whatever the engine: the engine, the transfers with the device's status, the
    ioctls, the faults and the findings."""
    r = dut_device.call(
        f"isolation.{name}",
        bdf=dut_device.bdf,
        scratch=dut_device.device.scratch,
        backend=backend,
        **kwargs,
    )
    if "skip" in r:
        skip(r["skip_kind"], f"{dut_device.host.name}: {r['skip']}")
    evidence.add("engine", r["engine"])
    evidence.add("transfers", r["transfers"])
    evidence.add("ioctls", r["ioctls"])
    evidence.add("iommu faults", r["faults"])
    evidence.add("findings", {k: v for k, v in r.items() if k not in _NOT_FINDINGS})
    return r


def _unreported_faults(dut_device: DeviceLease) -> str | None:
    """Why this platform's IOMMU cannot be expected to log faults, or None when it must."""
    platform = dut_device.host.platform
    if platform.get("iommu", {}).get("kind") == "amd" and platform.get("qemu_version"):
        # Its page walk blocks the access but never raises an IO_PAGE_FAULT event.
        return f"QEMU {platform['qemu_version']}'s AMD-Vi model logs no I/O page faults"
    return None


def _assert_fault(dut_device: DeviceLease, evidence: Any, r: dict[str, Any], what: str) -> None:
    """The blocked transfer must have left an IOMMU fault naming the device and the IOVA,
    on platforms whose IOMMU reports faults at all."""
    unreported = _unreported_faults(dut_device)
    if unreported:
        evidence.add("fault reporting", f"not asserted: {unreported}")
        return
    assert r["fault_lines"], (
        f"{dut_device.bdf}: no IOMMU fault logged for the blocked {what} at IOVA "
        f"{r['iova']:#x} (faults seen: {r['faults'] or 'none'})"
    )


@check(
    "ISO-001",
    "DMA at offsets inside mappings lands exactly there and nowhere else",
    level="MUST",
    spec=f"{MAP_SPEC}; {VFIO_RST}: IOMMU API",
    needs=WRITER,
    backends=ALL_BACKENDS,
)
def test_exact_landing(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Translation must be exact to the byte: device writes at unaligned offsets of a
    multi-page mapping (one across a page boundary), and a read from an unaligned offset of
    another mapping, must touch exactly the bytes addressed; every other byte of the
    destination stays zero, and the device obtains exactly the bytes it read."""
    r = _probe(dut_device, iommu_backend, evidence, "exact_landing")
    assert r["read_exact"] is not False, (
        f"{dut_device.bdf}: a device read from an unaligned offset of a mapping did not obtain "
        "the bytes at that offset"
    )
    assert r["differing_bytes"] == 0, (
        f"{dut_device.bdf}: {r['differing_bytes']} of {r['size']} destination bytes differ "
        f"from the expected image, first at offset {r['first_difference']:#x}"
    )


@check(
    "ISO-002",
    "A device write to an unmapped IOVA lands nowhere and the IOMMU logs the fault",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs",
    needs=WRITER,
    backends=ALL_BACKENDS,
    provokes_iommu_fault=True,
)
def test_unmapped_write(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """An IOVA nothing is mapped at must lead nowhere. The IOVA used is the physical address
    of a page of the test process (where the kernel shows it), so an IOMMU that let DMA
    through untranslated would be caught writing that page; the process's mapped memory must
    not change either, and the IOMMU must report the blocked write in the kernel log."""
    r = _probe(dut_device, iommu_backend, evidence, "unmapped_write")
    assert not r["sentinel_changed"], (
        f"{dut_device.bdf}: a DMA write to unmapped IOVA {r['iova']:#x} changed the memory at "
        "that physical address: the IOMMU did not translate it"
    )
    assert not r["mapped_changed"], (
        f"{dut_device.bdf}: a DMA write to unmapped IOVA {r['iova']:#x} changed memory mapped "
        "at another IOVA"
    )
    _assert_fault(dut_device, evidence, r, "DMA write")


@check(
    "ISO-003",
    "A device read from an unmapped IOVA returns none of the memory there; the fault is logged",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs",
    needs=READER,
    backends=ALL_BACKENDS,
    provokes_iommu_fault=True,
)
def test_unmapped_read(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Isolation also covers reads: a device reading an unmapped IOVA (the physical address
    of a page holding a secret, where visible) must not obtain the secret, and the IOMMU
    must log the blocked read."""
    r = _probe(dut_device, iommu_backend, evidence, "unmapped_read")
    assert not r["leaked"], (
        f"{dut_device.bdf}: a DMA read of unmapped IOVA {r['iova']:#x} brought the "
        f"{r['size']} secret bytes at that address to the device"
    )
    _assert_fault(dut_device, evidence, r, "DMA read")


@check(
    "ISO-004",
    "DMA to an IOVA stops reaching memory once the IOVA is unmapped",
    level="MUST",
    spec=f"include/uapi/linux/vfio.h VFIO_IOMMU_UNMAP_DMA; {VFIO_RST}",
    needs=WRITER,
    backends=ALL_BACKENDS,
    provokes_iommu_fault=True,
)
def test_dma_after_unmap(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """After UNMAP_DMA returns, the device must no longer reach the memory, although it is
    still allocated to the process: the IOMMU page tables and IOTLB must have dropped the
    translation. The same transfer is first shown to work while mapped."""
    r = _probe(dut_device, iommu_backend, evidence, "after_unmap")
    assert r["arrived_while_mapped"], (
        f"{dut_device.bdf}: the control DMA to mapped IOVA {r['iova']:#x} did not arrive"
    )
    assert not r["changed_after_unmap"], (
        f"{dut_device.bdf}: DMA to IOVA {r['iova']:#x} still reached the memory after "
        "UNMAP_DMA (stale IOMMU translation)"
    )
    _assert_fault(dut_device, evidence, r, "DMA write after unmap")


@check(
    "ISO-005",
    "A device write into a mapping without the WRITE flag is blocked; reads work",
    level="MUST",
    spec=f"{MAP_SPEC} VFIO_DMA_MAP_FLAG_READ",
    needs=WRITER,
    backends=ALL_BACKENDS,
    provokes_iommu_fault=True,
)
def test_read_only_mapping(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """A mapping made with VFIO_DMA_MAP_FLAG_READ only gives the device read access: the
    device can read it (where its engine reads host memory), but its write must be blocked by
    the IOMMU (memory unchanged, fault logged)."""
    r = _probe(dut_device, iommu_backend, evidence, "read_only_write")
    assert not r["written"], (
        f"{dut_device.bdf}: the device wrote into the read-only mapping at IOVA {r['iova']:#x}"
    )
    assert r["readable"] is not False, (
        f"{dut_device.bdf}: the device could not read the read-only mapping at {r['iova']:#x}"
    )
    _assert_fault(dut_device, evidence, r, "DMA write into a read-only mapping")


def _peer(dut_device: DeviceLease) -> DutDevice | None:
    """Another device of the host whose DMA engine writes host memory, in another IOMMU
    group and on vfio-pci."""
    session = dut_device.host
    facts = session.platform.get("devices", {})
    own = facts.get(dut_device.bdf, {}).get("iommu_group")
    for dev in session.devices:
        info = facts.get(dev.bdf, {})
        if (
            dev.bdf != dut_device.bdf
            and dev.may_have(set(WRITER))
            and info.get("iommu_group") not in (None, own)
            and info.get("driver") == "vfio-pci"
            and set(WRITER) <= set(session.engine(dev.bdf)["capabilities"])
        ):
            return dev
    return None


@check(
    "ISO-006",
    "A device cannot reach memory mapped only in another container",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs",
    needs=WRITER,
    backends=ALL_BACKENDS,
    provokes_iommu_fault=True,
)
def test_cross_container(
    dut_device: DeviceLease, iommu_backend: str, vfio_lab: Lab, evidence: Any
) -> None:
    """Containers are separate address spaces: memory another device's container maps at an
    IOVA must be out of this device's reach at that IOVA (blocked, fault logged), while the
    other device, in whose container it is mapped, reaches it."""
    peer = _peer(dut_device)
    if peer is None:
        skip(
            "lab",
            f"no second DMA-capable device on vfio-pci in another IOMMU group on "
            f"{dut_device.host.name}",
        )
    with vfio_lab.lease(peer):
        r = _probe(dut_device, iommu_backend, evidence, "cross_container", peer=peer.bdf)
    assert r["reached_by_peer"], (
        f"{peer.bdf}: the control DMA to IOVA {r['iova']:#x} of its own container did not arrive"
    )
    assert not r["reached_by_device"], (
        f"{dut_device.bdf}: DMA to IOVA {r['iova']:#x} reached memory mapped only in the "
        f"container of {peer.bdf}"
    )
    _assert_fault(dut_device, evidence, r, "DMA write into another container's IOVA")


@check(
    "ISO-007",
    "With Bus Master Enable cleared the device does no DMA",
    level="MUST",
    spec="PCI Local Bus Specification 3.0, 6.2.2 Command register (Bus Master)",
    needs=WRITER,
    backends=ALL_BACKENDS,
)
def test_bus_master_off(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Userspace controls bus mastering through the VFIO config region: with bit 2 of the
    command register cleared, a DMA to a mapped IOVA must not arrive; with it set again the
    same transfer must."""
    r = _probe(dut_device, iommu_backend, evidence, "bus_master_off")
    assert not r["command_off"] & 0x4, (
        f"{dut_device.bdf}: Bus Master Enable reads set ({r['command_off']:#06x}) after "
        "clearing it through the VFIO config region"
    )
    assert not r["arrived_while_off"], (
        f"{dut_device.bdf}: DMA arrived with Bus Master Enable cleared "
        f"(command {r['command_off']:#06x})"
    )
    assert r["arrived_when_on"], (
        f"{dut_device.bdf}: the control DMA with Bus Master Enable set again did not arrive"
    )


@check(
    "ISO-008",
    "DMA into a 2 MiB huge-page mapping lands at the right offsets",
    level="SHOULD",
    spec=MAP_SPEC,
    needs=WRITER,
    backends=ALL_BACKENDS,
)
def test_hugepage_dma(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """An IOMMU may map a huge page with one large page-table entry: device writes deep into
    it and ending near its end must land at exactly those offsets of the process's huge page
    and nowhere else in it."""
    r = _probe(dut_device, iommu_backend, evidence, "hugepage_dma")
    assert r["differing_bytes"] == 0, (
        f"{dut_device.bdf}: {r['differing_bytes']} bytes of the 2 MiB huge page differ from "
        f"the expected image after DMA at offsets {[hex(o) for o in r['offsets']]}, first at "
        f"{r['first_difference']:#x}"
    )
