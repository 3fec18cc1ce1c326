"""The check plan of a run (results.json ``run.plan``): which checks apply to each device of
the inventory and to its hosts, by the catalogue's scopes and needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vfio_hil.lab.inventory import DEFAULT_INVENTORY, DEVICE_MODELS, load_inventory
from vfio_hil.lab.report import check_plan
from vfio_hil_pytest.catalogue import load_catalogue


@pytest.fixture(scope="module")
def catalogue() -> list[dict[str, Any]]:
    return load_catalogue()


@pytest.fixture(scope="module")
def plan(catalogue: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan of the default virtual lab (edu, NVMe, pci-testdev devices)."""
    return check_plan(load_inventory(DEFAULT_INVENTORY), catalogue)


def _device(plan: dict[str, Any], bdf: str) -> dict[str, Any]:
    return next(d for d in plan["devices"] if d["bdf"] == bdf)


def test_host_and_device_checks_split_the_catalogue(
    plan: dict[str, Any], catalogue: list[dict[str, Any]]
) -> None:
    ids = [c["id"] for c in catalogue]
    host, device = plan["host_checks"], plan["device_checks"]
    assert "PLAT-001" in host and "USR-001" in host and "DMA-002" in device
    # Every check once, each list in catalogue order.
    assert sorted(host + device, key=ids.index) == ids
    assert host == [i for i in ids if i in host] and device == [i for i in ids if i in device]


def test_devices_are_listed_by_host_then_bdf(plan: dict[str, Any]) -> None:
    assert [(d["host"], d["bdf"]) for d in plan["devices"]] == [
        ("vdut0", "0000:00:04.0"),
        ("vdut0", "0000:00:05.0"),
        ("vdut0", "0000:00:06.0"),
        ("vdut0", "0000:00:07.0"),
        ("vdut0", "0000:00:09.0"),
        ("vdut0", "0000:00:09.1"),
        ("vdut0", "0000:01:00.0"),
    ]


def test_an_edu_gets_the_dma_checks_and_not_the_nvme_ones(plan: dict[str, Any]) -> None:
    edu = _device(plan, "0000:00:04.0")
    assert edu["model"] == "edu"
    assert edu["capabilities"] == sorted(DEVICE_MODELS["edu"].capabilities)
    # DMA-002 needs dma, DMA-001 dma_to_host (the edu engine), MMIO-001 device_registers.
    assert {"DMA-001", "DMA-002", "MMIO-001", "IRQ-003"} <= set(edu["checks"])
    # Checks that declare no needs run on every device.
    assert {"CFG-001", "HP-001", "RST-002"} <= set(edu["checks"])
    assert not {"PERF-001", "RST-001", "IRQ-004", "REG-005"} & set(edu["checks"])
    assert not set(plan["host_checks"]) & set(edu["checks"])


def test_each_model_gets_what_it_may_have(plan: dict[str, Any]) -> None:
    nvme = _device(plan, "0000:00:06.0")
    assert {"PERF-001", "PERF-002", "RST-001", "IRQ-004", "DMA-002"} <= set(nvme["checks"])
    assert "REG-005" not in nvme["checks"]
    testdev = _device(plan, "0000:00:07.0")
    assert {"REG-005", "CFG-001"} <= set(testdev["checks"])
    assert not {"DMA-002", "MMIO-001", "PERF-001"} & set(testdev["checks"])


def test_check_ids_keep_the_catalogue_order(plan: dict[str, Any]) -> None:
    for device in plan["devices"]:
        assert device["checks"] == [c for c in plan["device_checks"] if c in device["checks"]]


def test_a_device_listed_without_a_model_gets_what_the_dut_can_probe(
    tmp_path: Path, catalogue: list[dict[str, Any]]
) -> None:
    """A ``generic`` device has no capabilities of its model, but may have what the DUT's
    probe finds (an engine, NVMe): those checks apply, as the run parametrizes them."""
    inventory = tmp_path / "inv.yml"
    inventory.write_text("all:\n  hosts:\n    lab-3: {vfio_devices: ['3b:00.0']}\n")
    (device,) = check_plan(load_inventory(inventory), catalogue)["devices"]
    assert (device["model"], device["capabilities"]) == ("generic", [])
    assert {"CFG-001", "DMA-002", "MMIO-001", "PERF-001"} <= set(device["checks"])
    assert not {"REG-005", "IRQ-004"} & set(device["checks"])
