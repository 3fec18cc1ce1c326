"""The DMA engines of devices under test. Runs on the DUT.

:func:`engine_in_container` opens a device in an IOMMU context of its own (a type1v2
container by default, or any backend :func:`vfio_hil.core.open_iommu` offers) and drives it
through the engine its driver offers (:func:`vfio_hil.core.drivers.probe_engine`); the ISO,
DMA, IRQ and MMIO checks run over it, whatever the device. :func:`describe` tells the
controller which engine a device offers, with its capabilities and the identity the device
reports; :func:`backends` which IOMMU backends the DUT's kernel offers.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Tuple

from ..core import sysfs
from ..core.backend import IommuBackend, available_backends, open_iommu
from ..core.device import Device
from ..core.drivers import DmaEngine, EngineMemory, probe_engine
from .common import DEFAULT_BACKEND


class NoEngineError(LookupError):
    """No driver of the library drives the device as a DMA engine."""


@contextmanager
def engine_in_container(
    bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Iterator[Tuple[IommuBackend, Device, DmaEngine]]:
    """``bdf`` in an IOMMU context of its own (``backend``), driven as a DMA engine (its
    private DMA memory at :attr:`EngineMemory.DEFAULT_BASE`). Raises :class:`NoEngineError`
    for a device no driver drives."""
    with open_iommu(backend) as iommu:
        device = iommu.open_device(bdf)
        with EngineMemory.of(iommu) as memory:
            engine = probe_engine(device, memory, scratch)
            if engine is None:
                raise NoEngineError(f"no DMA engine drives {sysfs.normalize_bdf(bdf)}")
            with engine:
                yield iommu, device, engine


def describe(bdf: str) -> Dict[str, Any]:
    """The engine ``bdf`` offers: ``{"engine", "capabilities", "caps", "identity"}``
    (``engine`` None and no capabilities for a device no driver drives)."""
    try:
        with engine_in_container(bdf) as (_container, _device, engine):
            return engine.describe()
    except NoEngineError:
        return {"engine": None, "capabilities": [], "caps": None, "identity": {}}


def backends() -> Dict[str, str]:
    """Every IOMMU backend and why this DUT cannot use it (``""``: it can)."""
    return available_backends()
