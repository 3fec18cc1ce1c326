"""A device's identity comes from the device: what its sysfs facts say it is, and the
preflight refusal of a listed model the device contradicts (one line, exit 2, before setup)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vfio_hil.lab import cli
from vfio_hil.lab.errors import InventoryError
from vfio_hil.lab.inventory import DEVICE_MODELS, load_inventory
from vfio_hil.lab.provision import (
    Provisioner,
    check_device_models,
    device_identity,
    model_contradiction,
)


def facts(
    vendor: str,
    device: str,
    pci_class: str,
    subsystem: tuple[str, str] = ("0x1af4", "0x1100"),
    dsn: str | None = None,
) -> dict[str, Any]:
    """A device's platform facts as vfio_hil_facts reads them from sysfs."""
    return {
        "vendor": vendor,
        "device": device,
        "subsystem_vendor": subsystem[0],
        "subsystem_device": subsystem[1],
        "class": pci_class,
        "revision": "0x02",
        "dsn": dsn,
        "driver": "nvme",
        "iommu_group": 5,
        "is_bridge": False,
    }


QEMU_NVME = facts("0x1b36", "0x0010", "0x010802")
SAMSUNG_NVME = facts(
    "0x144d", "0xa808", "0x010802", ("0x144d", "0xa801"), dsn="00-25-38-5b-91-b0-2c-4e"
)
EDU = facts("0x1234", "0x11e8", "0x00ff00")
TESTDEV = facts("0x1b36", "0x0005", "0x00ff00")


def test_identity_is_what_sysfs_shows() -> None:
    assert device_identity(SAMSUNG_NVME) == {
        "vendor_device": "144d:a808",
        "subsystem_vendor_device": "144d:a801",
        "class_code": "01:08:02",
        "revision": "02",
        "dsn": "00-25-38-5b-91-b0-2c-4e",
    }
    # QEMU's NVMe controller has no Device Serial Number capability.
    assert device_identity(QEMU_NVME)["dsn"] is None
    # An older DUT's sysfs without some of the files, facts from before the serial number was
    # read: nothing is made up.
    assert device_identity({"vendor": "0x1234", "device": "0x11e8"}) == {
        "vendor_device": "1234:11e8",
        "subsystem_vendor_device": None,
        "class_code": None,
        "revision": None,
        "dsn": None,
    }


@pytest.mark.parametrize(
    ("model", "device", "found"),
    [
        ("nvme", QEMU_NVME, None),
        ("nvme", SAMSUNG_NVME, None),  # any vendor's NVMe controller: by class code
        ("nvme", EDU, "1234:11e8, class 00:ff:00"),
        ("edu", EDU, None),
        ("edu", QEMU_NVME, "1b36:0010, class 01:08:02"),
        ("edu", TESTDEV, "1b36:0005, class 00:ff:00"),
        ("pci-testdev", TESTDEV, None),
        ("pci-testdev", EDU, "1234:11e8, class 00:ff:00"),
        ("generic", SAMSUNG_NVME, None),
        ("generic", EDU, None),
    ],
)
def test_model_contradiction(model: str, device: dict[str, Any], found: str | None) -> None:
    assert model_contradiction(DEVICE_MODELS[model], device) == found


def lab_host(tmp_path: Path, devices: str) -> Path:
    path = tmp_path / "inv.yml"
    path.write_text(
        f"all:\n  hosts:\n    lab-3:\n      ansible_host: 10.1.2.3\n      vfio_devices: {devices}\n"
    )
    return path


def test_every_contradicting_device_is_named_in_one_line(tmp_path: Path) -> None:
    inventory = load_inventory(
        lab_host(
            tmp_path,
            "[{bdf: '3b:00.0', model: nvme}, {bdf: '3c:00.0', model: edu},"
            " {bdf: '3d:00.0'}, {bdf: '3e:00.0', model: nvme}]",
        )
    )
    present = {
        "0000:3b:00.0": EDU,
        "0000:3c:00.0": SAMSUNG_NVME,
        "0000:3d:00.0": TESTDEV,
        "0000:3e:00.0": SAMSUNG_NVME,
    }
    with pytest.raises(InventoryError) as caught:
        check_device_models(inventory.hosts["lab-3"], present)
    assert str(caught.value) == (
        "lab-3: 0000:3b:00.0 is listed as model nvme (class 01:08:02), but the device is "
        "1234:11e8, class 00:ff:00; 0000:3c:00.0 is listed as model edu (1234:11e8), but the "
        "device is 144d:a808, class 01:08:02"
    )
    assert caught.value.exit_code == 2


def _fake_preflight(
    monkeypatch: pytest.MonkeyPatch, present: dict[str, dict[str, Any]]
) -> list[str]:
    """Preflight plays answered with ``present`` as the host's devices; returns the list of
    playbooks run, so a test can see that nothing after preflight ran."""
    plays: list[str] = []

    def run_play(self: Provisioner, hosts: list[Any], playbook: str) -> dict[str, Any]:
        plays.append(playbook)
        platform = {"devices": present}
        return {h.name: {"platform facts": {"platform": platform}} for h in hosts}

    monkeypatch.setattr(Provisioner, "run_play", run_play)
    return plays


def test_preflight_refuses_a_contradicting_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = load_inventory(lab_host(tmp_path, "[{bdf: '3b:00.0', model: nvme}]"))
    _fake_preflight(monkeypatch, {"0000:3b:00.0": EDU})
    with pytest.raises(InventoryError, match=r"0000:3b:00\.0 is listed as model nvme"):
        Provisioner(inventory, None, tmp_path).preflight(list(inventory.hosts.values()))


def test_preflight_passes_the_devices_facts_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = load_inventory(
        lab_host(tmp_path, "[{bdf: '3b:00.0', model: nvme}, {bdf: '3c:00.0'}]")
    )
    present = {"0000:3b:00.0": SAMSUNG_NVME, "0000:3c:00.0": EDU}
    _fake_preflight(monkeypatch, present)
    found = Provisioner(inventory, None, tmp_path).preflight(list(inventory.hosts.values()))
    assert found == {"lab-3": {"devices": present}}


def test_run_exits_2_with_one_line_before_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = lab_host(tmp_path, "[{bdf: '3b:00.0', model: nvme}]")
    plays = _fake_preflight(monkeypatch, {"0000:3b:00.0": EDU})
    monkeypatch.setenv("VFIO_HIL_HOME", str(tmp_path / "home"))

    def no_pytest(cmd: list[str]) -> int:
        raise AssertionError("the checks ran after a failed preflight")

    monkeypatch.setattr(cli, "_run_pytest", no_pytest)
    rc = cli.main(["run", "--inventory", str(path), "--reports", str(tmp_path / "reports")])

    assert rc == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [
        "vfio-hil: error: lab-3: 0000:3b:00.0 is listed as model nvme (class 01:08:02), "
        "but the device is 1234:11e8, class 00:ff:00"
    ]
    assert plays == ["preflight.yml"]  # no setup, no teardown: nothing changed on the host
