"""DUT-side logic of vfio_hil.dut.hotplug on a fake sysfs tree: the hotplug-capable slot of a
device, the removal write issued from a thread (a FIFO stands for a write the kernel blocks
until userspace releases the device), the re-addition, the wait for the device to come back,
and binding it to vfio-pci against a driver that probes it concurrently."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vfio_hil.dut import hotplug

NVME = "0000:01:00.0"  # behind a PCIe root port: slot "0"
EDU = "0000:02:00.0"  # behind another: slot "0-2"
FIXED = "0000:00:04.0"  # on the root bus: no slot


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def device_dir(root: Path, bdf: str) -> Path:
    return root / "sys/bus/pci/devices" / bdf


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fake sysfs: three devices, two hotplug-capable slots and one slot without a hotplug
    driver (no ``power``), the bus of the first slot, and a QEMU guest's DMI vendor."""
    for bdf in (NVME, EDU, FIXED):
        device_dir(tmp_path, bdf).mkdir(parents=True)
    slots = tmp_path / "sys/bus/pci/slots"
    write(slots / "0/address", "0000:01:00\n")
    write(slots / "0/power", "1")
    write(slots / "0-2/address", "0000:02:00\n")
    write(slots / "0-2/power", "1")
    (tmp_path / "sys/module/acpiphp").mkdir(parents=True)
    (slots / "0/module").symlink_to(tmp_path / "sys/module/acpiphp")
    write(slots / "4/address", "0000:00:04\n")  # a slot without a hotplug driver
    write(tmp_path / "sys/class/pci_bus/0000:01/rescan", "")
    write(tmp_path / "sys/bus/pci/rescan", "")
    write(tmp_path / "sys/class/dmi/id/sys_vendor", "QEMU\n")
    return tmp_path


@pytest.fixture(autouse=True)
def no_removal_left() -> Iterator[None]:
    yield
    hotplug._removals.clear()


def blocking_remove(root: Path, bdf: str) -> Path:
    """Make ``bdf``'s ``remove`` a FIFO: opening it for writing blocks until a reader comes,
    as the kernel blocks the write until userspace releases the device."""
    fifo = device_dir(root, bdf) / "remove"
    os.mkfifo(fifo)
    return fifo


def release_fifo(fifo: Path) -> str:
    """What the blocked writer wrote, once it is let through."""
    with open(fifo) as fh:
        return fh.read()


# -- the slot a device sits in -----------------------------------------------------------


def test_slot_of_finds_the_hotplug_capable_slot_by_address(root: Path) -> None:
    slots = root / "sys/bus/pci/slots"
    assert hotplug.slot_of(NVME, str(root)) == {
        "name": "0",
        "path": str(slots / "0"),
        "driver": "acpiphp",
        "functions": [NVME],
        "system_vendor": "QEMU",
    }
    assert hotplug.slot_of("02:00.0", str(root))["name"] == "0-2"


def test_slot_of_lists_every_function_in_the_slot(root: Path) -> None:
    device_dir(root, "0000:02:00.1").mkdir()
    assert hotplug.slot_of(EDU, str(root))["functions"] == [EDU, "0000:02:00.1"]


def test_slot_of_is_none_for_a_slot_without_hotplug_driver_or_without_slot(root: Path) -> None:
    assert hotplug.slot_of(FIXED, str(root)) is None
    assert hotplug.slot_of("0000:03:00.0", str(root)) is None


def test_slot_of_without_slots_or_dmi(tmp_path: Path) -> None:
    assert hotplug.slot_of(NVME, str(tmp_path)) is None
    device_dir(tmp_path, NVME).mkdir(parents=True)
    write(tmp_path / "sys/bus/pci/slots/7/address", "0000:01:00")
    write(tmp_path / "sys/bus/pci/slots/7/power", "1")
    slot = hotplug.slot_of(NVME, str(tmp_path))
    assert (slot["driver"], slot["system_vendor"]) == (None, None)


def test_bus_rescan_is_the_device_bus_else_the_global_one(root: Path) -> None:
    assert hotplug.bus_rescan_path(NVME, str(root)) == str(
        root / "sys/class/pci_bus/0000:01/rescan"
    )
    assert hotplug.bus_rescan_path(EDU, str(root)) == str(root / "sys/bus/pci/rescan")


class FakeKernel:
    """Writes of 1 that re-add a device (a bus rescan, a slot power-on) bring it back into the
    fake sysfs, once the first ``refusals`` of them have been refused; the rest are written."""

    def __init__(self, root: Path, bdf: str, refusals: int = 0) -> None:
        self.root = root
        self.bdf = bdf
        self.refusals = refusals
        self.readds: list[str] = []
        self.write = hotplug._write_sysfs

    def __call__(self, path: str, value: str) -> str | None:
        if not (path.endswith(("rescan", "power")) and value == "1"):
            return self.write(path, value)
        self.readds.append(os.path.relpath(path, self.root))
        if self.refusals:
            self.refusals -= 1
            return "OSError: [Errno 19] No such device"
        device_dir(self.root, self.bdf).mkdir(parents=True, exist_ok=True)
        return self.write(path, value)


