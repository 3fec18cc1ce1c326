"""Why VFIO cannot drive a device, and the kind of SKIP its checks record: ``covered`` where
a platform check reports the cause (and the reason names it), ``lab`` where the lab did not
set the device up."""

from __future__ import annotations

from typing import Any

import pytest

from vfio_hil.lab.inventory import DutDevice, Host
from vfio_hil.lab.session import HostSession, Unusable

BDF = "0000:3b:00.0"
DEVICE = {"driver": "vfio-pci", "iommu_group": 12}


class Channel:
    """Answers the VFIO domain probe with ``refusal``."""

    def __init__(self, refusal: dict[str, Any] | None) -> None:
        self.refusal = refusal

    def call(self, func: str, **kwargs: Any) -> dict[str, Any]:
        assert func == "iommu_state.vfio_domain"
        return {
            "bdf": kwargs["bdf"],
            "group": 12,
            "host_default": "DMA",
            "attached": self.refusal is None,
            "refusal": self.refusal,
            "iova_ranges": [],
        }


def _unusable(
    iommu: str = "intel",
    device: dict[str, Any] | None = DEVICE,
    refusal: dict[str, Any] | None = None,
) -> Unusable | None:
    facts = {"iommu": {"kind": iommu}, "devices": {BDF: device} if device else {}}
    return HostSession(Host("lab-3", {}, None), facts, Channel(refusal)).vfio_unusable(BDF)


@pytest.mark.parametrize(
    ("unusable", "kind", "check"),
    [
        (_unusable(iommu="none"), "covered", "PLAT-001"),
        (_unusable(device={**DEVICE, "iommu_group": None}), "covered", "PLAT-001"),
        (_unusable(refusal={"ioctl": "VFIO_SET_IOMMU", "errno": 1}), "covered", "PLAT-002"),
        (_unusable(refusal={"noiommu": True}), "covered", "PLAT-001"),
        (_unusable(device={**DEVICE, "noiommu_group": True}), "covered", "PLAT-001, PLAT-003"),
        (
            _unusable(iommu="none", device={**DEVICE, "noiommu_group": True}),
            "covered",
            "PLAT-001, PLAT-003",
        ),
        (_unusable(device=None), "lab", None),
        (_unusable(device={**DEVICE, "driver": "nvme"}), "lab", None),
    ],
)
def test_each_cause_has_its_kind(unusable: Unusable | None, kind: str, check: str | None) -> None:
    assert unusable is not None and unusable.kind == kind
    if check is not None:
        assert f"({check})" in unusable.reason


def test_a_device_vfio_attaches_is_usable() -> None:
    assert _unusable() is None


def test_noiommu_devices_are_the_devices_under_test_in_no_iommu_groups() -> None:
    devices = [DutDevice("lab-3", bdf, "edu") for bdf in (BDF, "0000:3c:00.0", "0000:3d:00.0")]
    facts = {
        "iommu": {"kind": "none"},
        "devices": {
            BDF: {**DEVICE, "noiommu_group": True},
            "0000:3c:00.0": {**DEVICE, "iommu_group": 13, "noiommu_group": False},
            "0000:3d:00.0": {**DEVICE, "iommu_group": None},
            "0000:3e:00.0": {**DEVICE, "iommu_group": 14, "noiommu_group": True},  # not tested
        },
    }
    session = HostSession(Host("lab-3", {}, None), facts, Channel(None), devices=devices)
    assert session.noiommu_devices() == [BDF]
