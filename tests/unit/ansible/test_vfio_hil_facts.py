"""Unit tests of the vfio_hil_facts Ansible module's plain functions."""

from __future__ import annotations

import hashlib
import socket
from types import ModuleType

import pytest
from ansible_fake_sysfs import FakeSysfs

INTEL_DMESG = """\
[    0.092225] DMAR: IOMMU enabled
[    0.255968] DMAR-IR: IOAPIC id 0 under DRHD base  0xfed90000 IOMMU 0
[    0.263853] DMAR-IR: Enabled IRQ remapping in xapic mode
[    1.081403] iommu: Default domain type: Translated
"""

AMD_DMESG = """\
[    1.100000] pci 0000:00:00.2: AMD-Vi: Found IOMMU cap 0x40
[    1.200000] AMD-Vi: Interrupt remapping enabled
"""

NEGATIVE_DMESG = """\
[    0.025213] [Firmware Bug]: ioapic 2 has no mapping iommu, interrupt remapping will be disabled
[    0.025214] Not enable interrupt remapping
[    0.025215] Failed to enable irq remapping.  You are vulnerable to irq-injection attacks.
[    0.025216] DMAR-IR: IOAPIC id 2 under DRHD base  0xfed91000 IOMMU 1
[   12.000000] vfio_iommu_type1_attach_group: No interrupt remapping support.
"""

REMAPPED_INTERRUPTS = """\
           CPU0       CPU1
  0:        108          0  IR-IO-APIC    2-edge      timer
  1:          9          0  IR-IO-APIC    1-edge      i8042
 25:          0          0  IR-PCI-MSI 131072-edge      PCIe PME, aerdrv
 27:       8050          0  IR-PCI-MSI 16385-edge      virtio0-requests
 30:          4          0  IR-PCI-MSIX-0000:00:06.0    0-edge      nvme0q0
"""

PLAIN_INTERRUPTS = """\
           CPU0
  0:         45   IO-APIC   2-edge      timer
 24:          0   PCI-MSI 65536-edge      virtio0-config
NMI:          0   Non-maskable interrupts
"""


@pytest.mark.parametrize(
    ("units", "kind"),
    [
        (["dmar0", "dmar1"], "intel"),
        (["ivhd0"], "amd"),
        (["virtio0"], "virtio"),
        (["smmu3.0x0000000009050000"], "other"),
        ([], "none"),
    ],
)
def test_iommu_kind_from_class_entries(facts_mod: ModuleType, units: list[str], kind: str) -> None:
    assert facts_mod.iommu_kind(units) == kind


def test_gather_platform_on_vm_like_tree(facts_mod: ModuleType, vm_sysfs: FakeSysfs) -> None:
    platform = facts_mod.gather_platform(str(vm_sysfs.root), INTEL_DMESG)

    assert platform["kernel_release"] == "6.1.0-56-amd64"
    assert platform["kernel_cmdline"] == "console=ttyS0 intel_iommu=on"
    assert platform["cpu_model"] == "QEMU Virtual CPU version 2.5+"
    assert platform["firmware"] == {
        "vendor": "SeaBIOS",
        "version": "1.16.2-debian-1.16.2-1",
        "date": "04/01/2014",
    }
    # The DMAR table only: APIC describes no IOMMU.
    dmar = (vm_sysfs.root / "sys/firmware/acpi/tables/DMAR").read_bytes()
    assert platform["acpi_iommu_tables"] == {
        "DMAR": {
            "sha256": hashlib.sha256(dmar).hexdigest(),
            "length": 64,
            "oem_id": "BOCHS",
            "oem_table_id": "BXPC",
            "oem_revision": 1,
        }
    }
    assert platform["iommu"] == {
        "kind": "intel",
        "units": ["dmar0"],
        "group_count": 6,
        "default_domain_types": {"DMA": 6},
    }
    assert platform["interrupt_remapping"]["enabled"] is True
    assert platform["iommu_groups"]["5"] == ["0000:00:06.0"]
    assert list(platform["iommu_groups"]) == ["0", "3", "4", "5", "7", "9"]
    assert platform["devices"]["0000:00:06.0"] == {
        "vendor": "0x1b36",
        "device": "0x0010",
        "subsystem_vendor": "0x1af4",
        "subsystem_device": "0x1100",
        "class": "0x010802",
        "revision": "0x02",
        "dsn": None,
        "driver": "nvme",
        "iommu_group": 5,
        "noiommu_group": False,
        "is_bridge": False,
    }
    assert platform["devices"]["0000:00:04.0"]["driver"] is None
    assert platform["devices"]["0000:00:08.0"]["is_bridge"] is True
    assert platform["devices"]["0000:00:00.0"]["is_bridge"] is False
    assert platform["vfio_params"] == {
        "vfio.enable_unsafe_noiommu_mode": "N",
        "vfio_iommu_type1.allow_unsafe_interrupts": "N",
        "vfio_iommu_type1.dma_entry_limit": "65535",
        "vfio_pci.disable_idle_d3": "N",
    }
    assert platform["vfio_loaded"] is True
    assert platform["dev_vfio"] == ["vfio"]


