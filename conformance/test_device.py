"""GRP, CFG, MMIO, DMA, IRQ: a device driven from userspace through VFIO."""

from __future__ import annotations

from typing import Any

from vfio_hil.lab.inventory import DEVICE_MODELS
from vfio_hil.lab.session import DeviceLease
from vfio_hil_pytest import ALL_BACKENDS, CDEV_AND_CONTAINER, check, skip

VFIO_RST = "Documentation/driver-api/vfio.rst"
ENGINE_SPEC = "the device's own register and command set (edu.rst; NVM Express Base 2.0)"


@check(
    "GRP-001",
    "The group is viable with all its devices on vfio-pci and attaches to a type1v2 container",
    level="MUST",
    spec=f"{VFIO_RST}: VFIO Usage Example; include/uapi/linux/vfio.h VFIO_GROUP_GET_STATUS",
)
def test_group_viable_and_attaches(dut_device: DeviceLease) -> None:
    """A group is usable only when every member is owned by a VFIO-compatible driver; once
    viable it must attach to a container and accept the type1v2 IOMMU model."""
    r = dut_device.call("probes.group_attach", bdf=dut_device.bdf)
    assert r["viable"], f"group {r['group']} of {dut_device.bdf} is not viable"
    assert r["container_set"], f"group {r['group']} did not report its container as set"
    assert r["iommu_type"] == "type1v2"


@check(
    "CFG-001",
    "Vendor and device IDs read through the VFIO config region equal sysfs",
    level="MUST",
    spec="include/uapi/linux/vfio.h VFIO_PCI_CONFIG_REGION_INDEX",
)
def test_config_ids(dut_device: DeviceLease) -> None:
    """The config region is VFIO's virtualized view of config space: the identity fields pass
    through unchanged, so userspace drivers can match the device they opened."""
    r = dut_device.call("probes.config_ids", bdf=dut_device.bdf)
    got = (r["vendor"], r["device"])
    sysfs = (r["sysfs_vendor"], r["sysfs_device"])
    assert got == sysfs, (
        f"config region says {got[0]:04x}:{got[1]:04x}, sysfs {sysfs[0]:04x}:{sysfs[1]:04x}"
    )
    model = DEVICE_MODELS[dut_device.device.model]
    if model.vendor_id:
        expected = (model.vendor_id, model.device_id)
        assert got == expected, f"{dut_device.bdf} is {got[0]:04x}:{got[1]:04x}, not a {model.name}"


def _engine_call(
    dut_device: DeviceLease, evidence: Any, func: str, **kwargs: Any
) -> dict[str, Any]:
    """Run a DUT probe over the device's DMA engine; its result is the check's evidence."""
    r = dut_device.call(func, bdf=dut_device.bdf, scratch=dut_device.device.scratch, **kwargs)
    evidence.add("engine", r.get("engine"))
    evidence.add("findings", r)
    if "skip" in r:
        skip(r["skip_kind"], f"{dut_device.bdf}: {r['skip']}")
    return r


@check(
    "MMIO-001",
    "BAR registers through mmap: the identity register reads right, a R/W register reads back",
    level="MUST",
    spec=f"{ENGINE_SPEC}; include/uapi/linux/vfio.h VFIO_REGION_INFO_FLAG_MMAP",
    needs=("device_registers",),
    backends=CDEV_AND_CONTAINER,
)
def test_engine_mmio(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """BAR access through mmap of the region is the fast path of every userspace driver: reads
    and writes must reach the device's registers, not a copy. The device's driver names an
    identity register (edu: ID 0x010000ed; NVMe: VS holds an NVMe version) and a register
    whose read-back it defines (edu: liveness returns the inverse; NVMe: AQA, with the
    controller disabled, returns what was written)."""
    r = _engine_call(dut_device, evidence, "probes.engine_mmio", backend=iommu_backend)
    assert r["mmapped"], f"{dut_device.bdf}: BAR{r['bar']} offers no mmap'able area"
    assert not r["identity_problem"], f"{dut_device.bdf}: {r['identity_problem']}"
    assert r["read_back"] == r["expected_read_back"], (
        f"{dut_device.bdf}: register {r['scratch_offset']:#x} of BAR{r['bar']} returned "
        f"{r['read_back']:#010x} for {r['written']:#010x}, expected {r['expected_read_back']:#010x}"
    )


@check(
    "DMA-001",
    "Device DMA at mapped IOVAs: what the device writes arrives, what it reads it obtains",
    level="MUST",
    spec=f"{VFIO_RST}: VFIO_IOMMU_MAP_DMA; {ENGINE_SPEC}",
    needs=("dma_to_host",),
    backends=ALL_BACKENDS,
)
def test_engine_dma_roundtrip(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Mapped IOVAs must translate to the buffers userspace pinned, under every IOMMU
    backend: the data the device writes to one mapping arrives byte for byte, and (where the
    device reads host memory) it obtains exactly the bytes of another mapping."""
    r = _engine_call(dut_device, evidence, "probes.engine_dma_roundtrip", backend=iommu_backend)
    out = r["to_host"]
    assert r["mismatched_bytes"] == 0, (
        f"{dut_device.bdf}: {r['mismatched_bytes']} of {out['size']} bytes the device wrote to "
        f"IOVA {out['iova']:#x} differ from its payload (device status: {out['status']})"
    )
    assert r["obtained"] is not False, (
        f"{dut_device.bdf}: the device did not obtain the bytes it read at IOVA "
        f"{r['from_host']['iova']:#x} (device status: {r['from_host']['status']})"
    )


@check(
    "IRQ-001",
    "The device raises its MSI (or MSI-X): the eventfd counts exactly one interrupt",
    level="MUST",
    spec=f"include/uapi/linux/vfio.h VFIO_DEVICE_SET_IRQS (MSI/MSI-X, eventfd); {ENGINE_SPEC}",
    needs=("device_irq",),
    backends=CDEV_AND_CONTAINER,
)
def test_engine_msi(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Interrupts reach userspace through eventfds: one message-signalled interrupt raised by
    the device is exactly one count, neither lost nor duplicated."""
    r = _engine_call(dut_device, evidence, "interrupts.msi_per_raise", backend=iommu_backend)
    count = r["per_raise"][0] + r["late"]
    assert count == 1, f"the {r['index']} eventfd counted {count} interrupts for one raise"
