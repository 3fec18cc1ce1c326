"""The NVMe driver: any vendor's NVMe controller (class code 01:08:02) over VFIO."""

from .controller import CommandTimeout, MediaWriteRefused, NvmeController, NvmeEngine, is_nvme
from .spec import Command, Completion, ControllerIdentity, NamespaceIdentity

__all__ = [
    "Command",
    "CommandTimeout",
    "Completion",
    "ControllerIdentity",
    "MediaWriteRefused",
    "NamespaceIdentity",
    "NvmeController",
    "NvmeEngine",
    "is_nvme",
]
