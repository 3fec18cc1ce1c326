"""Device access through the VFIO device fd: regions (BARs, ROM, config space), mmap, the
MSI-X table, I/O port BARs, and config space virtualization.

Every function opens ``bdf`` in an IOMMU context of its own (``backend``: a type1v2
container by default, or iommufd through the device's cdev; :func:`.common.device_in`),
restores any config register it writes and closes everything before returning. Reads of
the hardware's own config space go through sysfs (``/sys/bus/pci/devices/<bdf>/config``),
which vfio-pci does not virtualize.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Dict, List

from ..core import pci, sysfs, uapi
from ..core.device import PCI_COMMAND, PCI_COMMAND_MASTER, Device
from ..core.region import RegionInfo
from .common import DEFAULT_BACKEND, Transcript, device_in, skipped

PAGE = mmap.PAGESIZE
IORESOURCE_IO = 0x100
PCI_BAR0 = 0x10
PCI_ROM_ADDRESS = 0x30
PCI_ROM_ADDRESS_MASK = 0xFFFFF800
PCI_CLASS_DISPLAY_VGA = 0x0300
MSIX_ENTRY_SIZE = 16
NUM_BARS = 6
# pci-testdev's header at the start of each BAR (QEMU docs/specs/pci-testdev.rst): the test
# to start (write), access width, offset and data that the test counts, the count, its name.
TESTDEV_TEST = 0
TESTDEV_WIDTH = 1
TESTDEV_OFFSET = 4
TESTDEV_DATA = 8
TESTDEV_COUNT = 12
TESTDEV_NAME = 16
TESTDEV_NAME_MAX = 64
TESTDEV_NO_EVENTFD = 0
TESTDEV_STOP = 0xFF


def region_dict(region: RegionInfo) -> Dict[str, Any]:
    """A region's info as plain data for the evidence."""
    return {
        "index": region.index,
        "flags": region.flags,
        "size": region.size,
        "offset": region.offset,
        "caps": [cap.id for cap in region.caps],
        "sparse_areas": None
        if region.sparse_areas is None
        else [[area.offset, area.size] for area in region.sparse_areas],
        "msix_mappable": region.msix_mappable,
    }


def sysfs_resources(bdf: str) -> List[Dict[str, int]]:
    """The device's resources as sysfs lists them (BAR0-5, then the ROM): size and flags."""
    with open(os.path.join(sysfs.device_path(bdf), "resource")) as fh:
        rows = [[int(v, 16) for v in line.split()] for line in fh]
    return [{"size": end - start + 1 if end else 0, "flags": flags} for start, end, flags in rows]


def _hw_config(bdf: str, offset: int, width: int) -> int:
    """Read the device's config space as the kernel sees it, bypassing VFIO."""
    with open(os.path.join(sysfs.device_path(bdf), "config"), "rb") as fh:
        fh.seek(offset)
        return int.from_bytes(fh.read(width), "little")


def _pread(device: Device, offset: int, width: int) -> int:
    """pread(2) on the device fd: the value read, or ``-errno``."""
    try:
        data = os.pread(device.fd, width, offset)
    except OSError as exc:
        return -exc.errno
    return int.from_bytes(data, "little")


def _pwrite(device: Device, offset: int, value: int, width: int) -> int:
    """pwrite(2) on the device fd: bytes written, or ``-errno``."""
    try:
        return os.pwrite(device.fd, value.to_bytes(width, "little"), offset)
    except OSError as exc:
        return -exc.errno


def _try_mmap(device: Device, offset: int, length: int = PAGE) -> int:
    """mmap(2) ``length`` bytes of the device fd at ``offset`` read-only, shared: 0 when it
    maps (and is unmapped again), else ``-errno``."""
    addr = uapi.libc.mmap(uapi.ffi.NULL, length, mmap.PROT_READ, mmap.MAP_SHARED, device.fd, offset)
    if int(uapi.ffi.cast("intptr_t", addr)) == -1:
        return -uapi.ffi.errno
    uapi.libc.munmap(addr, length)
    return 0


