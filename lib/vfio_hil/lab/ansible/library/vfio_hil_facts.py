#!/usr/bin/python3
"""Ansible module: report a DUT's IOMMU / VFIO platform state (read-only).

The logic lives in plain functions taking a ``root`` path so the unit tests
can run them against a fake sysfs tree without Ansible.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
from typing import Any

DOCUMENTATION = r"""
module: vfio_hil_facts
short_description: Report IOMMU, interrupt remapping and VFIO state of a DUT
description:
  - Reads sysfs, procfs and the kernel log. Never changes anything.
  - Returns the result under the top-level key C(platform), not as ansible_facts.
options:
  devices:
    description:
      - PCI addresses (C(0000:00:04.0) or C(00:04.0)) that must be present.
      - The module fails, naming every missing one, when any is absent.
    type: list
    elements: str
    required: false
  python:
    description:
      - A Python interpreter of the DUT (the one the DUT agent runs on); the module
        reports under C(python_cffi) whether it imports cffi, and under C(fio) whether
        fio is installed.
    type: str
    required: false
"""

EXAMPLES = r"""
- name: platform facts
  vfio_hil_facts:
    devices: ["0000:00:04.0", "0000:00:06.0"]
"""

RETURN = r"""
platform:
  description: >-
    kernel_release, kernel_cmdline, cpu_model, firmware {vendor, version,
    date}, acpi_iommu_tables {DMAR / IVRS: {sha256, length, oem_id,
    oem_table_id, oem_revision}, null for a table that cannot be read; null
    without /sys/firmware/acpi/tables}, iommu {kind, units,
    group_count, default_domain_types}, interrupt_remapping {enabled,
    evidence}, iommu_groups, devices {vendor, device, subsystem_vendor,
    subsystem_device, class, revision, dsn, driver, iommu_group,
    noiommu_group, is_bridge},
    vfio_params, vfio_loaded, dev_vfio.
  returned: always
  type: dict
python_cffi:
  description: whether the interpreter named by C(python) imports cffi.
  returned: when python is given
  type: bool
fio:
  description: whether fio is on the DUT's PATH.
  returned: when python is given
  type: bool
"""

#: The name vfio gives the IOMMU group it makes for a device in no-IOMMU mode.
NOIOMMU_GROUP_NAME = "vfio-noiommu"
BDF_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<slot>[0-9a-fA-F]{2})\.(?P<func>[0-7])$"
)
VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci", "vfio_pci_core")
MAX_EVIDENCE = 10

# Kernel log lines that prove interrupt remapping was switched on
# (drivers/iommu/intel/irq_remapping.c, drivers/iommu/amd/init.c).
IR_POSITIVE_RE = re.compile(
    r"Enabled IRQ remapping in \w+ mode|Interrupt remapping enabled", re.IGNORECASE
)
# Lines explaining why it is off; kept as evidence, they never decide.
IR_MENTION_RE = re.compile(r"(?:irq|interrupt)[ -]remapping", re.IGNORECASE)
IR_NEGATIVE_RE = re.compile(
    r"\b(?:disabl\w*|fail\w*|not|no|doesn't|unsupported|erratum)\b", re.IGNORECASE
)
# /proc/interrupts chip names such as IR-PCI-MSI, IR-IO-APIC,
# IR-PCI-MSIX-0000:00:02.0: an "IR-" chip only exists while remapping is live.
IR_CHIP_RE = re.compile(r"(?<!\S)(IR-\S+)")

# The ACPI tables describing the IOMMU: DMAR (Intel VT-d), IVRS (AMD-Vi). Where the firmware
# has several of one signature, sysfs numbers them all (DMAR1, DMAR2; drivers/acpi/sysfs.c).
ACPI_IOMMU_TABLE_RE = re.compile(r"^(?:DMAR|IVRS)[0-9]*$")
# The standard ACPI table header (ACPI spec 5.2.6): signature, length, revision, checksum,
# OEM ID, OEM table ID, OEM revision, creator ID, creator revision.
ACPI_HEADER = struct.Struct("<4sIBB6s8sI4sI")

# PCI Express extended configuration space (PCIe base spec 7.6, 7.9.3): the extended
# capabilities start after the 256 bytes of conventional config space; each header dword holds
# the capability ID (bits 15:0), its version (19:16) and the next one's offset (31:20, whose
# two low bits software must mask).
PCI_CFG_SPACE_SIZE = 0x100
PCI_CFG_SPACE_EXP_SIZE = 0x1000
PCI_EXT_CAP_ID_DSN = 0x0003
# Device Serial Number capability: the header, then the serial's low and high dwords.
DSN_CAP = struct.Struct("<IQ")


def normalize_bdf(text: str) -> str:
    """Return the canonical ``dddd:bb:ss.f`` form of a PCI address.

    Raises ValueError for anything that is not a PCI address.
    """
    match = BDF_RE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a PCI address (expected 0000:00:04.0)")
    domain = match.group("domain") or "0000"
    return f"{domain}:{match['bus']}:{match['slot']}.{match['func']}".lower()


def read_text(path: str) -> str | None:
    """Return the stripped content of a file, or None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def link_name(path: str) -> str | None:
    """Return the last component of a symlink's target, or None if absent."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def list_dir(path: str) -> list[str]:
    """Return the sorted entries of a directory, or [] when it is absent."""
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def read_binary(path: str, limit: int = -1) -> bytes | None:
    """Return up to ``limit`` bytes of a file (all of it by default), or None if it cannot
    be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return None


