"""Exceptions raised by the VFIO core library."""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional


class VfioError(OSError):
    """A VFIO operation refused by the kernel.

    Attributes (besides the inherited ``errno`` and ``strerror``):

    ``ioctl``
        Name of the refused ioctl (``"VFIO_GROUP_SET_CONTAINER"``), or of the system call for
        operations that are not ioctls (``"open"``, ``"mmap"``, ``"pread"``...).
    ``target``
        What the operation was applied to: ``"container"``, ``"group 7"`` or
        ``"device 0000:00:04.0"``.
    ``arguments``
        The caller-level arguments of the operation, for the report.
    """

    def __init__(
        self,
        errno: int,
        ioctl: str,
        target: str,
        arguments: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(errno, os.strerror(errno))
        self.ioctl = ioctl
        self.target = target
        self.arguments = dict(arguments or {})

    def __str__(self) -> str:
        return f"{self.ioctl} on {self.target}: [Errno {self.errno}] {self.strerror}"

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError pickles as (errno, strerror), which does not fit this constructor.
        return (type(self), (self.errno, self.ioctl, self.target, self.arguments))


class VfioApiVersionError(RuntimeError):
    """The kernel reports a VFIO API version this library does not speak."""

    def __init__(self, version: int, expected: int) -> None:
        super().__init__(f"VFIO API version {version}, expected {expected}")
        self.version = version
        self.expected = expected


class CapabilityChainError(ValueError):
    """A capability chain (VFIO INFO buffer or PCI config space) is malformed.

    Raised instead of following a chain that loops, leaves its buffer or is truncated, so a
    corrupt chain is reported rather than hanging or reading garbage.
    """


class UnsafeModeError(RuntimeError):
    """The only way to go on is an unsafe VFIO mode (no-IOMMU) the caller did not ask for."""


class BackendUnavailableError(RuntimeError):
    """The requested IOMMU backend is not offered by this kernel or for this device."""


class IovaExhaustedError(RuntimeError):
    """No free IOVA range of the requested size is left inside the allowed ranges."""


class HugePagesUnavailableError(OSError):
    """A huge-page DMA buffer could not be allocated: the size is unsupported or the pool is
    empty. The message names the pool so a test can skip with it as the reason."""
