"""REG: device access through the VFIO device fd — region sizes and flags, mmap, the MSI-X
table, I/O port BARs, the ROM, and config space virtualization (BAR sizing, read-only
fields, the command register)."""

from __future__ import annotations

from typing import Any

from vfio_hil.lab.session import DeviceLease
from vfio_hil_pytest import CDEV_AND_CONTAINER, check, skip

VFIO_H = "include/uapi/linux/vfio.h"
PCI_SPEC = "PCI Local Bus spec 3.0"
REGION_INFO = f"{VFIO_H} VFIO_DEVICE_GET_REGION_INFO"
BAR_NAMES = {0: "BAR0", 1: "BAR1", 2: "BAR2", 3: "BAR3", 4: "BAR4", 5: "BAR5", 6: "ROM"}
FLAG_READ, FLAG_WRITE, FLAG_MMAP = 1, 2, 4
PCI_COMMAND_MASTER = 0x4
ROM_SIGNATURE = 0xAA55


@check(
    "REG-001",
    "Every BAR region, the ROM region and the config region have the size sysfs reports",
    level="MUST",
    spec=f"{REGION_INFO}; Documentation/ABI/testing/sysfs-bus-pci (resource, config)",
    backends=CDEV_AND_CONTAINER,
)
def test_region_sizes(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Userspace drivers size their mappings and bounds checks by VFIO_DEVICE_GET_REGION_INFO.
    Each BAR region must be exactly as large as the resource the PCI core assigned (sysfs
    ``resource``), the ROM region as large as the ROM BAR when VFIO offers one (it offers
    none for a ROM without a valid image), and the config region as large as the device's
    config space (256 bytes, or 4096 for PCIe); a larger region would reach past the device,
    a smaller one hide registers."""
    r = dut_device.call("regions.region_survey", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("regions", r)
    compared = r["regions"][:6] + [rom for rom in r["regions"][6:7] if rom["size"]]
    wrong = [
        f"{BAR_NAMES[region['index']]} {region['size']:#x} "
        f"(sysfs {r['sysfs'][region['index']]['size']:#x})"
        for region in compared
        if region["size"] != r["sysfs"][region["index"]]["size"]
    ]
    config = r["regions"][7]
    if config["size"] != r["sysfs_config_size"]:
        wrong.append(f"config {config['size']:#x} (sysfs {r['sysfs_config_size']:#x})")
    assert not wrong, f"{dut_device.bdf} region sizes differ from sysfs: " + ", ".join(wrong)


@check(
    "REG-002",
    "Regions the device lacks have size 0 and no access flags, and refuse reads (EINVAL)",
    level="MUST",
    spec=f"{REGION_INFO}; drivers/vfio/pci/vfio_pci_rdwr.c vfio_pci_bar_rw",
    backends=CDEV_AND_CONTAINER,
)
def test_absent_regions(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Region indexes are fixed for vfio-pci, so a device without BAR3 still has region 3:
    it must say size 0 with no READ/WRITE/MMAP flag, and a read of it must fail with EINVAL
    rather than reach some other device's address. The same holds for an absent ROM. The
    VGA region of a device that is not a VGA controller, and the first index past
    num_regions, must be refused outright with EINVAL."""
    r = dut_device.call("regions.region_survey", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("regions", r)
    absent = [reg for reg in r["regions"][:7] if r["sysfs"][reg["index"]]["size"] == 0]
    flagged = [
        f"{BAR_NAMES[reg['index']]} flags {reg['flags']:#x}" for reg in absent if reg["flags"]
    ]
    sized = [f"{BAR_NAMES[reg['index']]} size {reg['size']:#x}" for reg in absent if reg["size"]]
    assert not flagged + sized, f"{dut_device.bdf} reports absent regions as present: " + ", ".join(
        flagged + sized
    )
    read = {BAR_NAMES[int(i)]: ret for i, ret in r["empty_reads"].items() if ret != "-EINVAL"}
    assert not read, f"reads of absent regions of {dut_device.bdf} were not refused: {read}"
    if not r["is_vga"]:
        assert r["vga_region"] == "-EINVAL", (
            f"VGA region info of non-VGA {dut_device.bdf} got {r['vga_region']}, expected -EINVAL"
        )
    assert r["past_end"] == "-EINVAL", (
        f"region info for index {r['num_regions']} (past num_regions) of {dut_device.bdf} got "
        f"{r['past_end']}, expected -EINVAL"
    )


@check(
    "REG-003",
    "mmap works exactly where the MMAP flag says: never on config, ROM or unflagged regions",
    level="MUST",
    spec=f"{VFIO_H} VFIO_REGION_INFO_FLAG_MMAP; drivers/vfio/pci/vfio_pci_core.c mmap",
    backends=CDEV_AND_CONTAINER,
)
def test_mmap_only_where_flagged(
    dut_device: DeviceLease, iommu_backend: str, evidence: Any
) -> None:
    """A region that is not flagged MMAP must stay behind read/write, where vfio-pci can
    mediate every access (config space, the ROM, I/O port BARs, absent BARs): mmap of it must
    fail. A flagged region must map (at its first sparse area when it has them), and a page
    past its end must not."""
    r = dut_device.call("regions.mmap_survey", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("ioctls", r["ioctls"])
    wrong = []
    for attempt in r["attempts"]:
        region = attempt["region"]
        name = BAR_NAMES.get(region["index"], "config")
        if region["flags"] & FLAG_MMAP:
            if attempt["mmap"] != "0":
                wrong.append(f"{name} is flagged MMAP but mmap got {attempt['mmap']}")
            if attempt["mmap_past_end"] == "0":
                wrong.append(f"mmap of a page past the end of {name} succeeded")
        elif attempt["mmap"] == "0":
            wrong.append(f"{name} (flags {region['flags']:#x}, no MMAP) could be mmap'ed")
    assert not wrong, f"{dut_device.bdf}: " + "; ".join(wrong)


@check(
    "REG-004",
    "The MSI-X table is not mappable unless the kernel says so, and the fd never exposes it",
    level="MUST",
    spec=(
        f"{VFIO_H} VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_REGION_INFO_CAP_SPARSE_MMAP; "
        "drivers/vfio/pci/vfio_pci_rdwr.c (MSI-X table reads as -1, writes dropped)"
    ),
    needs=("msix",),
    backends=CDEV_AND_CONTAINER,
)
def test_msix_table_protected(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """The MSI-X table holds the addresses and data of the host's interrupt messages: the
    kernel programs it, userspace goes through VFIO_DEVICE_SET_IRQS. Through the device fd
    the table must read as all ones and ignore writes. Through mmap, the page holding it may
    be mapped only when the region advertises MSIX_MAPPABLE (the kernel vouches that
    interrupt remapping makes direct access harmless); otherwise the BAR must not be
    mappable there (no MMAP flag, or sparse areas that leave the table out)."""
    r = dut_device.call("regions.msix_table", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("msix", r)
    if "skip" in r:
        skip(r["skip_kind"], r["skip"])
    where = f"MSI-X table of {dut_device.bdf} (BAR{r['bar']} + {r['table_offset']:#x})"
    shown = [f"{v:#x}" for v in r["fd_reads"] if v != 0xFFFFFFFF]
    assert not shown, f"{where} reads through the fd as {', '.join(shown)}, not all ones"
    if r["msix_mappable"]:
        assert r["mmap_table_page"] == "0", (
            f"{where}: the region advertises MSIX_MAPPABLE but mmap of the table page got "
            f"{r['mmap_table_page']}"
        )
        assert r["hw_data_after"] == r["hw_data_before"], (
            f"a write through the fd reached {where}: message data "
            f"{r['hw_data_before']:#x} -> {r['hw_data_after']:#x}"
        )
    else:
        assert r["mmap_table_page"] != "0", (
            f"{where} could be mmap'ed though the region does not advertise MSIX_MAPPABLE"
        )


@check(
    "REG-005",
    "An I/O port BAR works through pread/pwrite on the device fd (pci-testdev port test)",
    level="MUST",
    spec=f"{VFIO_H} VFIO_REGION_INFO_FLAG_READ/WRITE; QEMU docs/specs/pci-testdev.rst",
    needs=("pio", "pci-testdev"),
    backends=CDEV_AND_CONTAINER,
)
def test_io_port_bar(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """I/O port BARs cannot be mmap'ed on x86, so VFIO must offer them through read/write on
    the device fd, with each access reaching the port at the width asked. The pci-testdev
    port test checks both directions: its header reads back its name and test parameters,
    and it counts a write only when the byte written matches its data, so one matching write
    must add one, a non-matching one nothing, and another matching one one more."""
    r = dut_device.call("regions.testdev_io_port", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("io port", r)
    if "skip" in r:
        skip(r["skip_kind"], r["skip"])
    region = r["region"]
    assert region["flags"] & (FLAG_READ | FLAG_WRITE) == FLAG_READ | FLAG_WRITE, (
        f"I/O BAR{r['bar']} of {dut_device.bdf} lacks READ/WRITE (flags {region['flags']:#x})"
    )
    assert r["name"] == "portio-no-eventfd", (
        f"pci-testdev port test header read through the fd gives name {r['name']!r}"
    )
    assert r["counts"] == [0, 1, 1, 2], (
        f"pci-testdev counted {r['counts']} for writes of {r['data']:#x}, "
        f"{r['data'] ^ 0xFF:#x}, {r['data']:#x} at port offset {r['test_offset']:#x} "
        "(expected [0, 1, 1, 2])"
    )


@check(
    "REG-006",
    "BAR sizing through the config region: all-ones reads back the size mask, then restores",
    level="MUST",
    spec=f"{PCI_SPEC} 6.2.5.1 (address maps); drivers/vfio/pci/vfio_pci_config.c BAR virt.",
    backends=CDEV_AND_CONTAINER,
)
def test_bar_sizing(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """vfio-pci virtualizes the BARs so that a guest OS can size them the standard way:
    write all ones, read back the mask, write the address back. The mask must encode the
    size of the real resource (sysfs) with the BAR's type bits unchanged, for every BAR and
    the ROM BAR (0 where there is none), and the original value must read back after the
    restore."""
    r = dut_device.call("regions.bar_sizing", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("bars", r)
    wrong = []
    for bar in r["bars"]:
        name = f"BAR{bar['index']} ({bar['kind']})"
        if bar["size"] != bar["sysfs_size"]:
            wrong.append(f"{name} sizes as {bar['size']:#x}, sysfs {bar['sysfs_size']:#x}")
        low = bar["low"]
        type_bits = 0x3 if bar["kind"] == "io" else 0xF
        if low["sized"] & type_bits != low["original"] & type_bits and bar["sysfs_size"]:
            wrong.append(f"{name} type bits changed: {low['original']:#x} -> {low['sized']:#x}")
        for half in ("low", "high"):
            if half in bar and bar[half]["restored"] != bar[half]["original"]:
                wrong.append(
                    f"{name} {half} dword not restored: {bar[half]['original']:#x} -> "
                    f"{bar[half]['restored']:#x}"
                )
    rom = r["rom"]
    if rom["size"] != rom["sysfs_size"]:
        wrong.append(f"ROM BAR sizes as {rom['size']:#x}, sysfs {rom['sysfs_size']:#x}")
    if rom["restored"] != rom["original"]:
        wrong.append(f"ROM BAR not restored: {rom['original']:#x} -> {rom['restored']:#x}")
    assert not wrong, f"{dut_device.bdf}: " + "; ".join(wrong)


@check(
    "REG-007",
    "Read-only config fields ignore writes (vendor/device ID, revision/class code)",
    level="MUST",
    spec=f"{PCI_SPEC} 6.2 (read-only header registers); drivers/vfio/pci/vfio_pci_config.c",
    backends=CDEV_AND_CONTAINER,
)
def test_readonly_config(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """Identity registers are read-only in the PCI spec; through VFIO a write to them must be
    absorbed without changing what userspace or the hardware sees, or a user could make the
    device pass for another (and the host's view of it would drift). The check writes the
    inverse of each dword and reads it back through VFIO and from the hardware."""
    r = dut_device.call("regions.readonly_fields", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("fields", r["fields"])
    evidence.add("ioctls", r["ioctls"])
    changed = [
        f"{f['name']} {f['before']:#010x} -> VFIO {f['after']:#010x} / hardware "
        f"{f['hw_after']:#010x} after writing {f['written']:#010x}"
        for f in r["fields"]
        if f["after"] != f["before"] or f["hw_after"] != f["hw_before"]
    ]
    assert not changed, f"{dut_device.bdf} read-only config fields changed: " + "; ".join(changed)


@check(
    "REG-008",
    "Bus Master Enable written through the config region reaches the device and toggles",
    level="MUST",
    spec=f"{PCI_SPEC} 6.2.2 (Command register); drivers/vfio/pci/vfio_pci_config.c",
    backends=CDEV_AND_CONTAINER,
)
def test_bus_master_toggle(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """A userspace driver must be able to stop and start its device's DMA with Bus Master
    Enable: the bit is not virtualized, so clearing and setting it through the config
    region must show in the hardware's command register each time, and the register must
    be restored after."""
    r = dut_device.call("regions.bus_master_toggle", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("command register", r)
    for step in r["steps"]:
        want = step["set_master"]
        for view in ("vfio", "hw"):
            assert bool(step[view] & PCI_COMMAND_MASTER) == want, (
                f"{dut_device.bdf}: Bus Master {'set' if want else 'cleared'} through VFIO, "
                f"but the {'VFIO' if view == 'vfio' else 'hardware'} command register reads "
                f"{step[view]:#06x}"
            )
    assert r["restored"] == r["original"], (
        f"{dut_device.bdf} command register not restored: {r['original']:#06x} -> "
        f"{r['restored']:#06x}"
    )


@check(
    "REG-009",
    "The ROM region is read-only: no write, no mmap, and it reads a ROM image (0xAA55)",
    level="MUST",
    spec=f"{VFIO_H} VFIO_PCI_ROM_REGION_INDEX; {PCI_SPEC} 6.3.1 (expansion ROM header)",
    backends=CDEV_AND_CONTAINER,
)
def test_rom_region(dut_device: DeviceLease, iommu_backend: str, evidence: Any) -> None:
    """VFIO exposes an option ROM read-only: the region must be READ only (no WRITE, no
    MMAP), writes and mmap must fail, and the image must start with the 0x55 0xAA signature
    (vfio-pci only reports a ROM it can read and validate). Devices without a ROM are
    covered by REG-002."""
    r = dut_device.call("regions.rom_region", bdf=dut_device.bdf, backend=iommu_backend)
    evidence.add("rom", r)
    region = r["region"]
    if region["size"] == 0:
        skip(
            "capability",
            f"{dut_device.bdf} has no readable expansion ROM (ROM BAR size in sysfs: "
            f"{r['sysfs_size']:#x})",
        )
    assert region["flags"] == FLAG_READ, (
        f"{dut_device.bdf} ROM region flags {region['flags']:#x}, expected READ only"
    )
    assert r["signature"] == ROM_SIGNATURE, (
        f"{dut_device.bdf} ROM starts with {r['signature']:#06x}, not the 0xAA55 signature"
    )
    assert r["write"].startswith("-") and r["mmap"] != "0", (
        f"{dut_device.bdf} ROM region accepted a write ({r['write']}) or mmap ({r['mmap']})"
    )
