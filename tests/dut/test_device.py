"""Device info, regions and config space against real devices, cross-checked with sysfs:
region sizes and kinds, capability chains (MSI-X mappable), mmap and pread/pwrite access of
every width (edu MMIO, pci-testdev MMIO and I/O port BARs), config space parsing."""

from __future__ import annotations

import errno
from typing import List, Tuple

import pytest

from vfio_hil.core import IommuBackend, pci, uapi
from vfio_hil.core.drivers.edu import EDU_ID, REG_DMA_SRC, REG_ID, REG_LIVENESS

IORESOURCE_IO = 0x100
#: pci-testdev: writing a test number at offset 0 selects that test; its header then reads
#: back as: test (u8), width (u8), pad, offset (u32), data (u8), pad, count (u32), name.
TESTDEV_NO_EVENTFD = 0
TESTDEV_COUNT = 12
TESTDEV_NAME = 16


def _sysfs_resources(bdf: str) -> List[Tuple[int, int]]:
    """(size, flags) of BAR0-5 and the ROM from sysfs."""
    with open(f"/sys/bus/pci/devices/{bdf}/resource") as f:
        rows = [[int(v, 16) for v in line.split()] for line in f.read().splitlines()[:7]]
    return [((end - start + 1) if end else 0, flags) for start, end, flags in rows]


def _sysfs_config(bdf: str) -> bytes:
    with open(f"/sys/bus/pci/devices/{bdf}/config", "rb") as f:
        return f.read()


@pytest.mark.parametrize("model", ["edu", "nvme", "testdev"])
def test_info_and_regions_match_sysfs(
    iommu: IommuBackend, request: pytest.FixtureRequest, model: str
) -> None:
    bdf = request.getfixturevalue(f"{model}_bdf")
    device = iommu.open_device(bdf)
    info = device.info()
    assert info.is_pci
    assert (info.num_regions, info.num_irqs) == (uapi.VFIO_PCI_NUM_REGIONS, uapi.VFIO_PCI_NUM_IRQS)
    assert info.resettable == (device.raw_reset() == 0)
    for index, (size, flags) in enumerate(_sysfs_resources(bdf)):
        region = device.region_info(index)
        assert region.index == index
        assert region.size == size, f"region {index}"
        if size and index < uapi.VFIO_PCI_ROM_REGION_INDEX:
            assert region.readable and region.writable
            # I/O port BARs cannot be mmap'ed; memory BARs can on x86.
            assert region.mmappable == (not flags & IORESOURCE_IO)
    config = device.region_info(uapi.VFIO_PCI_CONFIG_REGION_INDEX)
    assert config.size == len(_sysfs_config(bdf))
    assert config.readable and config.writable and not config.mmappable
    # Not a VGA device: the VGA region does not exist.
    assert device.raw_region_info(uapi.VFIO_PCI_VGA_REGION_INDEX) == -errno.EINVAL
    assert device.raw_region_info(0, argsz=8) == -errno.EINVAL
    assert device.raw_info() == 0 and device.raw_info(argsz=4) == -errno.EINVAL


def test_msix_bar_is_mappable_with_its_capability(iommu: IommuBackend, nvme_bdf: str) -> None:
    device = iommu.open_device(nvme_bdf)
    msix = device.pci_config().find(pci.PCI_CAP_ID_MSIX)
    assert msix is not None
    region = device.region_info(msix.fields["table_bir"])
    assert region.msix_mappable
    assert uapi.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE in [c.id for c in region.caps]
    with device.map_bar(region.index) as bar:
        assert bar.mapped_areas == region.mmap_areas
        # The MSI-X table sits in the mapping: its first entry's vector control reads as
        # masked (bit 0) or not, never as garbage.
        control = bar.read32(msix.fields["table_offset"] + 12)
        assert control & ~1 == 0


