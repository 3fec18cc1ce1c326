"""Fixtures of the DUT tests: they run on a VFIO host (a rack DUT) as root, with the test
devices already bound to vfio-pci, and drive them through ``vfio_hil.core``.

Run inside a DUT, from the clone (a rack DUT sees it at the same path):
``.venv/bin/python -m pytest -p no:cacheprovider tests/dut``
Elsewhere every test skips, saying why.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Dict, Iterator, List, Tuple

import pytest

if importlib.util.find_spec("vfio_hil") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))

from vfio_hil.core import (
    BACKENDS,
    ContainerBackend,
    IommuBackend,
    available_backends,
    open_iommu,
    sysfs,
)

CONTAINER = "/dev/vfio/vfio"
#: QEMU's test devices by (vendor, device).
MODELS: Dict[Tuple[int, int], str] = {
    (0x1234, 0x11E8): "edu",
    (0x1B36, 0x0010): "nvme",
    (0x1B36, 0x0005): "testdev",
}
#: Backends the device tests run under; no-IOMMU mode has no DMA mapping to test: it is
#: covered by test_noiommu.py (on a DUT in that mode) and the unit tests of the backend choice.
DEVICE_BACKENDS = [name for name in BACKENDS if name != "noiommu"]


def _not_a_dut() -> str:
    if not os.path.exists(CONTAINER):
        return f"not a VFIO host: {CONTAINER} is missing"
    if os.geteuid() != 0:
        return "the DUT tests need root"
    return ""


@pytest.fixture(autouse=True, scope="session")
def _on_a_dut() -> None:
    reason = _not_a_dut()
    if reason:
        pytest.skip(reason)


def _vfio_devices() -> Dict[str, List[str]]:
    """Addresses of the test devices bound to vfio-pci, by model, in address order."""
    found: Dict[str, List[str]] = {}
    root = "/sys/bus/pci/devices"
    for bdf in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if sysfs.driver(bdf) != "vfio-pci":
            continue
        ids = sysfs.pci_ids(bdf)
        model = MODELS.get((ids.vendor, ids.device))
        if model:
            found.setdefault(model, []).append(bdf)
    return found


@pytest.fixture(scope="session")
def vfio_devices() -> Dict[str, List[str]]:
    """The test devices present, by model."""
    return _vfio_devices()


def _pick(devices: Dict[str, List[str]], model: str, on_root_bus: bool = True) -> str:
    for bdf in devices.get(model, []):
        if (bdf.split(":")[1] == "00") == on_root_bus:
            return bdf
    where = "on the root bus" if on_root_bus else "behind a bridge"
    pytest.skip(f"no QEMU {model} device {where} is bound to vfio-pci on this host")


@pytest.fixture(scope="session")
def edu_bdf(vfio_devices: Dict[str, List[str]]) -> str:
    """An edu device on the root bus (no bus reset possible)."""
    return _pick(vfio_devices, "edu")


@pytest.fixture(scope="session")
def bridged_edu_bdf(vfio_devices: Dict[str, List[str]]) -> str:
    """An edu device behind a PCIe root port (bus reset possible)."""
    return _pick(vfio_devices, "edu", on_root_bus=False)


@pytest.fixture(scope="session")
def nvme_bdf(vfio_devices: Dict[str, List[str]]) -> str:
    """An emulated NVMe controller (PCIe, MSI-X, FLR)."""
    return _pick(vfio_devices, "nvme")


@pytest.fixture(scope="session")
def testdev_bdf(vfio_devices: Dict[str, List[str]]) -> str:
    """A pci-testdev (an MMIO BAR and an I/O port BAR)."""
    return _pick(vfio_devices, "testdev")


@pytest.fixture(scope="session")
def backend_reasons() -> Dict[str, str]:
    """Why each backend cannot be used here (empty: it can)."""
    return available_backends()


@pytest.fixture(params=DEVICE_BACKENDS)
def iommu(
    request: pytest.FixtureRequest, backend_reasons: Dict[str, str]
) -> Iterator[IommuBackend]:
    """An open IOMMU context of each backend the kernel offers."""
    reason = backend_reasons.get(request.param, "")
    if reason:
        pytest.skip(f"{request.param} backend unavailable: {reason}")
    with open_iommu(request.param) as backend:
        yield backend


@pytest.fixture
def legacy(backend_reasons: Dict[str, str]) -> Iterator[ContainerBackend]:
    """A type1v2 container backend, for the container- and group-level tests."""
    if backend_reasons["type1v2"]:
        pytest.skip(f"type1v2 backend unavailable: {backend_reasons['type1v2']}")
    backend = open_iommu("type1v2")
    assert isinstance(backend, ContainerBackend)
    with backend:
        yield backend
