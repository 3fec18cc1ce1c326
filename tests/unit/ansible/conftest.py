"""Fixtures for the Ansible modules: loading them by path, and fake sysfs trees.

The modules live in an Ansible library directory, not a package, so they are
loaded from their files.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
from ansible_fake_sysfs import FakeSysfs, acpi_table

LIBRARY = Path(__file__).resolve().parents[3] / "lib" / "vfio_hil" / "lab" / "ansible" / "library"


def load_module(name: str) -> ModuleType:
    """Import one module of the Ansible library directory by its file path."""
    spec = importlib.util.spec_from_file_location(name, LIBRARY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def facts_mod() -> ModuleType:
    """The vfio_hil_facts module."""
    return load_module("vfio_hil_facts")


@pytest.fixture(scope="session")
def deploy_mod() -> ModuleType:
    """The vfio_hil_deploy module."""
    return load_module("vfio_hil_deploy")


@pytest.fixture(scope="session")
def bind_mod() -> ModuleType:
    """The vfio_pci_bind module."""
    return load_module("vfio_pci_bind")


# Two CPUs, as /proc/cpuinfo of a q35 guest under TCG shows them (abridged).
CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: QEMU Virtual CPU version 2.5+
flags\t\t: fpu de pse

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: QEMU Virtual CPU version 2.5+
"""

# The DMAR table QEMU's intel-iommu publishes: host address width 39 bits, interrupt remapping,
# then one DRHD (INCLUDE_PCI_ALL) with its registers at 0xfed90000.
QEMU_DMAR = acpi_table(
    "DMAR", struct.pack("<BB10x", 38, 1) + struct.pack("<HHBBHQ", 0, 16, 1, 0, 0, 0xFED90000)
)


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> FakeSysfs:
    """An empty fake sysfs tree."""
    return FakeSysfs(tmp_path / "root")


@pytest.fixture
def vm_sysfs(fake_sysfs: FakeSysfs) -> FakeSysfs:
    """A fake tree shaped like the prototype DUT VM (emulated Intel IOMMU)."""
    fake = fake_sysfs
    (fake.root / "sys/class/iommu/dmar0").mkdir(parents=True)
    fake.add_device("0000:00:00.0", vendor="0x8086", device="0x29c0", pci_class="0x060000", group=0)
    fake.add_device("0000:00:04.0", group=3)
    fake.add_device("0000:00:05.0", group=4)
    fake.add_device(
        "0000:00:06.0",
        vendor="0x1b36",
        device="0x0010",
        pci_class="0x010802",
        revision="0x02",
        group=5,
        driver="nvme",
    )
    fake.add_device(
        "0000:00:08.0",
        vendor="0x1b36",
        device="0x000c",
        pci_class="0x060400",
        group=7,
        driver="pcieport",
    )
    fake.add_device("0000:01:00.0", group=9)
    fake.add_driver("vfio-pci")
    for module, params in {
        "vfio": {"enable_unsafe_noiommu_mode": "N"},
        "vfio_iommu_type1": {"allow_unsafe_interrupts": "N", "dma_entry_limit": "65535"},
        "vfio_pci": {"disable_idle_d3": "N"},
    }.items():
        base = fake.root / "sys/module" / module / "parameters"
        base.mkdir(parents=True)
        for name, value in params.items():
            (base / name).write_text(value + "\n")
    (fake.root / "dev/vfio").mkdir(parents=True)
    (fake.root / "dev/vfio/vfio").write_text("")
    (fake.root / "proc/sys/kernel").mkdir(parents=True)
    (fake.root / "proc/sys/kernel/osrelease").write_text("6.1.0-56-amd64\n")
    (fake.root / "proc/cmdline").write_text("console=ttyS0 intel_iommu=on\n")
    (fake.root / "proc/cpuinfo").write_text(CPUINFO)
    dmi = fake.root / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "bios_vendor").write_text("SeaBIOS\n")
    (dmi / "bios_version").write_text("1.16.2-debian-1.16.2-1\n")
    (dmi / "bios_date").write_text("04/01/2014\n")
    fake.add_acpi_table("APIC", acpi_table("APIC", bytes(8)))
    fake.add_acpi_table("DMAR", QEMU_DMAR)
    (fake.root / "proc/interrupts").write_text(
        "           CPU0\n"
        "  0:        108  IR-IO-APIC   2-edge      timer\n"
        " 25:          0  IR-PCI-MSI 131072-edge      PCIe PME, aerdrv\n"
    )
    return fake