def iommu_kind(units: list[str]) -> str:
    """Classify the IOMMU from the names of its /sys/class/iommu entries."""
    if not units:
        return "none"
    for prefix, kind in (("dmar", "intel"), ("ivhd", "amd"), ("virtio", "virtio")):
        if any(unit.startswith(prefix) for unit in units):
            return kind
    return "other"


def read_iommu_groups(root: str) -> dict[str, list[str]]:
    """Map each IOMMU group number (as a string) to its member devices."""
    base = os.path.join(root, "sys/kernel/iommu_groups")
    groups = [name for name in list_dir(base) if name.isdigit()]
    return {name: list_dir(os.path.join(base, name, "devices")) for name in sorted(groups, key=int)}


def read_iommu(root: str) -> dict[str, Any]:
    """Describe the IOMMU units and the default domain types the kernel gave host drivers
    (whether VFIO's own domains translate is judged on the DUT: PLAT-001)."""
    units = list_dir(os.path.join(root, "sys/class/iommu"))
    groups_dir = os.path.join(root, "sys/kernel/iommu_groups")
    groups = [name for name in list_dir(groups_dir) if name.isdigit()]
    domain_types: dict[str, int] = {}
    for name in groups:
        # Kernels before 5.11 have no "type" file.
        kind = read_text(os.path.join(groups_dir, name, "type")) or "unknown"
        domain_types[kind] = domain_types.get(kind, 0) + 1
    return {
        "kind": iommu_kind(units),
        "units": units,
        "group_count": len(groups),
        "default_domain_types": domain_types,
    }


def interrupt_remapping(dmesg_text: str, interrupts_text: str) -> dict[str, Any]:
    """Decide whether interrupt remapping is on from the kernel log and IRQ chips.

    The kernel log alone is not enough: on long-running hosts the ring buffer
    has usually wrapped past the boot messages, while /proc/interrupts always
    shows the live chips.
    """
    enabled = False
    evidence: list[str] = []
    for line in dmesg_text.splitlines():
        if IR_POSITIVE_RE.search(line):
            enabled = True
            evidence.append(line.strip())
        elif IR_MENTION_RE.search(line) and IR_NEGATIVE_RE.search(line):
            evidence.append(line.strip())
    seen_chips: set[str] = set()
    for line in interrupts_text.splitlines():
        chip_match = IR_CHIP_RE.search(line)
        if chip_match is None or chip_match.group(1) in seen_chips:
            continue
        seen_chips.add(chip_match.group(1))
        enabled = True
        evidence.append("/proc/interrupts: " + " ".join(line.split()))
    return {"enabled": enabled, "evidence": evidence[:MAX_EVIDENCE]}


