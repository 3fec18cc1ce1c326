"""The cffi bindings must match the kernel header byte for byte.

A C program generated from the bindings prints, as compiled against linux/vfio.h, the size
of every bound structure, the offset and size of every field, every ioctl number and every
constant; the test compares that with what cffi and the Python module computed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, List

import pytest
from vfio_hil.core import uapi

HEADER = "/usr/include/linux/vfio.h"

pytestmark = [
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed"),
    pytest.mark.skipif(not os.path.exists(HEADER), reason=f"{HEADER} is missing"),
]


def _constants() -> Dict[str, int]:
    return {
        name: value
        for name, value in vars(uapi).items()
        if name.startswith(("VFIO_", "EFD_")) and isinstance(value, int)
    }


def _expected() -> Dict[str, int]:
    ffi = uapi.ffi
    expected: Dict[str, int] = {}
    for struct in ffi.list_types()[1]:
        ctype = ffi.typeof(f"struct {struct}")
        expected[f"sizeof {struct}"] = ffi.sizeof(ctype)
        for name, field in ctype.fields:
            expected[f"offsetof {struct}.{name}"] = field.offset
            if not (field.type.kind == "array" and field.type.length is None):
                expected[f"fieldsize {struct}.{name}"] = ffi.sizeof(field.type)
    for name, number in uapi.IOCTLS.items():
        expected[f"ioctl {name}"] = number
    for name, value in _constants().items():
        expected[f"const {name}"] = value
    return expected


def _program() -> str:
    ffi = uapi.ffi
    body: List[str] = []
    for struct in ffi.list_types()[1]:
        ctype = ffi.typeof(f"struct {struct}")
        body.append(f'P("sizeof {struct}", sizeof(struct {struct}));')
        for name, field in ctype.fields:
            body.append(f'P("offsetof {struct}.{name}", offsetof(struct {struct}, {name}));')
            if not (field.type.kind == "array" and field.type.length is None):
                body.append(
                    f'P("fieldsize {struct}.{name}", sizeof(((struct {struct} *)0)->{name}));'
                )
    for name in uapi.IOCTLS:
        body.append(f'P("ioctl {name}", {name});')
    for name in _constants():
        body.append(f'P("const {name}", {name});')
    return "\n".join(
        [
            "#include <stddef.h>",
            "#include <stdio.h>",
            "#include <sys/eventfd.h>",
            "#include <linux/vfio.h>",
            '#define P(key, value) printf("%s %llu\\n", key, (unsigned long long)(value))',
            "int main(void) {",
            *body,
            "return 0;",
            "}",
        ]
    )


@pytest.fixture(scope="module")
def from_header(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, int]:
    workdir = tmp_path_factory.mktemp("abi")
    source = workdir / "abi.c"
    source.write_text(_program())
    binary = workdir / "abi"
    subprocess.run(
        ["gcc", "-Wall", "-Werror", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    result: Dict[str, int] = {}
    for line in out.splitlines():
        key, value = line.rsplit(" ", 1)
        result[key] = int(value)
    return result


def test_every_binding_matches_the_header(from_header: Dict[str, int]) -> None:
    expected = _expected()
    mismatches = {
        k: (v, from_header.get(k)) for k, v in expected.items() if from_header.get(k) != v
    }
    assert not mismatches, f"binding vs header (python, C): {mismatches}"


def test_required_structs_are_bound() -> None:
    bound = set(uapi.ffi.list_types()[1])
    assert {
        "vfio_info_cap_header",
        "vfio_group_status",
        "vfio_device_info",
        "vfio_region_info",
        "vfio_irq_info",
        "vfio_irq_set",
        "vfio_iommu_type1_info",
        "vfio_iommu_type1_dma_map",
        "vfio_iommu_type1_dma_unmap",
    } <= bound


def test_comparison_covers_ioctls_and_constants(from_header: Dict[str, int]) -> None:
    # Guards against the generator silently comparing nothing.
    assert from_header["ioctl VFIO_GROUP_SET_CONTAINER"] == 0x3B68
    assert from_header["const VFIO_TYPE1v2_IOMMU"] == 3
    assert from_header["sizeof vfio_irq_set"] == 20
