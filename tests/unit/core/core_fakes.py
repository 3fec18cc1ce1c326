"""A recording stand-in for the kernel's ioctl handler, injected as a handle's ``ioctl_fn``.

It records every call as (the node the fd was opened from, ioctl name, argument bytes) and
answers through per-ioctl handlers that may write into the argument like the kernel does.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

from vfio_hil.core import uapi

Handler = Callable[[Any], int]


class Call(NamedTuple):
    node: str
    name: str
    #: The argument's bytes, or the integer passed by value (None: no argument).
    arg: Union[bytes, int, None]


def arg_bytes(arg: Any) -> Union[bytes, int, None]:
    """The bytes of an ioctl argument: a VFIO/iommufd structure as far as its own size field
    (``argsz``/``size``) says, any other pointer or array whole; by-value ones as they are."""
    if arg is None or isinstance(arg, int):
        return arg
    if isinstance(arg, bytearray):
        return bytes(arg)
    ctype = uapi.ffi.typeof(arg)
    if ctype.kind == "array":
        return bytes(uapi.ffi.buffer(arg))
    item = ctype.item
    if item.kind == "struct" and item.fields[0][0] in ("argsz", "size"):
        size = struct.unpack("=I", bytes(uapi.ffi.buffer(arg, 4)))[0]
        return bytes(uapi.ffi.buffer(arg, size))
    return bytes(uapi.ffi.buffer(arg, uapi.ffi.sizeof(item)))


class FakeKernel:
    """Records ioctls; ``handlers[name](arg)`` gives the result (default 0)."""

    def __init__(self) -> None:
        self.calls: List[Call] = []
        self.handlers: Dict[str, Handler] = {}

    def __call__(self, fd: int, name: str, arg: Any) -> int:
        if fd < 0:
            return -errno.EBADF
        node = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        self.calls.append(Call(node, name, arg_bytes(arg)))
        handler = self.handlers.get(name)
        if isinstance(arg, bytearray):
            # A packed request: handlers see it through its declaration, writes land in it.
            arg = uapi.ffi.from_buffer(f"struct {uapi.PACKED[name].struct_name} *", arg)
        return handler(arg) if handler else 0

    def names(self) -> List[str]:
        """The ioctl names called, in order."""
        return [c.name for c in self.calls]

    def last(self, name: str) -> Call:
        """The last call of ioctl ``name``."""
        return [c for c in self.calls if c.name == name][-1]


def fake_pci_device(
    root: Path, bdf: str, group: int, cdev: Optional[str] = None, noiommu: bool = False
) -> None:
    """A PCI device in a fake sysfs under ``root``, with its IOMMU group and (optionally)
    VFIO cdev, and the device nodes under ``root/dev``: plain files, for a FakeKernel."""
    dev = root / "sys/devices/pci0000:00" / bdf
    dev.mkdir(parents=True)
    groups = root / "sys/kernel/iommu_groups" / str(group) / "devices"
    groups.mkdir(parents=True, exist_ok=True)
    (groups / bdf).symlink_to(os.path.relpath(dev, groups))
    (dev / "iommu_group").symlink_to(os.path.relpath(groups.parent, dev))
    links = root / "sys/bus/pci/devices"
    links.mkdir(parents=True, exist_ok=True)
    (links / bdf).symlink_to(os.path.relpath(dev, links))
    vfio = root / "dev/vfio"
    vfio.mkdir(parents=True, exist_ok=True)
    (vfio / "vfio").touch()
    (vfio / (f"noiommu-{group}" if noiommu else str(group))).touch()
    (root / "dev/iommu").touch()
    if cdev is not None:
        (dev / "vfio-dev" / cdev).mkdir(parents=True)
        (vfio / "devices").mkdir(exist_ok=True)
        (vfio / "devices" / cdev).touch()
