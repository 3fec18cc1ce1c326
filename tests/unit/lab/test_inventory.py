"""Inventory parsing and validation: every bad input is one line naming file and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfio_hil.lab.errors import InventoryError
from vfio_hil.lab.inventory import DEFAULT_INVENTORY, load_inventory, normalize_bdf


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inv.yml"
    path.write_text(text)
    return path


def test_default_inventory_is_one_virtual_host_with_seven_devices() -> None:
    inv = load_inventory(DEFAULT_INVENTORY)
    host = inv.hosts["vdut0"]
    assert host.virtual and host.vm is not None
    assert host.vm.iommu == "intel"
    assert host.vm.iommu_options == "intremap=on,caching-mode=on"
    assert [(d.bdf, d.model) for d in host.devices] == [
        ("0000:00:04.0", "edu"),
        ("0000:00:05.0", "edu"),
        ("0000:00:06.0", "nvme"),
        ("0000:00:07.0", "pci-testdev"),
        ("0000:01:00.0", "edu"),
        ("0000:00:09.0", "edu"),
        ("0000:00:09.1", "edu"),
    ]


def test_group_vars_are_inherited_and_host_vars_win(tmp_path: Path) -> None:
    inv = load_inventory(
        write(
            tmp_path,
            """
all:
  vars: {vm_iommu: amd}
  children:
    virtual:
      vars: {vm_kernel_cmdline: "quiet"}
      hosts:
        a: {}
        b: {vm_iommu: intel, vm_iommu_options: "intremap=off"}
""",
        )
    )
    a, b = inv.hosts["a"].vm, inv.hosts["b"].vm
    assert a is not None and b is not None
    assert (a.iommu, a.iommu_options, a.kernel_cmdline) == ("amd", "", "quiet")
    assert (b.iommu, b.iommu_options) == ("intel", "intremap=off")


def test_real_host_lists_its_devices(tmp_path: Path) -> None:
    inv = load_inventory(
        write(tmp_path, "all:\n  hosts:\n    r1:\n      vfio_devices: ['3b:00.0']\n")
    )
    host = inv.hosts["r1"]
    assert not host.virtual
    assert [(d.bdf, d.model) for d in host.devices] == [("0000:3b:00.0", "generic")]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("all: [", "not valid YAML at line"),
        ("- a\n- b\n", "expected a mapping of groups"),
        ("all:\n  host: {}\n", "unknown key(s) host"),
        ("all:\n  hosts: {}\n", "defines no hosts"),
        ("all:\n  hosts:\n    r1: {}\n", "a real host needs 'vfio_devices'"),
        ("all:\n  hosts:\n    v: {vm_iommu: arm}\n", "vm_iommu: 'arm' is not one of"),
        (
            "all:\n  hosts:\n    v:\n      vm_devices:\n"
            "        [{model: edu, slot: 4}, {model: edu, slot: 4}]\n",
            "two devices share a slot",
        ),
        ("all:\n  hosts:\n    v:\n      vm_devices: [{model: gpu, slot: 4}]\n", "unknown model"),
        ("all:\n  hosts:\n    r1: {vfio_devices: [zz]}\n", "is not a PCI address"),
    ],
)
def test_bad_inventory_is_one_line_naming_file_and_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert problem in message


def test_missing_inventory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="no such file"):
        load_inventory(tmp_path / "missing.yml")


def test_normalize_bdf() -> None:
    assert normalize_bdf("00:04.0") == "0000:00:04.0"
    assert normalize_bdf("0000:3B:00.1") == "0000:3b:00.1"
    with pytest.raises(ValueError):
        normalize_bdf("00:04")
