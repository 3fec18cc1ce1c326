"""Probes run on the DUT on behalf of the controller.

Each probe takes a PCI address of a device whose whole IOMMU group is already bound to
vfio-pci, opens what it needs, closes everything before returning, and returns plain
JSON-able data. Kernel refusals propagate as :class:`~vfio_hil.core.errors.VfioError`.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any, Dict, Optional

from ..core import sysfs, uapi
from ..core.container import Container
from ..core.dma import DmaBuffer
from ..core.drivers import Transfer
from ..core.group import Group
from .common import open_device
from .engines import DEFAULT_BACKEND, engine_in_container

#: IOVAs for the DMA round trip: page-aligned and far below every engine's DMA limit.
IOVA_SRC = 0x100000
IOVA_DST = 0x200000
PAGE = 4096


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


def engine_mmio(bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Under IOMMU ``backend``, through the engine's mmap'ed BAR: read its identity register
    and write/read back a read/write register (restored after)."""
    with engine_in_container(bdf, scratch, backend) as (_iommu, _device, engine):
        return {"engine": engine.name, **asdict(engine.probe_registers())}


def engine_dma_roundtrip(
    bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """Under IOMMU ``backend``, the device writes its payload to a mapped IOVA and reads
    random bytes from another: what it writes must arrive byte for byte, and it must obtain
    exactly what it read."""
    with ExitStack() as stack:
        iommu, _device, engine = stack.enter_context(engine_in_container(bdf, scratch, backend))
        caps = engine.caps
        src = stack.enter_context(DmaBuffer(PAGE))
        dst = stack.enter_context(DmaBuffer(max(PAGE, caps.to_host_size)))
        for buf, iova in ((src, IOVA_SRC), (dst, IOVA_DST)):
            iommu.map_dma(buf.vaddr, iova, buf.length)
            stack.callback(iommu.unmap_dma, iova, buf.length)
        sent = src.fill_random()[: caps.from_host_size]
        payload = engine.prime(os.urandom(caps.to_host_size))[: caps.to_host_size]
        out = engine.to_host(IOVA_DST)
        mismatched = dst.compare(payload)
        obtained = None
        into: Optional[Transfer] = None
        if caps.from_host:
            into = engine.from_host(IOVA_SRC)
            obtained = engine.holds(sent)
    return {
        "engine": engine.name,
        "backend": iommu.name,
        "to_host": {"iova": IOVA_DST, "size": len(payload), "status": out.status},
        "mismatched_bytes": mismatched,
        "from_host": None if into is None else {"iova": IOVA_SRC, "status": into.status},
        "obtained": obtained,
    }
