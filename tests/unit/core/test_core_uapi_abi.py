"""The cffi bindings must match the kernel headers byte for byte.

For each group of declarations (``linux/vfio.h`` as of 6.1, its device-cdev additions of
6.6, ``linux/iommufd.h``) a C program generated from the bindings prints, as compiled against
the system header, the size of every bound structure, the offset and size of every field,
every ioctl number and every constant; the test compares that with what cffi and the Python
module computed. A group whose header is too old or absent skips, naming what is missing.

Set VFIO_HIL_UAPI_INCLUDE to check against other headers than /usr/include.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, NamedTuple

import cffi
import pytest

from vfio_hil.core import uapi

#: Where the headers are looked up; point VFIO_HIL_UAPI_INCLUDE at the ``usr/include`` of a
#: newer linux-libc-dev (unpacked anywhere) to check the groups this machine's headers lack.
INCLUDE_ROOT = Path(os.environ.get("VFIO_HIL_UAPI_INCLUDE", "/usr/include"))
INCLUDE = INCLUDE_ROOT / "linux"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


class Group(NamedTuple):
    name: str
    header: str
    cdef: str
    #: A macro the header must define for this group to be checkable.
    marker: str


GROUPS = [
    Group("vfio", "vfio.h", uapi.VFIO_CDEF, "VFIO_API_VERSION"),
    Group("vfio_cdev", "vfio.h", uapi.VFIO_CDEV_CDEF, "VFIO_DEVICE_BIND_IOMMUFD"),
    Group("iommufd", "iommufd.h", uapi.IOMMUFD_CDEF, "IOMMU_IOAS_MAP"),
]


def _group_of(name: str) -> str:
    if name.startswith(("IOMMU_", "IOMMUFD_")):
        return "iommufd"
    if name in uapi.VFIO_CDEV_NAMES:
        return "vfio_cdev"
    return "vfio"


def _constants(group: str) -> Dict[str, int]:
    return {
        name: value
        for name, value in vars(uapi).items()
        if name.startswith(("VFIO_", "EFD_", "IOMMU_", "IOMMUFD_"))
        and isinstance(value, int)
        and _group_of(name) == group
    }


def _structs(group: Group) -> List[str]:
    ffi = cffi.FFI()
    ffi.cdef(group.cdef)
    return list(ffi.list_types()[1])


def _fields(struct: str) -> List[tuple]:
    return list(uapi.ffi.typeof(f"struct {struct}").fields)


def _is_flexible(field: object) -> bool:
    ftype = field.type  # type: ignore[attr-defined]
    return ftype.kind == "array" and ftype.length is None


def _expected(group: Group) -> Dict[str, int]:
    ffi = uapi.ffi
    expected: Dict[str, int] = {}
    for struct in _structs(group):
        expected[f"sizeof {struct}"] = ffi.sizeof(f"struct {struct}")
        for name, field in _fields(struct):
            expected[f"offsetof {struct}.{name}"] = field.offset
            if not _is_flexible(field):
                expected[f"fieldsize {struct}.{name}"] = ffi.sizeof(field.type)
    for name, number in uapi.IOCTLS.items():
        if _group_of(name) == group.name:
            expected[f"ioctl {name}"] = number
    for name, value in _constants(group.name).items():
        expected[f"const {name}"] = value
    return expected


def _program(group: Group, expected: Dict[str, int]) -> str:
    body: List[str] = []
    for key in expected:
        kind, _, what = key.partition(" ")
        if kind == "sizeof":
            expr = f"sizeof(struct {what})"
        elif kind in ("offsetof", "fieldsize"):
            struct, _, field = what.partition(".")
            expr = (
                f"offsetof(struct {struct}, {field})"
                if kind == "offsetof"
                else f"sizeof(((struct {struct} *)0)->{field})"
            )
        elif kind == "const" and expected[key] < 1 << 32:
            # Flag constants such as (1 << 31) are negative ints in C; compare them as the
            # u32 fields they are used in.
            expr = f"(unsigned int)({what})"
        else:
            expr = what
        body.append(f'P("{key}", {expr});')
    return "\n".join(
        [
            "#include <stddef.h>",
            "#include <stdio.h>",
            "#include <sys/eventfd.h>",
            f"#include <linux/{group.header}>",
            '#define P(key, value) printf("%s %llu\\n", key, (unsigned long long)(value))',
            "int main(void) {",
            *body,
            "return 0;",
            "}",
        ]
    )


def _grew_at_the_end(key: str, ours: int, header: object) -> bool:
    """A newer header may append fields to a structure that starts with its own size
    (``argsz``/``size``): the kernel still accepts the shorter layout we bind. Every field
    we bind is still compared at its exact offset."""
    kind, _, struct = key.partition(" ")
    extensible = _fields(struct)[0][0] in ("argsz", "size") if kind == "sizeof" else False
    return extensible and isinstance(header, int) and header > ours


def _skip_reason(group: Group) -> str:
    header = INCLUDE / group.header
    if not header.exists():
        return f"{header} is absent on this machine"
    if group.marker not in header.read_text():
        return f"{header} predates {group.marker} (VFIO device cdev interface, Linux 6.6)"
    return ""


def _compile_and_run(workdir: Path, source: str) -> Dict[str, int]:
    (workdir / "abi.c").write_text(source)
    build = subprocess.run(
        [
            "gcc",
            "-Wall",
            "-Werror",
            f"-I{INCLUDE_ROOT}",
            "-o",
            str(workdir / "abi"),
            str(workdir / "abi.c"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(workdir / "abi")], check=True, capture_output=True, text=True).stdout
    result: Dict[str, int] = {}
    for line in out.splitlines():
        key, value = line.rsplit(" ", 1)
        result[key] = int(value)
    return result


@pytest.mark.parametrize("group", GROUPS, ids=[g.name for g in GROUPS])
def test_every_binding_matches_the_header(group: Group, tmp_path: Path) -> None:
    reason = _skip_reason(group)
    if reason:
        pytest.skip(reason)
    expected = _expected(group)
    from_header = _compile_and_run(tmp_path, _program(group, expected))
    mismatches = {
        k: (v, from_header.get(k))
        for k, v in expected.items()
        if from_header.get(k) != v and not _grew_at_the_end(k, v, from_header.get(k))
    }
    assert not mismatches, f"binding vs header (python, C): {mismatches}"
    # Guards against the generator silently comparing nothing.
    assert len(from_header) == len(expected) > 20


def test_every_name_belongs_to_a_group() -> None:
    """Each bound struct, ioctl and constant is compared under exactly one group."""
    structs = [s for g in GROUPS for s in _structs(g)]
    assert sorted(structs) == sorted(uapi.ffi.list_types()[1])
    checked = {k for g in GROUPS for k in _expected(g) if k.startswith("ioctl ")}
    assert checked == {f"ioctl {name}" for name in uapi.IOCTLS}


def test_required_structs_are_bound() -> None:
    bound = set(uapi.ffi.list_types()[1])
    assert {
        "vfio_info_cap_header",
        "vfio_group_status",
        "vfio_device_info",
        "vfio_region_info",
        "vfio_region_info_cap_sparse_mmap",
        "vfio_region_info_cap_type",
        "vfio_irq_info",
        "vfio_irq_set",
        "vfio_pci_hot_reset_info",
        "vfio_pci_hot_reset",
        "vfio_device_ioeventfd",
        "vfio_device_feature",
        "vfio_iommu_type1_info",
        "vfio_iommu_type1_info_cap_iova_range",
        "vfio_iommu_type1_info_cap_migration",
        "vfio_iommu_type1_info_dma_avail",
        "vfio_iommu_type1_dma_map",
        "vfio_iommu_type1_dma_unmap",
        "vfio_device_bind_iommufd",
        "vfio_device_attach_iommufd_pt",
        "vfio_device_detach_iommufd_pt",
        "iommu_destroy",
        "iommu_ioas_alloc",
        "iommu_ioas_iova_ranges",
        "iommu_ioas_allow_iovas",
        "iommu_ioas_map",
        "iommu_ioas_copy",
        "iommu_ioas_unmap",
    } <= bound


# Layouts of the structures the controller's headers cannot check (no iommufd.h, a vfio.h
# before 6.6), written down from the upstream uapi headers so a drift still fails here.
UPSTREAM_LAYOUTS = {
    "vfio_device_bind_iommufd": (16, {"argsz": 0, "flags": 4, "iommufd": 8, "out_devid": 12}),
    "vfio_device_attach_iommufd_pt": (12, {"argsz": 0, "flags": 4, "pt_id": 8}),
    "vfio_device_detach_iommufd_pt": (8, {"argsz": 0, "flags": 4}),
    "iommu_destroy": (8, {"size": 0, "id": 4}),
    "iommu_ioas_alloc": (12, {"size": 0, "flags": 4, "out_ioas_id": 8}),
    "iommu_iova_range": (16, {"start": 0, "last": 8}),
    "iommu_ioas_iova_ranges": (
        32,
        {"size": 0, "ioas_id": 4, "num_iovas": 8, "allowed_iovas": 16, "out_iova_alignment": 24},
    ),
    "iommu_ioas_allow_iovas": (24, {"size": 0, "ioas_id": 4, "num_iovas": 8, "allowed_iovas": 16}),
    "iommu_ioas_map": (
        40,
        {"size": 0, "flags": 4, "ioas_id": 8, "user_va": 16, "length": 24, "iova": 32},
    ),
    "iommu_ioas_copy": (
        40,
        {"flags": 4, "dst_ioas_id": 8, "src_ioas_id": 12, "length": 16, "dst_iova": 24},
    ),
    "iommu_ioas_unmap": (24, {"size": 0, "ioas_id": 4, "iova": 8, "length": 16}),
}


@pytest.mark.parametrize("struct", sorted(UPSTREAM_LAYOUTS))
def test_upstream_layouts(struct: str) -> None:
    size, offsets = UPSTREAM_LAYOUTS[struct]
    assert uapi.ffi.sizeof(f"struct {struct}") == size
    assert {name: uapi.ffi.offsetof(f"struct {struct}", name) for name in offsets} == offsets


def test_upstream_ioctl_numbers() -> None:
    # _IO(';', n): type 0x3b in bits 8-15, no size and no direction.
    assert uapi.IOCTLS["VFIO_DEVICE_BIND_IOMMUFD"] == 0x3B00 + 118
    assert uapi.IOCTLS["VFIO_DEVICE_DETACH_IOMMUFD_PT"] == 0x3B00 + 120
    assert uapi.IOCTLS["IOMMU_DESTROY"] == 0x3B80
    assert uapi.IOCTLS["IOMMU_IOAS_UNMAP"] == 0x3B86


@pytest.mark.parametrize("ioctl", sorted(uapi.PACKED))
def test_packed_layouts_match_the_declarations(ioctl: str) -> None:
    # Each field packed with a distinct value must read back through the cffi declaration
    # (checked against the header above) in the same field: order, widths and padding agree.
    # A trailing flexible array takes no room and is not part of the request.
    packed = uapi.PACKED[ioctl]
    fields = [f for f in _fields(packed.struct_name) if not _is_flexible(f[1])]
    assert packed.layout.size == uapi.ffi.sizeof(f"struct {packed.struct_name}")
    assert len(fields) == len(packed.layout.unpack(bytes(packed.layout.size)))
    values = [
        (0x0101010101010101 * (i + 1)) & ((1 << 8 * uapi.ffi.sizeof(f.type)) - 1)
        for i, (_, f) in enumerate(fields)
    ]
    buf = bytearray(packed.layout.size)
    packed.layout.pack_into(buf, 0, *values)
    view = uapi.ffi.from_buffer(f"struct {packed.struct_name} *", buf)
    assert [getattr(view, name) for name, _ in fields] == values
