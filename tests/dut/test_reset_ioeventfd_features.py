"""Resets, ioeventfds and device features against real devices."""

from __future__ import annotations

import errno
import os
import time
from typing import Callable

import pytest

from vfio_hil.core import ContainerBackend, EventFd, IommuBackend, VfioError, sysfs, uapi
from vfio_hil.core.drivers.edu import EDU_ID, REG_LIVENESS, Edu

#: How long the kernel may take to perform an ioeventfd write (it is asynchronous).
IOEVENTFD_S = 2.0


def _poll(read: Callable[[], int], expected: int, timeout_s: float = IOEVENTFD_S) -> int:
    deadline = time.monotonic() + timeout_s
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def test_function_reset(iommu: IommuBackend, nvme_bdf: str, edu_bdf: str) -> None:
    nvme = iommu.open_device(nvme_bdf)
    assert nvme.info().resettable
    nvme.reset()
    assert nvme.config_read(0, 2) == 0x1B36
    edu = iommu.open_device(edu_bdf)
    # An edu on the root bus has no reset method (no FLR, no PM, no bridge above it).
    assert not edu.info().resettable
    assert edu.raw_reset() == -errno.EINVAL
    with pytest.raises(VfioError) as info:
        edu.reset()
    assert (info.value.ioctl, info.value.target) == ("VFIO_DEVICE_RESET", f"device {edu_bdf}")


def test_hot_reset_with_group_fds(legacy: ContainerBackend, bridged_edu_bdf: str) -> None:
    device = legacy.open_device(bridged_edu_bdf)
    info = device.hot_reset_info()
    assert device.raw_hot_reset_info(0) == -errno.ENOSPC
    assert device.raw_hot_reset_info(len(info.devices)) == 0
    groups = [legacy.groups[d.group_id] for d in info.devices]
    with Edu(device) as edu:
        edu.liveness(0)
        device.hot_reset(groups)
        assert edu.id() == EDU_ID
    assert device.raw_hot_reset([]) == -errno.EINVAL  # legacy mode needs the group fds
    assert device.raw_hot_reset([legacy.container.fd]) == -errno.EINVAL
    assert device.raw_hot_reset([g.fd for g in groups]) == 0


def test_mmio_ioeventfd(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    with Edu(device) as edu, device.ioeventfd(0, REG_LIVENESS, 4, 0x12345678) as ioeventfd:
        edu.liveness(0)
        ioeventfd.signal()
        assert _poll(lambda: edu.bar.read32(REG_LIVENESS), 0xEDCBA987) == 0xEDCBA987
    # Removed on close: removing it again finds nothing.
    flags = uapi.VFIO_DEVICE_IOEVENTFD_32
    assert device.raw_ioeventfd(REG_LIVENESS, 0x12345678, flags, -1) == -errno.ENODEV


def test_pio_ioeventfd(iommu: IommuBackend, testdev_bdf: str) -> None:
    device = iommu.open_device(testdev_bdf)
    with device.map_bar(1) as pio:
        pio.write8(0, 0)  # select test 0 (no-eventfd) of the I/O port BAR
        target, data = pio.read32(4), pio.read8(8)
        with device.ioeventfd(1, target, 1, data) as ioeventfd:
            ioeventfd.signal()
            assert _poll(lambda: pio.read32(12), 1) == 1
            ioeventfd.signal()
            assert _poll(lambda: pio.read32(12), 2) == 2


def test_ioeventfd_errnos(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    config = device.region_info(uapi.VFIO_PCI_CONFIG_REGION_INDEX).offset
    with EventFd() as eventfd:
        flags = uapi.VFIO_DEVICE_IOEVENTFD_32
        assert device.raw_ioeventfd(config, 0, flags, eventfd.fd) == -errno.EINVAL  # not a BAR
        assert device.raw_ioeventfd(REG_LIVENESS, 0, 0, eventfd.fd) == -errno.EINVAL  # width
        assert device.raw_ioeventfd(REG_LIVENESS, 0, 3, eventfd.fd) == -errno.EINVAL
        assert device.raw_ioeventfd(1 << 20, 0, flags, eventfd.fd) == -errno.EINVAL  # past BAR0
        with pytest.raises(ValueError):
            device.set_ioeventfd(0, REG_LIVENESS, 3, 0, eventfd.fd)


def test_feature_probes(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    lpe = uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
    if device.raw_feature(lpe | uapi.VFIO_DEVICE_FEATURE_PROBE) == -errno.ENOTTY:
        pytest.skip("this kernel has no low power device features (Linux 6.0+)")
    assert device.probe_feature(lpe, set=True)
    assert not device.probe_feature(lpe, get=True)  # entry is SET-only
    assert device.probe_feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, set=True)
    # vfio-pci without a variant driver has no migration support.
    assert device.migration_flags() is None
    migration = uapi.VFIO_DEVICE_FEATURE_MIGRATION | uapi.VFIO_DEVICE_FEATURE_PROBE
    assert device.raw_feature(migration) == -errno.ENOTTY
    # A VF token can only be set on an SR-IOV physical function.
    assert not device.probe_feature(uapi.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, set=True)
    # SET without its payload is refused.
    assert device.raw_feature(0x1234 | uapi.VFIO_DEVICE_FEATURE_PROBE) == -errno.ENOTTY
    assert device.raw_feature(lpe) == -errno.EINVAL  # neither GET, SET nor PROBE


def _suspended(bdf: str, timeout_s: float = 10.0) -> bool:
    """Wait until runtime PM has suspended ``bdf``: low power entry only lets it suspend, which
    the kernel does asynchronously (an idle request on the PM workqueue)."""
    status = os.path.join(sysfs.device_path(bdf), "power", "runtime_status")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(status) as fh:
            if fh.read().strip() == "suspended":
                return True
        time.sleep(0.05)
    return False


def test_low_power_entry_and_exit(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    if not device.probe_feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, set=True):
        pytest.skip("this kernel has no low power device features (Linux 6.0+)")
    device.low_power_entry()
    # Config space accesses wake the device up as needed.
    assert device.config_read(0, 2) == 0x1234
    device.low_power_exit()
    with EventFd() as wakeup:
        device.low_power_entry(wakeup)
        # The wakeup is signalled only when a suspended device is woken: read once it is.
        assert _suspended(edu_bdf), f"{edu_bdf} did not runtime-suspend after low power entry"
        assert device.config_read(2, 2) == 0x11E8
        assert wakeup.read_count(2.0) == 1
        device.low_power_exit()
    with Edu(device) as edu:
        assert edu.id() == EDU_ID
