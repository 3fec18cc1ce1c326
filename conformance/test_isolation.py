"""ISO: DMA isolation through the IOMMU, proven with a DMA-capable device (QEMU edu).

A blocked DMA is not reported by the device: each check looks at the memory the transfer
aimed at, and at the IOMMU fault the kernel logged for it (such fault lines are expected
here; they are not kernel trouble). QEMU's AMD-Vi model blocks such DMA without reporting
it: there the data alone is judged, and the evidence says so.
"""

from __future__ import annotations

from typing import Any

import pytest

from vfio_hil.lab.inventory import DutDevice
from vfio_hil.lab.session import DeviceLease, Lab
from vfio_hil_pytest import check

VFIO_RST = "Documentation/driver-api/vfio.rst"
MAP_SPEC = "include/uapi/linux/vfio.h VFIO_IOMMU_MAP_DMA"
EDU = ("edu", "dma")


def _record(evidence: Any, r: dict[str, Any]) -> None:
    evidence.add("ioctls", r["ioctls"])
    evidence.add("iommu faults", r["faults"])
    evidence.add("findings", {k: v for k, v in r.items() if k not in ("ioctls", "faults")})


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
    needs=EDU,
)
def test_exact_landing(dut_device: DeviceLease, evidence: Any) -> None:
    """Translation must be exact to the byte: a device write at an odd offset in the middle
    page of a multi-page mapping, and a read from an odd offset of another mapping, must
    touch exactly the bytes addressed; every other byte of the destination stays zero."""
    r = dut_device.call("isolation.exact_landing", bdf=dut_device.bdf)
    _record(evidence, r)
    assert r["differing_bytes"] == 0, (
        f"{dut_device.bdf}: {r['differing_bytes']} of {r['size']} destination bytes differ "
        f"from the expected image, first at offset {r['first_difference']:#x}"
    )


@check(
    "ISO-002",
    "A device write to an unmapped IOVA lands nowhere and the IOMMU logs the fault",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs",
    needs=EDU,
)
def test_unmapped_write(dut_device: DeviceLease, evidence: Any) -> None:
    """An IOVA nothing is mapped at must lead nowhere. The IOVA used is the physical address
    of a page of the test process (where the kernel shows it), so an IOMMU that let DMA
    through untranslated would be caught writing that page; the process's mapped memory must
    not change either, and the IOMMU must report the blocked write in the kernel log."""
    r = dut_device.call("isolation.unmapped_write", bdf=dut_device.bdf)
    _record(evidence, r)
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
    needs=EDU,
)
def test_unmapped_read(dut_device: DeviceLease, evidence: Any) -> None:
    """Isolation also covers reads: a device reading an unmapped IOVA (the physical address
    of a page holding a secret, where visible) must not obtain a single byte of that page,
    and the IOMMU must log the blocked read."""
    r = dut_device.call("isolation.unmapped_read", bdf=dut_device.bdf)
    _record(evidence, r)
    assert r["leaked_bytes"] == 0, (
        f"{dut_device.bdf}: a DMA read of unmapped IOVA {r['iova']:#x} brought "
        f"{r['leaked_bytes']} of {r['size']} bytes of the memory at that address to the device"
    )
    _assert_fault(dut_device, evidence, r, "DMA read")


@check(
    "ISO-004",
    "DMA to an IOVA stops reaching memory once the IOVA is unmapped",
    level="MUST",
    spec=f"include/uapi/linux/vfio.h VFIO_IOMMU_UNMAP_DMA; {VFIO_RST}",
    needs=EDU,
)
def test_dma_after_unmap(dut_device: DeviceLease, evidence: Any) -> None:
    """After UNMAP_DMA returns, the device must no longer reach the memory, although it is
    still allocated to the process: the IOMMU page tables and IOTLB must have dropped the
    translation. The same transfer is first shown to work while mapped."""
    r = dut_device.call("isolation.after_unmap", bdf=dut_device.bdf)
    _record(evidence, r)
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
    needs=EDU,
)
def test_read_only_mapping(dut_device: DeviceLease, evidence: Any) -> None:
    """A mapping made with VFIO_DMA_MAP_FLAG_READ only gives the device read access: the
    device can read it, but its write must be blocked by the IOMMU (memory unchanged, fault
    logged)."""
    r = dut_device.call("isolation.read_only_write", bdf=dut_device.bdf)
    _record(evidence, r)
    assert r["readable"], (
        f"{dut_device.bdf}: the device could not read the read-only mapping at {r['iova']:#x}"
    )
    assert not r["written"], (
        f"{dut_device.bdf}: the device wrote into the read-only mapping at IOVA {r['iova']:#x}"
    )
    _assert_fault(dut_device, evidence, r, "DMA write into a read-only mapping")


def _peer(dut_device: DeviceLease) -> DutDevice | None:
    """Another edu on the host, in another IOMMU group and on vfio-pci."""
    facts = dut_device.host.platform.get("devices", {})
    own = facts.get(dut_device.bdf, {}).get("iommu_group")
    for dev in dut_device.host.devices:
        info = facts.get(dev.bdf, {})
        if (
            dev.bdf != dut_device.bdf
            and set(EDU) <= dev.capabilities
            and info.get("iommu_group") not in (None, own)
            and info.get("driver") == "vfio-pci"
        ):
            return dev
    return None


@check(
    "ISO-006",
    "A device cannot reach memory mapped only in another container",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs",
    needs=EDU,
)
def test_cross_container(dut_device: DeviceLease, vfio_lab: Lab, evidence: Any) -> None:
    """Containers are separate address spaces: memory another device's container maps at an
    IOVA must be out of this device's reach at that IOVA (blocked, fault logged), while the
    other device, in whose container it is mapped, reaches it."""
    peer = _peer(dut_device)
    if peer is None:
        pytest.skip(f"no second edu on vfio-pci in another IOMMU group on {dut_device.host.name}")
    with vfio_lab.lease(peer):
        r = dut_device.call("isolation.cross_container", bdf=dut_device.bdf, peer=peer.bdf)
    _record(evidence, r)
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
    needs=EDU,
)
def test_bus_master_off(dut_device: DeviceLease, evidence: Any) -> None:
    """Userspace controls bus mastering through the VFIO config region: with bit 2 of the
    command register cleared, a DMA to a mapped IOVA must not arrive; with it set again the
    same transfer must."""
    r = dut_device.call("isolation.bus_master_off", bdf=dut_device.bdf)
    _record(evidence, r)
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
    needs=EDU,
)
def test_hugepage_dma(dut_device: DeviceLease, evidence: Any) -> None:
    """An IOMMU may map a huge page with one large page-table entry: device writes deep into
    it and into its last 4 KiB must land at exactly those offsets of the process's huge page
    and nowhere else in it."""
    r = dut_device.call("isolation.hugepage_dma", bdf=dut_device.bdf)
    if "skip" in r:
        pytest.skip(f"{dut_device.host.name}: {r['skip']}")
    _record(evidence, r)
    assert r["differing_bytes"] == 0, (
        f"{dut_device.bdf}: {r['differing_bytes']} bytes of the 2 MiB huge page differ from "
        f"the expected image after DMA at offsets {[hex(o) for o in r['offsets']]}, first at "
        f"{r['first_difference']:#x}"
    )
