"""Probes run on the DUT on behalf of the controller.

Each probe takes a PCI address of a device whose whole IOMMU group is already bound to
vfio-pci, opens what it needs, closes everything before returning, and returns plain
JSON-able data. Kernel refusals propagate as :class:`~vfio_hil.core.errors.VfioError`.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Dict

from ..core import sysfs, uapi
from ..core.container import Container
from ..core.device import Device
from ..core.dma import DmaBuffer
from ..core.drivers.edu import EDU_DEVICE_ID, EDU_VENDOR_ID, Edu, check_dma
from ..core.group import Group
from ..core.irq import EventFd
from .common import open_device

#: IOVAs for the DMA round trip: page-aligned and far below edu's 28-bit DMA limit.
IOVA_SRC = 0x100000
IOVA_DST = 0x200000
#: Interrupt status bit the MSI probe raises; any bit other than edu's own DMA/factorial bits.
MSI_PROBE_BIT = 0x1000
#: After the first interrupt, how long to keep counting so duplicate deliveries show up.
_MSI_SETTLE_S = 0.2


def _edu(device: Device) -> Edu:
    """Bind the edu driver, after making sure the device really is an edu."""
    ids = (device.config_read(0x00, 2), device.config_read(0x02, 2))
    if ids != (EDU_VENDOR_ID, EDU_DEVICE_ID):
        raise ValueError(f"{device.bdf} is {ids[0]:04x}:{ids[1]:04x}, not an edu device")
    return Edu(device)


def group_attach(bdf: str) -> Dict[str, Any]:
    """Attach ``bdf``'s group to a new container and select the type1v2 IOMMU.

    ``viable``/``container_set`` are the group status after the attach,
    ``viable_before``/``container_set_before`` the status before it.
    """
    bdf = sysfs.normalize_bdf(bdf)
    with Container() as container, Group.of_device(bdf) as group:
        before = group.status()
        group.set_container(container)
        container.set_iommu(uapi.VFIO_TYPE1v2_IOMMU)
        after = group.status()
        return {
            "group": group.number,
            "viable": after.viable,
            "container_set": after.container_set,
            "viable_before": before.viable,
            "container_set_before": before.container_set,
            "iommu_type": "type1v2",
            "api_version": container.api_version,
        }


def config_ids(bdf: str) -> Dict[str, Any]:
    """Vendor and device id as read through the VFIO config region and as sysfs reports them."""
    with open_device(bdf) as (_container, _group, device):
        vendor = device.config_read(0x00, 2)
        device_id = device.config_read(0x02, 2)
    ids = sysfs.pci_ids(bdf)
    return {
        "vendor": vendor,
        "device": device_id,
        "sysfs_vendor": ids.vendor,
        "sysfs_device": ids.device,
    }


def edu_mmio(bdf: str, pattern: int = 0x12345678) -> Dict[str, Any]:
    """Read edu's id register and exercise the liveness register through the mmap'ed BAR0."""
    with open_device(bdf) as (_container, _group, device), _edu(device) as edu:
        return {
            "id": edu.id(),
            "liveness_written": pattern,
            "liveness_read": edu.liveness(pattern),
        }


def edu_dma_roundtrip(bdf: str, size: int = 1024) -> Dict[str, Any]:
    """DMA random data RAM -> edu -> RAM through IOMMU mappings and compare."""
    check_dma(IOVA_SRC, size)
    check_dma(IOVA_DST, size)
    with ExitStack() as stack:
        container, _group, device = stack.enter_context(open_device(bdf))
        edu = stack.enter_context(_edu(device))
        src = stack.enter_context(DmaBuffer(size))
        dst = stack.enter_context(DmaBuffer(size))
        expected = src.fill_random()
        container.map_dma(src.vaddr, IOVA_SRC, src.length)
        stack.callback(container.unmap_dma, IOVA_SRC, src.length)
        container.map_dma(dst.vaddr, IOVA_DST, dst.length)
        stack.callback(container.unmap_dma, IOVA_DST, dst.length)
        edu.dma_to_device(IOVA_SRC, size)
        edu.dma_from_device(IOVA_DST, size)
        mismatched = dst.compare(expected)
    return {
        "size": size,
        "iova_src": IOVA_SRC,
        "iova_dst": IOVA_DST,
        "mismatched_bytes": mismatched,
        "match": mismatched == 0,
    }


def edu_msi(bdf: str, timeout_s: float = 5.0) -> Dict[str, Any]:
    """Route edu's MSI to an eventfd, raise the interrupt once and count deliveries."""
    with ExitStack() as stack:
        _container, _group, device = stack.enter_context(open_device(bdf))
        edu = stack.enter_context(_edu(device))
        eventfd = stack.enter_context(EventFd())
        # Leftover status bits would make the device signal as soon as MSI is enabled.
        edu.ack_irq(0xFFFFFFFF)
        device.set_irqs_eventfd(uapi.VFIO_PCI_MSI_IRQ_INDEX, [eventfd.fd])
        stack.callback(device.disable_irqs, uapi.VFIO_PCI_MSI_IRQ_INDEX)
        edu.raise_irq(MSI_PROBE_BIT)
        count = eventfd.read_count(timeout_s)
        if count:
            count += eventfd.read_count(_MSI_SETTLE_S)
        edu.ack_irq(MSI_PROBE_BIT)
    return {"count": count, "expected": 1}