def test_edu_bar_through_mmap(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    with device.map_bar(0) as bar:
        assert bar.mmapped and bar.mapped_areas == [(0, bar.size)]
        assert bar.read32(REG_ID) == EDU_ID
        bar.write32(REG_LIVENESS, 0x0F0F0F0F)
        assert bar.read32(REG_LIVENESS) == 0xF0F0F0F0
        bar.write64(REG_DMA_SRC, 0x1234_5678_9ABC_D000)
        assert bar.read64(REG_DMA_SRC) == 0x1234_5678_9ABC_D000
        # The same registers through pread/pwrite on the device fd.
        assert bar.read_block(REG_ID, 4) == EDU_ID.to_bytes(4, "little")
        bar.write_block(REG_LIVENESS, (0x11111111).to_bytes(4, "little"))
        assert bar.read32(REG_LIVENESS) == 0xEEEEEEEE


@pytest.mark.parametrize(
    ("index", "kind", "offset_base"), [(0, "mmio", 2048), (1, "portio", 128)], ids=["mmio", "pio"]
)
def test_testdev_bar_access_of_every_width(
    iommu: IommuBackend, testdev_bdf: str, index: int, kind: str, offset_base: int
) -> None:
    device = iommu.open_device(testdev_bdf)
    with device.map_bar(index) as bar:
        assert bar.mmapped == (kind == "mmio")
        bar.write8(0, TESTDEV_NO_EVENTFD)
        name = f"{kind}-no-eventfd".encode()
        assert bar.read_block(TESTDEV_NAME, len(name)) == name
        assert bar.read8(TESTDEV_NAME) == name[0]
        assert bar.read16(TESTDEV_NAME) == int.from_bytes(name[:2], "little")
        assert bar.read32(TESTDEV_NAME) == int.from_bytes(name[:4], "little")
        assert bar.read64(TESTDEV_NAME) == int.from_bytes(name[:8], "little")
        test_number = (1 if kind == "portio" else 0) * 3 + TESTDEV_NO_EVENTFD
        target = bar.read32(4)
        assert target == offset_base + test_number
        data = bar.read8(8)
        assert bar.read32(TESTDEV_COUNT) == 0
        bar.write8(target, data)
        bar.write8(target, data ^ 0xFF)  # wrong data: not counted
        bar.write8(target, data)
        assert bar.read32(TESTDEV_COUNT) == 2


def test_config_space_matches_sysfs(iommu: IommuBackend, nvme_bdf: str, edu_bdf: str) -> None:
    for bdf in (nvme_bdf, edu_bdf):
        device = iommu.open_device(bdf)
        ours = device.pci_config()
        theirs = pci.parse_config(_sysfs_config(bdf))
        assert (ours.vendor_id, ours.device_id) == (theirs.vendor_id, theirs.device_id)
        assert ours.class_code == theirs.class_code
        assert [(c.id, c.offset) for c in ours.capabilities] == [
            (c.id, c.offset) for c in theirs.capabilities
        ]
        assert [(c.id, c.offset) for c in ours.extended_capabilities] == [
            (c.id, c.offset) for c in theirs.extended_capabilities
        ]
        ids = device.config_read(0, 4)
        assert ids == ours.vendor_id | ours.device_id << 16
        assert device.config_read(0, 2) | device.config_read(2, 2) << 16 == ids
        assert device.config_read(1, 1) == ours.vendor_id >> 8


def test_nvme_capabilities_decode(iommu: IommuBackend, nvme_bdf: str) -> None:
    device = iommu.open_device(nvme_bdf)
    config = device.pci_config()
    exp = config.find(pci.PCI_CAP_ID_EXP)
    msix = config.find(pci.PCI_CAP_ID_MSIX)
    pm = config.find(pci.PCI_CAP_ID_PM)
    assert exp is not None and msix is not None and pm is not None
    assert msix.fields["table_size"] == device.irq_info(uapi.VFIO_PCI_MSIX_IRQ_INDEX).count
    assert pci.PCIE_DEVICE_TYPES[exp.fields["device_type"]]
    assert pm.fields["power_state"] == 0  # in use: D0


def test_config_write_reaches_the_device(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    command = device.config_read(0x04, 2)
    device.config_write(0x04, command & ~0x4, 2)
    assert not device.config_read(0x04, 2) & 0x4
    assert not _sysfs_config(edu_bdf)[0x04] & 0x4
    device.enable_bus_master()
    assert device.config_read(0x04, 2) & 0x4
    assert _sysfs_config(edu_bdf)[0x04] & 0x4, "the host does not see Bus Master Enable"
