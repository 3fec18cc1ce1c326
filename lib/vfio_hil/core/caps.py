"""VFIO INFO capability chains (``struct vfio_info_cap_header``), decoded from raw bytes.

Several INFO ioctls (IOMMU info, device info, region info) append a chain of capabilities
after their fixed structure: each starts with an id, a version and the offset of the next
one, relative to the start of the buffer; 0 ends the chain. The kernel only fills the chain
if the buffer is large enough, so callers fetch the INFO twice (see :meth:`Handle._info`).

Parsing works on ``bytes`` so that canned buffers can be tested without a kernel; every
offset is bounds-checked and a revisited offset is an error, so a corrupt chain can neither
hang the parser nor make it read outside the buffer.
"""

from __future__ import annotations

import struct
from typing import Any, List, NamedTuple, Optional

from . import uapi
from .errors import CapabilityChainError

_HEADER = struct.Struct("=HHI")


class InfoCap(NamedTuple):
    """One capability of an INFO buffer: its id, version and offset in the buffer."""

    id: int
    version: int
    offset: int


def walk(buf: bytes, first: int, fixed_size: int, what: str) -> List[InfoCap]:
    """Return the capabilities chained from offset ``first`` (0: none) in ``buf``.

    ``fixed_size`` is the size of the INFO structure the chain follows; a capability may not
    overlap it. ``what`` names the buffer in errors (``"region 0 info of device ..."``).
    Raises :class:`CapabilityChainError` for a loop or an offset outside the buffer.
    """
    caps: List[InfoCap] = []
    seen = set()
    offset = first
    while offset:
        if offset in seen:
            raise CapabilityChainError(
                f"{what}: capability chain loops back to offset {offset:#x} "
                f"after {len(caps)} capabilities"
            )
        if offset < fixed_size or offset + _HEADER.size > len(buf):
            raise CapabilityChainError(
                f"{what}: capability offset {offset:#x} outside the chain area "
                f"[{fixed_size:#x}, {len(buf):#x}) of the info buffer"
            )
        seen.add(offset)
        cap_id, version, next_offset = _HEADER.unpack_from(buf, offset)
        caps.append(InfoCap(cap_id, version, offset))
        offset = next_offset
    return caps


def find(caps: List[InfoCap], cap_id: int) -> Optional[InfoCap]:
    """The first capability with id ``cap_id``, or None."""
    return next((cap for cap in caps if cap.id == cap_id), None)


def view(buf: bytes, cap: InfoCap, struct_name: str, what: str, count_field: str = "") -> Any:
    """Return a read-only cdata ``struct <struct_name> *`` over capability ``cap`` of ``buf``.

    With ``count_field``, the structure ends in a flexible array whose length is that field;
    the whole array must fit in the buffer too. Raises :class:`CapabilityChainError` for a
    truncated capability.
    """
    ctype = uapi.ffi.typeof(f"struct {struct_name}")
    end = cap.offset + uapi.ffi.sizeof(ctype)
    if end > len(buf):
        raise CapabilityChainError(
            f"{what}: capability {cap.id} at {cap.offset:#x} needs {uapi.ffi.sizeof(ctype)} "
            f"bytes, the buffer ends at {len(buf):#x}"
        )
    ptr = uapi.ffi.from_buffer(f"struct {struct_name} *", memoryview(buf)[cap.offset :])
    if count_field:
        count = int(getattr(ptr, count_field))
        item = uapi.ffi.sizeof(ctype.fields[-1][1].type.item)
        if end + count * item > len(buf):
            raise CapabilityChainError(
                f"{what}: capability {cap.id} at {cap.offset:#x} declares {count} entries "
                f"({count * item} bytes), the buffer ends at {len(buf):#x}"
            )
    return ptr
