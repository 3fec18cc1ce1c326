"""Interrupts against real devices: IRQ info of every index, and VFIO_DEVICE_SET_IRQS with
every data type (none, bool, eventfd) and action (mask, unmask, trigger) on INTx and MSI
(edu, which raises them for real), MSI-X and ERR (NVMe) and REQ. What the kernel does not
implement is asserted as its exact errno."""

from __future__ import annotations

import errno
from typing import Dict, Iterator, Tuple

import pytest

from vfio_hil.core import Device, EventFd, IommuBackend, pci, uapi
from vfio_hil.core.drivers.edu import Edu

INTX, MSI, MSIX, ERR, REQ = (
    uapi.VFIO_PCI_INTX_IRQ_INDEX,
    uapi.VFIO_PCI_MSI_IRQ_INDEX,
    uapi.VFIO_PCI_MSIX_IRQ_INDEX,
    uapi.VFIO_PCI_ERR_IRQ_INDEX,
    uapi.VFIO_PCI_REQ_IRQ_INDEX,
)
NONE, BOOL = uapi.VFIO_IRQ_SET_DATA_NONE, uapi.VFIO_IRQ_SET_DATA_BOOL
MASK, UNMASK, TRIGGER = (
    uapi.VFIO_IRQ_SET_ACTION_MASK,
    uapi.VFIO_IRQ_SET_ACTION_UNMASK,
    uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
)
BIT = 0x1000  # an edu interrupt status bit of our own
#: Long enough for a delivered interrupt to show up; short enough to wait for silence.
QUIET_S = 0.3


def _host_view(device: Device) -> pci.ConfigSpace:
    """The device's config space as the host kernel sees it: VFIO's own view virtualizes the
    MSI/MSI-X enable bits (they are the user's to emulate), sysfs shows the real ones."""
    with open(f"/sys/bus/pci/devices/{device.bdf}/config", "rb") as f:
        return pci.parse_config(f.read())


@pytest.fixture
def edu(iommu: IommuBackend, edu_bdf: str) -> Iterator[Edu]:
    with Edu(iommu.open_device(edu_bdf)) as edu:
        edu.ack_irq(0xFFFFFFFF)
        yield edu


def test_irq_info_of_every_index(
    iommu: IommuBackend, edu_bdf: str, nvme_bdf: str, testdev_bdf: str
) -> None:
    edu, nvme, testdev = (iommu.open_device(b) for b in (edu_bdf, nvme_bdf, testdev_bdf))
    for device in (edu, nvme, testdev):
        config = device.pci_config()
        intx = device.irq_info(INTX)
        assert intx.count == (1 if config.interrupt_pin else 0)
        assert intx.eventfd and intx.maskable and intx.automasked
        msi_cap = config.find(pci.PCI_CAP_ID_MSI)
        msix_cap = config.find(pci.PCI_CAP_ID_MSIX)
        msi, msix = device.irq_info(MSI), device.irq_info(MSIX)
        assert msi.count == (msi_cap.fields["multiple_message_capable"] if msi_cap else 0)
        assert msix.count == (msix_cap.fields["table_size"] if msix_cap else 0)
        # MSI-X may be NORESIZE or not (Linux 6.5+ can grow it): test_msix_growth checks it.
        assert msi.eventfd and msi.noresize and msix.eventfd
        is_pcie = config.find(pci.PCI_CAP_ID_EXP) is not None
        if is_pcie:
            assert device.irq_info(ERR).count == 1
        else:
            # Only PCIe devices have the error-reporting index at all.
            assert device.raw_irq_info(ERR) == -errno.EINVAL
        assert device.irq_info(REQ).count == 1
        assert device.raw_irq_info(uapi.VFIO_PCI_NUM_IRQS) == -errno.EINVAL
        assert (
            device.raw_irq_info(INTX) == 0 and device.raw_irq_info(INTX, argsz=4) == -errno.EINVAL
        )