def device_serial_number(config: bytes) -> str | None:
    """The PCIe Device Serial Number in a device's config space, as lspci prints it
    (``00-11-22-33-44-55-66-77``, most significant byte first); None when the device has
    none or ``config`` does not reach it (conventional PCI, or read without root: 256 or 64
    bytes). A malformed capability list (a next offset into conventional config space, past
    the end, or back to a capability already seen) ends the search."""
    offset = PCI_CFG_SPACE_SIZE
    seen: set[int] = set()
    # Each aligned offset is visited once at most, so even a looping list ends.
    while offset >= PCI_CFG_SPACE_SIZE and offset + 4 <= len(config) and offset not in seen:
        seen.add(offset)
        (header,) = struct.unpack_from("<I", config, offset)
        if header in (0, 0xFFFFFFFF):
            # No extended capabilities; all ones: the device did not answer.
            return None
        if header & 0xFFFF == PCI_EXT_CAP_ID_DSN:
            if offset + DSN_CAP.size > len(config):
                return None
            serial = DSN_CAP.unpack_from(config, offset)[1]
            return "-".join(f"{byte:02x}" for byte in serial.to_bytes(8, "big"))
        offset = (header >> 20) & 0xFFC
    return None


def read_devices(root: str) -> dict[str, dict[str, Any]]:
    """Describe every PCI device: what it says it is (vendor, device, subsystem vendor and
    device IDs, class code, revision, as sysfs shows the config space's registers, and its
    PCIe Device Serial Number from the extended config space), bound driver and IOMMU
    group, and whether that group is a no-IOMMU group (``noiommu_group``: vfio-pci made it in
    VFIO's no-IOMMU mode, named ``vfio-noiommu``; it isolates nothing)."""
    base = os.path.join(root, "sys/bus/pci/devices")
    devices: dict[str, dict[str, Any]] = {}
    for bdf in list_dir(base):
        path = os.path.join(base, bdf)
        pci_class = read_text(os.path.join(path, "class"))
        group = link_name(os.path.join(path, "iommu_group"))
        devices[bdf] = {
            "vendor": read_text(os.path.join(path, "vendor")),
            "device": read_text(os.path.join(path, "device")),
            "subsystem_vendor": read_text(os.path.join(path, "subsystem_vendor")),
            "subsystem_device": read_text(os.path.join(path, "subsystem_device")),
            "class": pci_class,
            "revision": read_text(os.path.join(path, "revision")),
            "dsn": device_serial_number(
                read_binary(os.path.join(path, "config"), PCI_CFG_SPACE_EXP_SIZE) or b""
            ),
            "driver": link_name(os.path.join(path, "driver")),
            "iommu_group": int(group) if group is not None and group.isdigit() else None,
            "noiommu_group": group is not None
            and read_text(os.path.join(root, "sys/kernel/iommu_groups", group, "name"))
            == NOIOMMU_GROUP_NAME,
            "is_bridge": (pci_class or "").lower().startswith("0x0604"),
        }
    return devices


def read_vfio_params(root: str) -> dict[str, str | None]:
    """Read every VFIO module parameter as ``module.param`` -> value.

    Write-only parameters read back as None.
    """
    params: dict[str, str | None] = {}
    for module in VFIO_MODULES:
        base = os.path.join(root, "sys/module", module, "parameters")
        for name in list_dir(base):
            params[f"{module}.{name}"] = read_text(os.path.join(base, name))
    return params


def cpu_model(cpuinfo_text: str) -> str | None:
    """The first ``model name`` of /proc/cpuinfo (x86), None where there is none (most Arm
    kernels print no model name)."""
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return " ".join(value.split()) or None
    return None


def read_firmware(root: str) -> dict[str, str | None]:
    """The BIOS / UEFI firmware as DMI reports it (/sys/class/dmi/id): vendor, version and
    release date; None for what the platform does not expose (no DMI on most Arm boards).
    A firmware update can change a platform's figures, so baselines are keyed by it."""
    base = os.path.join(root, "sys/class/dmi/id")
    return {
        "vendor": read_text(os.path.join(base, "bios_vendor")),
        "version": read_text(os.path.join(base, "bios_version")),
        "date": read_text(os.path.join(base, "bios_date")),
    }


