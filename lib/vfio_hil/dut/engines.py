"""The DMA engines of devices under test. Runs on the DUT.

:func:`engine_in_container` opens a device in a container of its own and drives it through
the engine its driver offers (:func:`vfio_hil.core.drivers.probe_engine`); the ISO, DMA, IRQ
and MMIO checks run over it, whatever the device. :func:`describe` tells the controller which
engine a device offers, with its capabilities and the identity the device reports.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Tuple

from ..core import sysfs
from ..core.container import Container
from ..core.device import Device
from ..core.drivers import DmaEngine, EngineMemory, probe_engine
from .mapping import device_in_container


class NoEngineError(LookupError):
    """No driver of the library drives the device as a DMA engine."""


@contextmanager
def engine_in_container(
    bdf: str, scratch: bool = False
) -> Iterator[Tuple[Container, Device, DmaEngine]]:
    """``bdf`` in a type1v2 container of its own, driven as a DMA engine (its private DMA
    memory at :attr:`EngineMemory.DEFAULT_BASE`). Raises :class:`NoEngineError` for a device
    no driver drives."""
    with device_in_container(bdf) as (container, device), EngineMemory.of(container) as memory:
        engine = probe_engine(device, memory, scratch)
        if engine is None:
            raise NoEngineError(f"no DMA engine drives {sysfs.normalize_bdf(bdf)}")
        with engine:
            yield container, device, engine


def describe(bdf: str) -> Dict[str, Any]:
    """The engine ``bdf`` offers: ``{"engine", "capabilities", "caps", "identity"}``
    (``engine`` None and no capabilities for a device no driver drives)."""
    try:
        with engine_in_container(bdf) as (_container, _device, engine):
            return engine.describe()
    except NoEngineError:
        return {"engine": None, "capabilities": [], "caps": None, "identity": {}}