def test_gather_platform_without_iommu_or_vfio(
    facts_mod: ModuleType, fake_sysfs: FakeSysfs
) -> None:
    fake_sysfs.add_device("0000:00:04.0")

    platform = facts_mod.gather_platform(str(fake_sysfs.root))

    assert platform["iommu"]["kind"] == "none"
    assert platform["iommu"]["group_count"] == 0
    assert platform["devices"]["0000:00:04.0"]["iommu_group"] is None
    assert platform["devices"]["0000:00:04.0"]["noiommu_group"] is False
    assert platform["interrupt_remapping"] == {"enabled": False, "evidence": []}
    assert platform["vfio_params"] == {}
    assert platform["vfio_loaded"] is False
    assert platform["dev_vfio"] == []
    assert platform["kernel_release"] is None
    assert platform["cpu_model"] is None
    assert platform["firmware"] == {"vendor": None, "version": None, "date": None}
    # No /sys/firmware/acpi/tables at all (a device-tree board): unknown, not "no table".
    assert platform["acpi_iommu_tables"] is None


def test_default_domain_types_are_counted(facts_mod: ModuleType, vm_sysfs: FakeSysfs) -> None:
    """The host drivers' default domains, counted by type: what PLAT-008 reports (VFIO's own
    domain is judged on the DUT, PLAT-001)."""
    for type_file in (vm_sysfs.root / "sys/kernel/iommu_groups").glob("*/type"):
        type_file.write_text("identity\n")
    (vm_sysfs.root / "sys/kernel/iommu_groups/3/type").write_text("DMA-FQ\n")

    iommu = facts_mod.read_iommu(str(vm_sysfs.root))

    assert "translation" not in iommu
    assert iommu["default_domain_types"] == {"identity": 5, "DMA-FQ": 1}


@pytest.mark.parametrize(
    ("dmesg", "expected_line"),
    [
        (INTEL_DMESG, "[    0.263853] DMAR-IR: Enabled IRQ remapping in xapic mode"),
        (AMD_DMESG, "[    1.200000] AMD-Vi: Interrupt remapping enabled"),
    ],
)
def test_remapping_enabled_from_dmesg(
    facts_mod: ModuleType, dmesg: str, expected_line: str
) -> None:
    result = facts_mod.interrupt_remapping(dmesg, PLAIN_INTERRUPTS)

    assert result == {"enabled": True, "evidence": [expected_line]}