@pytest.fixture
def kernel(root: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeKernel]:
    def install(bdf: str, refusals: int = 0) -> FakeKernel:
        fake = FakeKernel(root, bdf, refusals)
        monkeypatch.setattr(hotplug, "_write_sysfs", fake)
        return fake

    return install


def gone(root: Path, bdf: str) -> None:
    """What the kernel does once the removal completes: the device leaves sysfs."""
    shutil.rmtree(device_dir(root, bdf))


# -- removal through sysfs, blocked until release -------------------------------------------


def test_sysfs_removal_blocked_until_release_then_bus_rescan(
    root: Path, kernel: Callable[..., FakeKernel]
) -> None:
    fake = kernel(NVME)
    fifo = blocking_remove(root, NVME)
    started = hotplug.remove(NVME, "sysfs", str(root))
    assert started["returned"] is False and started["way"] == "sysfs"
    assert started["path"] == str(fifo)
    assert hotplug.wait_removal(NVME, timeout_s=0.05)["returned"] is False
    with pytest.raises(RuntimeError, match="has not returned yet"):
        hotplug.readd(NVME, root=str(root))

    assert release_fifo(fifo) == "1"
    done = hotplug.wait_removal(NVME, timeout_s=5)
    assert done["returned"] is True and done["error"] is None
    assert done["seconds"] >= 0.05

    gone(root, NVME)
    back = hotplug.readd(NVME, timeout_s=5, root=str(root))
    assert back["present"] is True and back["way"] == "sysfs"
    assert back["path"] == str(root / "sys/class/pci_bus/0000:01/rescan")
    assert [w["error"] for w in back["writes"]] == [None]
    assert fake.readds == ["sys/class/pci_bus/0000:01/rescan"]
    assert NVME not in hotplug._removals


def test_release_waits_for_the_removal_it_held_up(root: Path) -> None:
    fifo = blocking_remove(root, NVME)
    hotplug.remove(NVME, "sysfs", str(root))
    timer = threading.Timer(0.2, release_fifo, args=(fifo,))
    timer.start()
    released = hotplug.release(NVME, timeout_s=5)
    timer.join()
    assert released["released"] is False  # nothing was held through VFIO here
    assert released["removal"]["returned"] is True
    assert released["removal"]["seconds"] >= 0.2
    assert hotplug.release(EDU)["removal"] is None


def test_removal_already_under_way_is_refused(root: Path) -> None:
    fifo = blocking_remove(root, NVME)
    hotplug.remove(NVME, "sysfs", str(root))
    try:
        with pytest.raises(RuntimeError, match="already under way"):
            hotplug.remove(NVME, "sysfs", str(root))
    finally:
        release_fifo(fifo)


def test_a_write_refused_at_once_raises_and_leaves_no_removal(root: Path) -> None:
    with pytest.raises(OSError, match="FileNotFoundError"):
        hotplug.remove("0000:05:00.0", "sysfs", str(root))
    assert hotplug._removals == {}


def test_unknown_way_and_slot_power_without_slot(root: Path) -> None:
    with pytest.raises(ValueError, match="not one of"):
        hotplug.remove(NVME, "qmp", str(root))
    with pytest.raises(ValueError, match="no hotplug-capable slot"):
        hotplug.remove(FIXED, "slot-power", str(root))


# -- removal through slot power ----------------------------------------------------------


def test_slot_power_off_then_on_retried_until_the_device_is_back(
    root: Path, kernel: Callable[..., FakeKernel]
) -> None:
    fake = kernel(EDU, refusals=1)  # still powering off: the first power-on is refused
    power = root / "sys/bus/pci/slots/0-2/power"
    hotplug.remove(EDU, "slot-power", str(root))
    assert hotplug.wait_removal(EDU, timeout_s=5) == {
        "way": "slot-power",
        "path": str(power),
        "returned": True,
        "seconds": hotplug._removals[EDU].seconds,
        "error": None,
    }
    assert power.read_text() == "0"
    gone(root, EDU)
    back = hotplug.readd(EDU, timeout_s=5, root=str(root))
    assert back["present"] is True and back["path"] == str(power)
    assert [w["error"] for w in back["writes"]] == ["OSError: [Errno 19] No such device", None]
    assert back["writes"][1]["at"] >= hotplug.READD_RETRY_S
    assert fake.readds == ["sys/bus/pci/slots/0-2/power"] * 2
    assert power.read_text() == "1"