def region_survey(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Every standard region of ``bdf`` beside what sysfs says, plus the kernel's answers for
    the regions the device lacks: a read of each empty BAR/ROM region, the VGA region of a
    device that is no VGA controller, and the first index past ``num_regions``."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()
    with device_in(bdf, backend) as (_iommu, device):
        info = device.info()
        regions = [device.region_info(i) for i in range(uapi.VFIO_PCI_VGA_REGION_INDEX)]
        empty_reads = {}
        for region in regions[: uapi.VFIO_PCI_CONFIG_REGION_INDEX]:
            if region.size == 0:
                ret = min(_pread(device, region.offset, 4), 0)
                empty_reads[region.index] = log.add("pread", ret, region=region.index, width=4)
        refused = {}
        for index in (uapi.VFIO_PCI_VGA_REGION_INDEX, info.num_regions):
            refused[index] = log.add(
                "VFIO_DEVICE_GET_REGION_INFO", device.raw_region_info(index), index=index
            )
    return {
        "num_regions": info.num_regions,
        "regions": [region_dict(r) for r in regions],
        "sysfs": sysfs_resources(bdf),
        "sysfs_config_size": os.stat(os.path.join(sysfs.device_path(bdf), "config")).st_size,
        "is_vga": sysfs.pci_ids(bdf).class_code >> 8 == PCI_CLASS_DISPLAY_VGA,
        "empty_reads": empty_reads,
        "vga_region": refused[uapi.VFIO_PCI_VGA_REGION_INDEX],
        "past_end": refused[info.num_regions],
        "ioctls": log.entries,
    }


def mmap_survey(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Try mmap(2) on every BAR, the ROM and config space of ``bdf``: one page at the start
    of each (of its first sparse area if it has them), and one page just past the end of
    each region that offers mmap."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()
    attempts = []
    with device_in(bdf, backend) as (_iommu, device):
        for index in range(uapi.VFIO_PCI_CONFIG_REGION_INDEX + 1):
            region = device.region_info(index)
            start = region.sparse_areas[0].offset if region.sparse_areas else 0
            ret = log.add("mmap", _try_mmap(device, region.offset + start), region=index, at=start)
            entry = {"region": region_dict(region), "mmap": ret}
            if region.mmappable:
                end = -(-region.size // PAGE) * PAGE
                entry["mmap_past_end"] = log.add(
                    "mmap", _try_mmap(device, region.offset + end), region=index, at=end
                )
            attempts.append(entry)
    return {"attempts": attempts, "ioctls": log.entries}


def msix_table(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """How ``bdf``'s MSI-X table is exposed: the BAR holding it and its mmap capabilities,
    table entry 0 read through the fd (and through an mmap where the kernel allows one),
    and whether a write through the fd reaches the table."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()
    with device_in(bdf, backend) as (_iommu, device):
        cap = device.pci_config().find(pci.PCI_CAP_ID_MSIX)
        if cap is None:
            return skipped("capability", f"{bdf} has no MSI-X capability")
        bar, table_offset = cap.fields["table_bir"], cap.fields["table_offset"]
        region = device.region_info(bar)
        entry0 = region.offset + table_offset
        result: Dict[str, Any] = {
            "bar": bar,
            "table_offset": table_offset,
            "table_size": cap.fields["table_size"] * MSIX_ENTRY_SIZE,
            "region": region_dict(region),
            "msix_mappable": region.msix_mappable,
            "fd_reads": [_pread(device, entry0 + 4 * i, 4) for i in range(4)],
        }
        page = table_offset // PAGE * PAGE
        result["mmap_table_page"] = log.add(
            "mmap", _try_mmap(device, region.offset + page), region=bar, at=page
        )
        if region.msix_mappable and result["mmap_table_page"] == "0":
            result.update(_msix_write_through_fd(device, region, table_offset, log))
    return {**result, "ioctls": log.entries}


def _msix_write_through_fd(
    device: Device, region: RegionInfo, table_offset: int, log: Transcript
) -> Dict[str, Any]:
    """Write entry 0's message data through the fd and watch the real table through an
    mmap; put the old value back through the mmap if the write got through."""
    data_at = table_offset + 8
    with device.map_bar(region.index) as mapped:
        before = mapped.read32(data_at)
        probe = before ^ 0x5A5A5A5A
        ret = log.add(
            "pwrite", _pwrite(device, region.offset + data_at, probe, 4), at=data_at, value=probe
        )
        after = mapped.read32(data_at)
        if after != before:
            mapped.write32(data_at, before)
    return {"hw_data_before": before, "hw_data_after": after, "fd_write": ret}


def testdev_io_port(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Drive pci-testdev's I/O port BAR through pread/pwrite on the device fd: select the
    port I/O test without eventfd, read its header, write the matching byte at the test
    offset (the device counts it), a non-matching byte (ignored), and the matching one
    again; then stop the test."""
    bdf = sysfs.normalize_bdf(bdf)
    resources = sysfs_resources(bdf)[:NUM_BARS]
    io_bars = [i for i, r in enumerate(resources) if r["flags"] & IORESOURCE_IO]
    if not io_bars:
        return skipped("capability", f"{bdf} has no I/O port BAR")
    index = io_bars[0]
    with device_in(bdf, backend) as (_iommu, device), device.map_bar(index) as bar:
        bar.write8(TESTDEV_TEST, TESTDEV_NO_EVENTFD)
        width = bar.read8(TESTDEV_WIDTH)
        offset = bar.read32(TESTDEV_OFFSET)
        data = bar.read8(TESTDEV_DATA)
        name = bytearray()
        for i in range(TESTDEV_NAME_MAX):
            char = bar.read8(TESTDEV_NAME + i)
            if not char:
                break
            name.append(char)
        counts = [bar.read32(TESTDEV_COUNT)]
        for value in (data, data ^ 0xFF, data):
            bar.write8(offset, value)
            counts.append(bar.read32(TESTDEV_COUNT))
        bar.write8(TESTDEV_TEST, TESTDEV_STOP)
        return {
            "bar": index,
            "region": region_dict(bar.region),
            "mmapped": bar.mmapped,
            "name": name.decode("ascii", "replace"),
            "width": width,
            "test_offset": offset,
            "data": data,
            "counts": counts,
        }


def _sized(device: Device, reg: int, probe: int) -> Dict[str, int]:
    """Write ``probe`` to config dword ``reg``, read it back, restore the original."""
    original = device.config_read(reg, 4)
    try:
        device.config_write(reg, probe, 4)
        sized = device.config_read(reg, 4)
    finally:
        device.config_write(reg, original, 4)
    return {"original": original, "sized": sized, "restored": device.config_read(reg, 4)}


def _bar_size(kind: str, low: int, high: int = 0) -> int:
    """The size a BAR's read-back after writing all ones encodes (0: not implemented)."""
    if kind == "io":
        mask = low & 0xFFFC  # 16-bit decoders may hardwire bits 31:16 to zero
        return (~mask & 0xFFFF) + 1 if mask else 0
    mask = (high << 32 | (low & ~0xF)) if kind == "mem64" else low & 0xFFFFFFF0
    bits = 64 if kind == "mem64" else 32
    return (~mask & ((1 << bits) - 1)) + 1 if mask else 0


def bar_sizing(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Size every BAR and the ROM BAR the way an OS does, through the VFIO config region:
    write all ones, read the mask back, restore the original value."""
    bdf = sysfs.normalize_bdf(bdf)
    resources = sysfs_resources(bdf)
    bars = []
    with device_in(bdf, backend) as (_iommu, device):
        index = 0
        while index < NUM_BARS:
            reg = PCI_BAR0 + 4 * index
            low = _sized(device, reg, 0xFFFFFFFF)
            kind = "io" if low["original"] & 1 else "mem32"
            entry: Dict[str, Any] = {"index": index, "low": low}
            if kind == "mem32" and (low["original"] >> 1) & 3 == 2 and index + 1 < NUM_BARS:
                kind = "mem64"
                entry["high"] = _sized(device, reg + 4, 0xFFFFFFFF)
            high = entry["high"]["sized"] if "high" in entry else 0
            entry.update(
                kind=kind,
                size=_bar_size(kind, low["sized"], high),
                sysfs_size=resources[index]["size"],
            )
            bars.append(entry)
            index += 2 if kind == "mem64" else 1
        rom = _sized(device, PCI_ROM_ADDRESS, PCI_ROM_ADDRESS_MASK)
    mask = rom["sized"] & PCI_ROM_ADDRESS_MASK
    return {
        "bars": bars,
        "rom": {
            **rom,
            "size": (~mask & 0xFFFFFFFF) + 1 if mask else 0,
            "sysfs_size": resources[NUM_BARS]["size"],
        },
    }


#: Read-only header dwords (PCI Local Bus spec 6.2): vendor/device ID, revision/class code.
READ_ONLY_DWORDS = {0x00: "vendor and device ID", 0x08: "revision ID and class code"}


def readonly_fields(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Write the inverse of each read-only header dword through the config region; read it
    back through VFIO and from the hardware."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()
    fields = []
    with device_in(bdf, backend) as (_iommu, device):
        config = device.region_info(uapi.VFIO_PCI_CONFIG_REGION_INDEX).offset
        for reg, name in READ_ONLY_DWORDS.items():
            before = device.config_read(reg, 4)
            hw_before = _hw_config(bdf, reg, 4)
            probe = ~before & 0xFFFFFFFF
            try:
                ret = log.add(
                    "pwrite", _pwrite(device, config + reg, probe, 4), at=reg, value=probe
                )
                after, hw_after = device.config_read(reg, 4), _hw_config(bdf, reg, 4)
            finally:
                # Harmless where the field is read-only, a repair where it was not.
                _pwrite(device, config + reg, before, 4)
            fields.append(
                {
                    "offset": reg,
                    "name": name,
                    "before": before,
                    "written": probe,
                    "write_result": ret,
                    "after": after,
                    "hw_before": hw_before,
                    "hw_after": hw_after,
                }
            )
    return {"fields": fields, "ioctls": log.entries}


def bus_master_toggle(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Clear, then set Bus Master Enable through the config region, reading the command
    register back through VFIO and from the hardware each time; restore it after."""
    bdf = sysfs.normalize_bdf(bdf)
    steps = []
    with device_in(bdf, backend) as (_iommu, device):
        original = device.config_read(PCI_COMMAND, 2)
        try:
            for want in (False, True):
                value = original | PCI_COMMAND_MASTER if want else original & ~PCI_COMMAND_MASTER
                device.config_write(PCI_COMMAND, value, 2)
                steps.append(
                    {
                        "set_master": want,
                        "vfio": device.config_read(PCI_COMMAND, 2),
                        "hw": _hw_config(bdf, PCI_COMMAND, 2),
                    }
                )
        finally:
            device.config_write(PCI_COMMAND, original, 2)
        restored = device.config_read(PCI_COMMAND, 2)
    return {"original": original, "steps": steps, "restored": restored}


def rom_region(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """The ROM region of ``bdf``: its info, the first two bytes read through it, and what a
    write and an mmap of it get."""
    bdf = sysfs.normalize_bdf(bdf)
    log = Transcript()
    with device_in(bdf, backend) as (_iommu, device):
        rom = device.region_info(uapi.VFIO_PCI_ROM_REGION_INDEX)
        result: Dict[str, Any] = {
            "region": region_dict(rom),
            "sysfs_size": sysfs_resources(bdf)[NUM_BARS]["size"],
        }
        if rom.size:
            result["signature"] = _pread(device, rom.offset, 2)
            result["write"] = log.add(
                "pwrite", _pwrite(device, rom.offset, 0, 2), region="ROM", width=2
            )
            result["mmap"] = log.add("mmap", _try_mmap(device, rom.offset), region="ROM")
    return {**result, "ioctls": log.entries}
