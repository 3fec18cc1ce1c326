"""VFIO no-IOMMU mode against the real kernel (``vfio.enable_unsafe_noiommu_mode=1``, a
kernel with CONFIG_VFIO_NOIOMMU): vfio-pci gives a device in no IOMMU group a no-IOMMU group
(/dev/vfio/noiommu-N). The library refuses such a device under every backend unless no-IOMMU
mode is asked for by name, and opens it when it is. Nothing here maps DMA: with no IOMMU the
device would reach physical memory.

Where no test device is in a no-IOMMU group (every platform with an IOMMU, or with no-IOMMU
mode off) each test skips saying so.
"""

from __future__ import annotations

import errno
import os
from typing import Dict, Iterator, List

import pytest

from vfio_hil.core import (
    ContainerBackend,
    DmaBuffer,
    IommufdBackend,
    UnsafeModeError,
    open_iommu,
    sysfs,
)
from vfio_hil.core.group import group_node
from vfio_hil.core.iommufd import IOMMUFD_PATH

#: Why every test here skips on a platform without no-IOMMU groups.
NO_NOIOMMU_GROUP = (
    "no test device on vfio-pci is in a no-IOMMU group (only VFIO's no-IOMMU mode makes them)"
)


@pytest.fixture(scope="module")
def noiommu_bdf(vfio_devices: Dict[str, List[str]]) -> str:
    """A test device on vfio-pci whose group is a no-IOMMU group."""
    for model in sorted(vfio_devices):
        for bdf in vfio_devices[model]:
            if group_node(sysfs.iommu_group(bdf))[1]:
                return bdf
    pytest.skip(NO_NOIOMMU_GROUP)


@pytest.fixture(params=["auto", "type1v2", "type1", "type1v2 allow_noiommu"])
def container_refusing(
    request: pytest.FixtureRequest, backend_reasons: Dict[str, str]
) -> Iterator[ContainerBackend]:
    """A container backend that was not asked for no-IOMMU mode: the default one, each
    translating model by name, and one by name with ``allow_noiommu`` (which only lets
    ``"auto"`` turn to no-IOMMU mode)."""
    name, _, allow = request.param.partition(" ")
    if backend_reasons.get(name):
        pytest.skip(f"{name} backend unavailable: {backend_reasons[name]}")
    with open_iommu(name, allow_noiommu=bool(allow)) as backend:
        if not isinstance(backend, ContainerBackend):
            pytest.skip(f"{name} chose {backend.name}: the iommufd test covers it")
        yield backend


def _one_clear_message(exc: BaseException, bdf: str) -> str:
    message = str(exc)
    assert "\n" not in message and message.startswith(f"{bdf}: group ")
    assert "no-IOMMU group" in message and "vfio.enable_unsafe_noiommu_mode=1" in message
    return message


def test_a_backend_not_asked_for_it_refuses_naming_the_mode_and_how_to_ask(
    noiommu_bdf: str, container_refusing: ContainerBackend
) -> None:
    name = container_refusing.name
    with pytest.raises(UnsafeModeError) as info:
        container_refusing.open_device(noiommu_bdf)
    message = _one_clear_message(info.value, noiommu_bdf)
    assert f"the {name} backend refuses it" in message
    assert "open_iommu('noiommu') or open_iommu(allow_noiommu=True)" in message
    # Refused before the group joined the container: nothing is held, the model is unset.
    assert container_refusing.groups == {} and container_refusing.container.iommu_type is None


def test_iommufd_refuses_it_and_the_kernel_gives_it_no_cdev(noiommu_bdf: str) -> None:
    if not os.path.exists(IOMMUFD_PATH):
        pytest.skip(f"no {IOMMUFD_PATH}: the kernel has no iommufd to try")
    entries = os.listdir(os.path.join(sysfs.device_path(noiommu_bdf), "vfio-dev"))
    # The vfio device is registered (vfio-dev/vfioN) but has no dev_t, so no /dev node.
    assert entries and not any(
        os.path.exists(os.path.join(sysfs.device_path(noiommu_bdf), "vfio-dev", e, "dev"))
        for e in entries
    )
    with IommufdBackend() as backend, pytest.raises(UnsafeModeError) as info:
        backend.open_device(noiommu_bdf)
    message = _one_clear_message(info.value, noiommu_bdf)
    assert "no VFIO device cdev" in message and "open_iommu('noiommu')" in message


@pytest.mark.parametrize("how", ["backend='noiommu'", "allow_noiommu=True"])
def test_asked_by_name_it_opens_and_reads_config_space(noiommu_bdf: str, how: str) -> None:
    opened = open_iommu("noiommu") if how.startswith("backend") else open_iommu(allow_noiommu=True)
    with opened as backend:
        assert isinstance(backend, ContainerBackend)
        device = backend.open_device(noiommu_bdf)
        assert backend.name == "noiommu" and device.info().num_regions > 0
        ids = sysfs.pci_ids(noiommu_bdf)
        assert (device.config_read(0, 2), device.config_read(2, 2)) == (ids.vendor, ids.device)
        # The no-IOMMU container has no mapping ioctl at all (the kernel answers ENOTTY);
        # the buffer is never handed to the device.
        with DmaBuffer(4096) as buffer:
            assert backend.raw_map_dma(buffer.vaddr, 0x100000, 4096) == -errno.ENOTTY
        assert not backend._mappings