def test_slot_powered_on_by_itself_is_left_alone(
    root: Path, kernel: Callable[..., FakeKernel]
) -> None:
    # A card put back into an emulated slot powers the slot on by itself.
    fake = kernel(EDU)
    power = root / "sys/bus/pci/slots/0-2/power"
    hotplug.remove(EDU, "slot-power", str(root))
    hotplug.wait_removal(EDU, timeout_s=5)
    gone(root, EDU)
    power.write_text("1")
    timer = threading.Timer(0.2, device_dir(root, EDU).mkdir)
    timer.start()
    back = hotplug.readd(EDU, timeout_s=5, root=str(root))
    timer.join()
    assert back["present"] is True and back["writes"] == []
    assert fake.readds == []


def test_a_device_that_does_not_come_back(root: Path, kernel: Callable[..., FakeKernel]) -> None:
    kernel(NVME, refusals=99)
    write(device_dir(root, NVME) / "remove", "")  # a plain file: the removal returns at once
    hotplug.remove(NVME, "sysfs", str(root))
    hotplug.wait_removal(NVME, timeout_s=5)
    gone(root, NVME)
    back = hotplug.readd(NVME, timeout_s=0.3, root=str(root))
    assert back["present"] is False
    assert [w["error"] for w in back["writes"]] == ["OSError: [Errno 19] No such device"]


# -- the device's return ------------------------------------------------------------------


def test_wait_present_sees_the_device_come_back(root: Path) -> None:
    path = device_dir(root, NVME)
    path.rmdir()
    timer = threading.Timer(0.2, path.mkdir)
    timer.start()
    result = hotplug.wait_present(NVME, timeout_s=5, root=str(root))
    timer.join()
    assert result["present"] is True and result["rescanned"] is False
    assert 0.1 <= result["seconds"] < 2.5


def test_wait_present_rescans_half_way_and_gives_up(root: Path) -> None:
    device_dir(root, NVME).rmdir()
    start = time.monotonic()
    result = hotplug.wait_present(NVME, timeout_s=0.4, root=str(root))
    assert result["present"] is False
    assert result["rescanned"] is True and result["rescan_error"] is None
    assert (root / "sys/bus/pci/rescan").read_text() == "1"
    assert time.monotonic() - start < 2


# -- binding the returned device to vfio-pci --------------------------------------------------


def bound_to(root: Path, bdf: str, driver: str | None) -> None:
    link = device_dir(root, bdf) / "driver"
    if link.is_symlink():
        link.unlink()
    if driver is not None:
        (root / "sys/bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
        link.symlink_to(root / "sys/bus/pci/drivers" / driver)


@pytest.fixture
def grouped(root: Path) -> Path:
    (root / "sys/kernel/iommu_groups/7").mkdir(parents=True)
    (device_dir(root, NVME) / "iommu_group").symlink_to(root / "sys/kernel/iommu_groups/7")
    write(root / "sys/bus/pci/drivers_probe", "")
    return root


def test_bind_vfio_retries_while_the_native_driver_probes(
    grouped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nvme probes a device that has just appeared asynchronously: its unbind is refused
    until the probe ends; then the probe binds vfio-pci, as driver_override asks."""
    root = grouped
    bound_to(root, NVME, "nvme")
    write(root / "sys/bus/pci/drivers/nvme/unbind", "")
    written = []
    refusals = iter(["OSError: [Errno 19] No such device"])

    def kernel(path: str, value: str) -> str | None:
        written.append((os.path.relpath(path, root), value))
        if path.endswith("unbind"):
            refusal = next(refusals, None)
            if refusal is None:
                bound_to(root, NVME, None)
            return refusal
        if path.endswith("drivers_probe") and not os.path.islink(device_dir(root, NVME) / "driver"):
            bound_to(root, NVME, "vfio-pci")
        return None

    monkeypatch.setattr(hotplug, "_write_sysfs", kernel)
    result = hotplug.bind_vfio(NVME, timeout_s=5, root=str(root))
    assert result == {
        "driver": "vfio-pci",
        "group": 7,
        "errors": ["OSError: [Errno 19] No such device"],
    }
    assert (
        written
        == [
            (f"sys/bus/pci/devices/{NVME}/driver_override", "vfio-pci"),
            ("sys/bus/pci/drivers/nvme/unbind", NVME),
            ("sys/bus/pci/drivers_probe", NVME),
        ]
        * 2
    )


def test_bind_vfio_leaves_a_bound_device_alone_and_gives_up_in_time(
    grouped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = grouped
    bound_to(root, NVME, "vfio-pci")
    assert hotplug.bind_vfio(NVME, root=str(root)) == {
        "driver": "vfio-pci",
        "group": 7,
        "errors": [],
    }
    bound_to(root, NVME, "nvme")  # a driver that never lets go
    monkeypatch.setattr(hotplug, "_write_sysfs", lambda path, value: None)
    start = time.monotonic()
    assert hotplug.bind_vfio(NVME, timeout_s=0.3, root=str(root))["driver"] == "nvme"
    assert time.monotonic() - start < 2