def test_intx_fires_automasks_and_unmasks(edu: Edu) -> None:
    device = edu.device
    with device.irq_eventfds(INTX) as intx:
        edu.raise_irq(BIT)
        assert intx.wait(0, 5.0) == 1
        edu.ack_irq(BIT)
        edu.raise_irq(BIT)
        # Level-triggered and automasked: nothing more until userspace unmasks.
        assert intx.wait(0, QUIET_S) == 0
        device.unmask_irqs(INTX)
        assert intx.wait(0, 5.0) == 1
        edu.ack_irq(BIT)
        device.unmask_irqs(INTX)
        assert intx.wait(0, QUIET_S) == 0


def test_intx_mask_unmask_with_none_and_bool(edu: Edu) -> None:
    device = edu.device
    with device.irq_eventfds(INTX) as intx:
        device.mask_irqs(INTX)
        edu.raise_irq(BIT)
        assert intx.wait(0, QUIET_S) == 0, "a masked INTx was delivered"
        device.unmask_irqs(INTX, values=[False])
        assert intx.wait(0, QUIET_S) == 0, "unmask with a false bool unmasked"
        device.unmask_irqs(INTX, values=[True])
        assert intx.wait(0, 5.0) == 1
        edu.ack_irq(BIT)
        device.unmask_irqs(INTX)
        device.mask_irqs(INTX, values=[True])
        edu.raise_irq(BIT)
        assert intx.wait(0, QUIET_S) == 0
        device.unmask_irqs(INTX)
        assert intx.wait(0, 5.0) == 1
        edu.ack_irq(BIT)
        device.unmask_irqs(INTX)


def test_intx_unmask_through_an_eventfd(edu: Edu) -> None:
    device = edu.device
    with device.irq_eventfds(INTX) as intx, EventFd() as resample:
        device.unmask_irqs_eventfd(INTX, resample.fd)
        edu.raise_irq(BIT)
        assert intx.wait(0, 5.0) == 1
        edu.ack_irq(BIT)
        edu.raise_irq(BIT)
        assert intx.wait(0, QUIET_S) == 0
        resample.signal()  # the kernel unmasks: the pending interrupt is delivered
        assert intx.wait(0, 5.0) == 1
        edu.ack_irq(BIT)
        device.unmask_irqs_eventfd(INTX, -1)
        device.unmask_irqs(INTX)


@pytest.mark.parametrize("index", [INTX, MSI])
def test_loopback_trigger_with_none_and_bool(edu: Edu, index: int) -> None:
    device = edu.device
    with device.irq_eventfds(index) as irq:
        device.trigger_irqs(index)
        assert irq.wait(0, 2.0) == 1
        if index == INTX:
            device.unmask_irqs(INTX)
        device.trigger_irqs(index, values=[False])
        assert irq.wait(0, QUIET_S) == 0
        device.trigger_irqs(index, values=[True])
        assert irq.wait(0, 2.0) == 1


def test_msi_from_the_device(edu: Edu) -> None:
    device = edu.device
    with device.irq_eventfds(MSI) as msi:
        assert _host_view(device).find(pci.PCI_CAP_ID_MSI).fields["enabled"] == 1
        edu.raise_irq(BIT)
        count = msi.wait(0, 5.0)
        count += msi.wait(0, QUIET_S)
        edu.ack_irq(BIT)
        assert count == 1
    assert _host_view(device).find(pci.PCI_CAP_ID_MSI).fields["enabled"] == 0


def _not_enabled_errnos(device: Device, index: int) -> Dict[Tuple[int, int], int]:
    return {
        (data, action): device.raw_set_irqs(
            index, data | action, 0, 1, b"\x01" if data == BOOL else b""
        )
        for data in (NONE, BOOL)
        for action in (MASK, UNMASK, TRIGGER)
    }