def acpi_table_facts(data: bytes) -> dict[str, Any]:
    """What identifies one ACPI table: the SHA-256 (hex) and length of its bytes, and its
    header's OEM ID, OEM table ID and OEM revision (None when the table is shorter than the
    header)."""
    facts: dict[str, Any] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "length": len(data),
        "oem_id": None,
        "oem_table_id": None,
        "oem_revision": None,
    }
    if len(data) >= ACPI_HEADER.size:
        oem_id, oem_table_id, oem_revision = ACPI_HEADER.unpack_from(data)[4:7]
        facts.update(
            oem_id=oem_id.decode("ascii", "replace").rstrip(" \x00"),
            oem_table_id=oem_table_id.decode("ascii", "replace").rstrip(" \x00"),
            oem_revision=oem_revision,
        )
    return facts


def read_acpi_iommu_tables(root: str) -> dict[str, dict[str, Any] | None] | None:
    """The firmware's IOMMU description tables (DMAR, IVRS) as :func:`acpi_table_facts`
    describes them, by their sysfs name; a table that cannot be read (not root) is None, no
    such table gives {}. None when there is no /sys/firmware/acpi/tables (no ACPI, as on
    device-tree Arm boards)."""
    base = os.path.join(root, "sys/firmware/acpi/tables")
    if not os.path.isdir(base):
        return None
    tables: dict[str, dict[str, Any] | None] = {}
    for name in filter(ACPI_IOMMU_TABLE_RE.match, list_dir(base)):
        data = read_binary(os.path.join(base, name))
        tables[name] = None if data is None else acpi_table_facts(data)
    return tables


def gather_platform(root: str = "/", dmesg_text: str = "") -> dict[str, Any]:
    """Collect the whole ``platform`` result from a (possibly fake) root."""
    interrupts = read_text(os.path.join(root, "proc/interrupts")) or ""
    return {
        "kernel_release": read_text(os.path.join(root, "proc/sys/kernel/osrelease")),
        "kernel_cmdline": read_text(os.path.join(root, "proc/cmdline")),
        "cpu_model": cpu_model(read_text(os.path.join(root, "proc/cpuinfo")) or ""),
        "firmware": read_firmware(root),
        "acpi_iommu_tables": read_acpi_iommu_tables(root),
        "iommu": read_iommu(root),
        "interrupt_remapping": interrupt_remapping(dmesg_text, interrupts),
        "iommu_groups": read_iommu_groups(root),
        "devices": read_devices(root),
        "vfio_params": read_vfio_params(root),
        "vfio_loaded": os.path.isdir(os.path.join(root, "sys/module/vfio")),
        "dev_vfio": list_dir(os.path.join(root, "dev/vfio")),
    }


def missing_devices(requested: list[str], present: dict[str, Any]) -> list[str]:
    """Return the requested addresses (normalized) that are not present."""
    return sorted({normalize_bdf(bdf) for bdf in requested} - set(present))


def missing_message(missing: list[str], host: str) -> str:
    """Build the one-line failure message naming every missing device."""
    if len(missing) == 1:
        return f"device {missing[0]} is not present on {host}"
    return f"devices {', '.join(missing)} are not present on {host}"


def main() -> None:
    """Run as an Ansible module."""
    # Imported here so the unit tests can load this file without Ansible.
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "devices": {"type": "list", "elements": "str"},
            "python": {"type": "str"},
        },
        supports_check_mode=True,
    )
    dmesg_text = ""
    dmesg = module.get_bin_path("dmesg")
    if dmesg is None:
        module.warn("dmesg not found; interrupt remapping judged from /proc/interrupts only")
    else:
        rc, out, err = module.run_command([dmesg])
        if rc == 0:
            dmesg_text = out
        else:
            module.warn(f"dmesg failed (rc={rc}): {err.strip()}")
    platform = gather_platform("/", dmesg_text)
    try:
        missing = missing_devices(module.params["devices"] or [], platform["devices"])
    except ValueError as exc:
        module.fail_json(msg=str(exc), platform=platform)
    if missing:
        module.fail_json(msg=missing_message(missing, socket.gethostname()), platform=platform)
    extra = {}
    if module.params["python"]:
        # Asked here rather than in a task of its own: each task costs seconds on a slow DUT.
        rc, _, _ = module.run_command([module.params["python"], "-c", "import cffi"])
        extra["python_cffi"] = rc == 0
        # fio measures the device on the kernel's driver (PERF-003); found on PATH, not run.
        extra["fio"] = module.get_bin_path("fio") is not None
    module.exit_json(changed=False, platform=platform, **extra)


if __name__ == "__main__":
    main()
