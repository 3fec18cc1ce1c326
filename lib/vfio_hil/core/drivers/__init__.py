"""Userspace drivers for specific devices, built on the VFIO core, and the DMA-engine
interface they implement (:mod:`.engine`). Importing this package registers every driver
with :func:`probe_engine`."""

from .edu import Edu, EduEngine
from .engine import (
    DmaEngine,
    EngineCaps,
    EngineError,
    EngineMemory,
    RegisterProbe,
    Transfer,
    probe_engine,
)
from .nvme import NvmeController, NvmeEngine

__all__ = [
    "DmaEngine",
    "Edu",
    "EduEngine",
    "EngineCaps",
    "EngineError",
    "EngineMemory",
    "NvmeController",
    "NvmeEngine",
    "RegisterProbe",
    "Transfer",
    "probe_engine",
]