def test_set_irqs_errnos(edu: Edu, nvme_bdf: str, iommu: IommuBackend) -> None:
    device = edu.device
    # INTx and MSI with no eventfd set up: every action is refused as invalid, except that
    # MSI masking is not implemented at all (ENOTTY), enabled or not.
    assert set(_not_enabled_errnos(device, INTX).values()) == {-errno.EINVAL}
    msi = _not_enabled_errnos(device, MSI)
    assert {k: v for k, v in msi.items() if k[1] != TRIGGER} == {
        (d, a): -errno.ENOTTY for d in (NONE, BOOL) for a in (MASK, UNMASK)
    }
    assert {msi[(NONE, TRIGGER)], msi[(BOOL, TRIGGER)]} == {-errno.EINVAL}
    assert device.raw_set_irqs(uapi.VFIO_PCI_NUM_IRQS, NONE | TRIGGER) == -errno.EINVAL
    assert device.raw_set_irqs(INTX, NONE | BOOL | TRIGGER, 0, 1) == -errno.EINVAL
    nvme = iommu.open_device(nvme_bdf)
    with nvme.irq_eventfds(MSIX, count=2):
        assert nvme.raw_set_irqs(MSIX, NONE | MASK, 0, 1) == -errno.ENOTTY


def test_msix_growth_follows_noresize(iommu: IommuBackend, nvme_bdf: str) -> None:
    """NORESIZE promises that vectors cannot be added while MSI-X is enabled; without it
    (dynamic MSI-X allocation) an added vector must work."""
    device = iommu.open_device(nvme_bdf)
    noresize = device.irq_info(MSIX).noresize
    with device.irq_eventfds(MSIX, count=2) as msix, EventFd() as extra:
        fd = extra.fd.to_bytes(4, "little", signed=True)
        ret = device.raw_set_irqs(MSIX, uapi.VFIO_IRQ_SET_DATA_EVENTFD | TRIGGER, 2, 1, fd)
        if noresize:
            assert ret == -errno.EINVAL
        else:
            assert ret == 0
            device.trigger_irqs(MSIX, start=2)
            assert extra.read_count(2.0) == 1
        assert msix.wait(0, QUIET_S) == 0


def test_msix_vectors(iommu: IommuBackend, nvme_bdf: str) -> None:
    device = iommu.open_device(nvme_bdf)
    with device.irq_eventfds(MSIX, count=4) as msix:
        assert len(msix) == 4
        assert _host_view(device).find(pci.PCI_CAP_ID_MSIX).fields["enabled"] == 1
        device.trigger_irqs(MSIX, start=1, count=2)
        assert [msix.wait(i, QUIET_S) for i in range(4)] == [0, 1, 1, 0]
        device.trigger_irqs(MSIX, values=[True, False, False, True])
        assert [msix.wait(i, QUIET_S) for i in range(4)] == [1, 0, 0, 1]
        # De-assign vector 3 (fd -1): it no longer signals.
        device.set_irqs_eventfd(MSIX, [-1], start=3)
        device.trigger_irqs(MSIX, start=3)
        assert msix.wait(3, QUIET_S) == 0
    assert _host_view(device).find(pci.PCI_CAP_ID_MSIX).fields["enabled"] == 0


@pytest.mark.parametrize("index", [ERR, REQ], ids=["err", "req"])
def test_err_and_req_indices(iommu: IommuBackend, nvme_bdf: str, index: int) -> None:
    device = iommu.open_device(nvme_bdf)
    with device.irq_eventfds(index) as irq:
        device.trigger_irqs(index)
        assert irq.wait(0, 2.0) == 1
        device.trigger_irqs(index, values=[False])
        assert irq.wait(0, QUIET_S) == 0
        device.trigger_irqs(index, values=[True])
        assert irq.wait(0, 2.0) == 1
        assert device.raw_set_irqs(index, NONE | MASK, 0, 1) == -errno.ENOTTY
        device.set_irqs_eventfd(index, [-1])
        # No eventfd left: nothing to trigger, nothing to disable.
        assert device.raw_set_irqs(index, NONE | TRIGGER, 0, 1) == -errno.EINVAL
        assert device.raw_set_irqs(index, NONE | TRIGGER, 0, 0) == -errno.EINVAL
        assert irq.wait(0, QUIET_S) == 0


def test_closing_the_device_closes_its_eventfds(iommu: IommuBackend, edu_bdf: str) -> None:
    device = iommu.open_device(edu_bdf)
    irq = device.irq_eventfds(MSI)
    ioeventfd = device.ioeventfd(0, 0x4, 4, 0)
    device.close()
    assert irq.closed and irq[0].closed
    assert ioeventfd.closed and ioeventfd.eventfd.closed