def test_remapping_enabled_from_interrupts_when_log_wrapped(facts_mod: ModuleType) -> None:
    result = facts_mod.interrupt_remapping("", REMAPPED_INTERRUPTS)

    assert result["enabled"] is True
    # One line per distinct remapped chip.
    assert result["evidence"] == [
        "/proc/interrupts: 0: 108 0 IR-IO-APIC 2-edge timer",
        "/proc/interrupts: 25: 0 0 IR-PCI-MSI 131072-edge PCIe PME, aerdrv",
        "/proc/interrupts: 30: 4 0 IR-PCI-MSIX-0000:00:06.0 0-edge nvme0q0",
    ]


def test_remapping_disabled_keeps_negative_evidence(facts_mod: ModuleType) -> None:
    result = facts_mod.interrupt_remapping(NEGATIVE_DMESG, PLAIN_INTERRUPTS)

    assert result["enabled"] is False
    assert result["evidence"] == [
        "[    0.025213] [Firmware Bug]: ioapic 2 has no mapping iommu, "
        "interrupt remapping will be disabled",
        "[    0.025214] Not enable interrupt remapping",
        "[    0.025215] Failed to enable irq remapping.  You are vulnerable to irq-injection "
        "attacks.",
        "[   12.000000] vfio_iommu_type1_attach_group: No interrupt remapping support.",
    ]


def test_remapping_disabled_with_no_evidence(facts_mod: ModuleType) -> None:
    assert facts_mod.interrupt_remapping("", PLAIN_INTERRUPTS) == {
        "enabled": False,
        "evidence": [],
    }


def test_remapping_evidence_is_capped(facts_mod: ModuleType) -> None:
    interrupts = "".join(
        f" {n}:  0  IR-PCI-MSIX-0000:00:{n:02x}.0  0-edge  dev{n}\n" for n in range(30)
    )

    result = facts_mod.interrupt_remapping(INTEL_DMESG, interrupts)

    assert len(result["evidence"]) == facts_mod.MAX_EVIDENCE
    assert result["evidence"][0].endswith("Enabled IRQ remapping in xapic mode")


def test_missing_device_message_names_it(facts_mod: ModuleType, vm_sysfs: FakeSysfs) -> None:
    devices = facts_mod.read_devices(str(vm_sysfs.root))

    missing = facts_mod.missing_devices(["00:04.0", "0000:00:09.0"], devices)

    assert missing == ["0000:00:09.0"]
    assert (
        facts_mod.missing_message(missing, socket.gethostname())
        == f"device 0000:00:09.0 is not present on {socket.gethostname()}"
    )


def test_missing_devices_message_names_every_one(facts_mod: ModuleType) -> None:
    missing = facts_mod.missing_devices(["00:0a.0", "0000:00:09.0"], {})

    assert facts_mod.missing_message(missing, "dut0") == (
        "devices 0000:00:09.0, 0000:00:0a.0 are not present on dut0"
    )


def test_bad_address_is_rejected(facts_mod: ModuleType) -> None:
    with pytest.raises(ValueError, match="'00:04' is not a PCI address"):
        facts_mod.normalize_bdf("00:04")


@pytest.mark.parametrize(
    ("cpuinfo", "model"),
    [
        ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)  Gold 6338 CPU @ 2.00GHz\n",
         "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"),
        # arm64: no model name line at all.
        ("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n", None),
        ("", None),
    ],
)  # fmt: skip
def test_cpu_model_is_the_first_model_name(
    facts_mod: ModuleType, cpuinfo: str, model: str | None
) -> None:
    assert facts_mod.cpu_model(cpuinfo) == model


def test_a_group_vfio_made_in_no_iommu_mode_is_told_apart(
    facts_mod: ModuleType, fake_sysfs: FakeSysfs
) -> None:
    fake_sysfs.add_device("0000:00:04.0", group=0)
    fake_sysfs.add_device("0000:00:06.0", group=1)
    (fake_sysfs.root / "sys/kernel/iommu_groups/0/name").write_text("vfio-noiommu\n")
    devices = facts_mod.gather_platform(str(fake_sysfs.root))["devices"]
    assert devices["0000:00:04.0"]["noiommu_group"] is True
    assert devices["0000:00:06.0"]["noiommu_group"] is False
