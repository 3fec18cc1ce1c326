"""RST-004's verdict on a hot reset with every group: the DUT side (vfio_hil.dut.reset) run
against a fake device, a fake sysfs tree and a fake kernel log, judged by the check itself.

The scenarios are those measured on the virtual rack (QEMU 7.2, Linux 6.1 and 6.12): an NVMe
behind a pcie-root-port whose Link Status never reports the link active (q35's ACPI PCI
hotplug) gets ENOTTY from pci_reset_bus(); the same port under native PCIe hotplug reports
it and the reset works.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from check_modules import load_checks

from vfio_hil.dut import reset
from vfio_hil_pytest.plugin import Evidence

NVME = "0000:01:00.0"
PORT = "0000:00:06.0"
OWN_GROUP, FOREIGN_GROUP = 6, 7

# The root port as lspci showed it on the rack: 16 GT/s x32, LLActRep+.
LNKCAP_QEMU = 0x4 | (32 << 4) | reset.PCI_EXP_LNKCAP_DLLLARC
LNKSTA_DOWN = 0x0011  # 2.5 GT/s x1, DLActive-
LNKSTA_UP = LNKSTA_DOWN | reset.PCI_EXP_LNKSTA_DLLLA
LINK_LINE = f"pcieport {PORT}: Data Link Layer Link Active not set in 1000 msec"


def config(vendor: int = 0x1B36, lnkcap: int | None = None, lnksta: int = 0) -> bytes:
    """A 256-byte config space; with ``lnkcap``, a root port's PCI Express capability at
    0x40 holding ``lnkcap`` and ``lnksta``."""
    data = bytearray(b"\xff" * 256 if vendor == 0xFFFF else 256)
    if vendor != 0xFFFF:
        struct.pack_into("<H", data, 0, vendor)
    if lnkcap is not None:
        struct.pack_into("<H", data, 0x06, 0x10)  # Status: capabilities list
        data[0x34] = 0x40
        struct.pack_into("<BBH", data, 0x40, 0x10, 0, 0x0042)  # EXP v2, root port
        struct.pack_into("<I", data, 0x40 + reset.PCI_EXP_LNKCAP, lnkcap)
        struct.pack_into("<H", data, 0x40 + reset.PCI_EXP_LNKSTA, lnksta)
    return bytes(data)


def test_port_link_reads_the_registers_the_kernel_waits_on() -> None:
    assert reset.port_link(config(lnkcap=LNKCAP_QEMU, lnksta=LNKSTA_DOWN)) == {
        "max_speed_gts": 16.0,
        "link_active_reporting": True,
        "link_active": False,
    }
    assert reset.port_link(config(lnkcap=0x2, lnksta=LNKSTA_UP)) == {
        "max_speed_gts": 5.0,
        "link_active_reporting": False,
        "link_active": True,
    }
    assert reset.port_link(config()) is None  # conventional PCI: no link registers


def _state(answers: bool = True, port: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"device_answers": answers, "port": port}


def _port(reporting: bool = True, active: bool = False) -> dict[str, Any]:
    return {
        "bdf": PORT,
        "max_speed_gts": 16.0,
        "link_active_reporting": reporting,
        "link_active": active,
    }


def test_failure_names_a_port_that_hides_its_active_link() -> None:
    cause = reset.hot_reset_failure(
        NVME, "-ENOTTY", _state(port=_port()), _state(port=_port()), [LINK_LINE]
    )
    assert f"port {PORT} advertises Data Link Layer Link Active Reporting" in cause
    assert f"DLLLA read 0 while {NVME} answered" in cause
    assert "pci_bridge_wait_for_secondary_bus()" in cause
    assert cause.endswith(f"(kernel: {LINK_LINE})")


def test_failure_names_a_device_that_did_not_come_back() -> None:
    up = _port(active=True)
    cause = reset.hot_reset_failure(
        NVME, "-ENOTTY", _state(port=up), _state(answers=False, port=up), []
    )
    assert cause.startswith(f"{NVME} did not come back from the secondary bus reset")
    assert cause.endswith("(kernel: nothing in the kernel log)")


@pytest.mark.parametrize(
    ("ret", "before", "expected"),
    [
        # A port without link reporting: the kernel never read DLLLA, nothing to blame it on.
        ("-ENOTTY", _state(port=_port(reporting=False)), "pci_reset_bus() gave up with ENOTTY"),
        ("-ENOTTY", _state(port=_port(active=True)), "pci_reset_bus() gave up with ENOTTY"),
        ("-ENOTTY", _state(), "pci_reset_bus() gave up with ENOTTY"),
        # DLLLA 0 explains only ENOTTY: any other answer is reported as the kernel gave it.
        ("-EAGAIN", _state(port=_port()), "the kernel answered -EAGAIN"),
    ],
)
def test_failure_otherwise_reports_the_kernels_answer(
    ret: str, before: dict[str, Any], expected: str
) -> None:
    assert reset.hot_reset_failure(NVME, ret, before, before, []).startswith(expected)


# -- the DUT function against fakes, judged by the check ------------------------------------


class FakeGroup:
    """A VFIO group: its number, an fd, and a context manager like the real one."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.fd = 100 + number

    def __enter__(self) -> FakeGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FakeDevice:
    """The hot reset ioctls of a device whose reset reaches only its own group: EINVAL
    without that group (the ownership test), ``complete`` with it (pci_reset_bus())."""

    def __init__(self, info_ret: int, complete: int) -> None:
        self.info_ret = info_ret
        self.complete = complete

    def raw_hot_reset_info(self) -> int:
        return self.info_ret

    def hot_reset_info(self) -> SimpleNamespace:
        return SimpleNamespace(flags=0, devices=[SimpleNamespace(bdf=NVME, group_id=OWN_GROUP)])

    def raw_hot_reset(self, fds: list[int]) -> int:
        return self.complete if FakeGroup(OWN_GROUP).fd in fds else -errno.EINVAL


@pytest.fixture
def sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[bytes]]:
    """The NVMe below the root port in a fake sysfs tree; each device's config space reads
    come from the list under its address, one per read (the last one repeats)."""
    devices = tmp_path / "bus/pci/devices"
    devices.mkdir(parents=True)
    for path in (f"pci0000:00/{PORT}", f"pci0000:00/{PORT}/{NVME}"):
        (tmp_path / "devices" / path).mkdir(parents=True)
        os.symlink(tmp_path / "devices" / path, devices / path.rsplit("/", 1)[-1])
    reads: dict[str, list[bytes]] = {}

    def sysfs_config(bdf: str) -> bytes:
        queue = reads[bdf]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    monkeypatch.setattr(reset, "PCI_DEVICES", str(devices))
    monkeypatch.setattr(reset, "_sysfs_config", sysfs_config)
    return reads


def dut(
    monkeypatch: pytest.MonkeyPatch, device: FakeDevice, kernel_log: list[str]
) -> dict[str, Any]:
    """``reset.hot_reset_ownership`` on the fake device, with ``kernel_log`` as what the
    kernel said during the reset with every group."""

    @contextmanager
    def open_device(bdf: str) -> Iterator[tuple[None, FakeGroup, FakeDevice]]:
        yield None, FakeGroup(OWN_GROUP), device

    monkeypatch.setattr(reset, "open_device", open_device)
    monkeypatch.setattr(reset, "_foreign_group", lambda needed: FakeGroup(FOREIGN_GROUP))
    monkeypatch.setattr(reset, "kmsg_cursor", lambda: 41)
    monkeypatch.setattr(reset, "kmsg_since", lambda cursor: {"lines": kernel_log})
    return reset.hot_reset_ownership(NVME)


@pytest.fixture(scope="module")
def checks() -> ModuleType:
    """conformance/test_reset.py, imported as the check catalogue imports it."""
    module = load_checks("test_reset.py", "rst_checks")
    return module


def judge(
    checks: ModuleType, result: dict[str, Any], backend: str = "type1v2"
) -> tuple[str, str, Evidence]:
    """RST-004 under ``backend`` on a DUT answering ``result``: (verdict, reason, evidence)."""
    lease = SimpleNamespace(bdf=NVME, call=lambda func, **kwargs: result)
    evidence = Evidence()
    try:
        checks.test_hot_reset_needs_ownership(lease, backend, evidence)
    except AssertionError as exc:
        return "FAIL", str(exc), evidence
    except pytest.skip.Exception as exc:
        return "SKIP", str(exc), evidence
    return "PASS", "", evidence


def test_port_hiding_its_link_fails_naming_the_port(
    monkeypatch: pytest.MonkeyPatch, sysfs: dict[str, list[bytes]], checks: ModuleType
) -> None:
    sysfs[NVME] = [config()]
    sysfs[PORT] = [config(lnkcap=LNKCAP_QEMU, lnksta=LNKSTA_DOWN)]
    result = dut(monkeypatch, FakeDevice(-errno.ENOSPC, -errno.ENOTTY), [LINK_LINE])

    verdict, reason, evidence = judge(checks, result)

    assert verdict == "FAIL"
    assert reason.startswith(f"VFIO_DEVICE_PCI_HOT_RESET of {NVME} with every group [6] got ")
    assert f"-ENOTTY: port {PORT} advertises Data Link Layer Link Active Reporting" in reason
    assert LINK_LINE in reason
    port = evidence.items["link"]["link_before"]["port"]
    assert port == {"bdf": PORT, **_port()}
    assert [e["result"] for e in evidence.items["ioctls"]] == ["0", "-EINVAL", "-EINVAL", "-ENOTTY"]


def test_port_reporting_its_link_passes(
    monkeypatch: pytest.MonkeyPatch, sysfs: dict[str, list[bytes]], checks: ModuleType
) -> None:
    sysfs[NVME] = [config()]
    sysfs[PORT] = [config(lnkcap=LNKCAP_QEMU, lnksta=LNKSTA_UP)]
    result = dut(monkeypatch, FakeDevice(-errno.ENOSPC, 0), [])

    assert "failure" not in result
    assert judge(checks, result)[:2] == ("PASS", "")


def test_device_lost_in_the_reset_fails_naming_the_device(
    monkeypatch: pytest.MonkeyPatch, sysfs: dict[str, list[bytes]], checks: ModuleType
) -> None:
    sysfs[NVME] = [config(), config(vendor=0xFFFF)]
    sysfs[PORT] = [config(lnkcap=LNKCAP_QEMU, lnksta=LNKSTA_UP)]
    not_ready = f"vfio-pci {NVME}: not ready 59999ms after bus reset; giving up"
    result = dut(monkeypatch, FakeDevice(-errno.ENOSPC, -errno.ENOTTY), [not_ready])

    verdict, reason, _ = judge(checks, result)

    assert verdict == "FAIL"
    assert f"{NVME} did not come back from the secondary bus reset" in reason
    assert not_ready in reason


def test_no_bus_or_slot_reset_skips_naming_the_kernel_source(
    monkeypatch: pytest.MonkeyPatch, sysfs: dict[str, list[bytes]], checks: ModuleType
) -> None:
    result = dut(monkeypatch, FakeDevice(-errno.ENODEV, 0), [])

    verdict, reason, _ = judge(checks, result)

    assert verdict == "SKIP"
    assert "ENODEV" in reason and "drivers/vfio/pci/vfio_pci_core.c" in reason


def test_ownership_not_enforced_fails_before_any_reset_question(
    monkeypatch: pytest.MonkeyPatch, sysfs: dict[str, list[bytes]], checks: ModuleType
) -> None:
    sysfs[NVME] = [config()]
    sysfs[PORT] = [config(lnkcap=LNKCAP_QEMU, lnksta=LNKSTA_UP)]
    device = FakeDevice(-errno.ENOSPC, 0)
    device.raw_hot_reset = lambda fds: 0  # type: ignore[method-assign]
    result = dut(monkeypatch, device, [])

    verdict, reason, _ = judge(checks, result)

    assert verdict == "FAIL"
    assert "with no group fd got 0, expected -EINVAL" in reason


# -- through the device's cdev (iommufd): the proof of ownership is the iommufd -------------

DEVID = 2


class FakeCdevDevice:
    """The hot reset ioctls of a device opened through its cdev: any group fd is EINVAL
    (vfio_pci_ioctl_pci_hot_reset), none resets when the iommufd owns every device reached
    (``owned``), else EINVAL."""

    def __init__(self, owned: bool = True, complete: int = 0) -> None:
        self.owned = owned
        self.complete = complete
        self.resets: list[list[int]] = []

    def raw_hot_reset_info(self) -> int:
        return -errno.ENOSPC

    def hot_reset_info(self) -> SimpleNamespace:
        flags = reset.uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID
        if self.owned:
            flags |= reset.uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
        return SimpleNamespace(flags=flags, devices=[SimpleNamespace(bdf=NVME, group_id=DEVID)])

    def raw_hot_reset(self, fds: list[int]) -> int:
        self.resets.append(fds)
        if fds:
            return -errno.EINVAL
        return self.complete if self.owned else -errno.EINVAL


def dut_cdev(monkeypatch: pytest.MonkeyPatch, device: Any) -> dict[str, Any]:
    """``reset.hot_reset_ownership`` under iommufd on the fake cdev-opened device."""

    @contextmanager
    def device_in(bdf: str, backend: str) -> Iterator[tuple[None, Any]]:
        assert backend == "iommufd"
        yield None, device

    monkeypatch.setattr(reset, "device_in", device_in)
    monkeypatch.setattr(reset.sysfs, "iommu_group", lambda bdf: OWN_GROUP)
    monkeypatch.setattr(
        reset, "_foreign_group", lambda needed: FakeGroup(FOREIGN_GROUP) if needed else None
    )
    monkeypatch.setattr(reset, "kmsg_cursor", lambda: 41)
    monkeypatch.setattr(reset, "kmsg_since", lambda cursor: {"lines": []})
    return reset.hot_reset_ownership(NVME, backend="iommufd")


@pytest.fixture
def link_up(sysfs: dict[str, list[bytes]]) -> None:
    sysfs[NVME] = [config()]
    sysfs[PORT] = [config(lnkcap=LNKCAP_QEMU, lnksta=LNKSTA_UP)]


@pytest.mark.usefixtures("link_up")
def test_cdev_group_fds_refused_and_the_iommufd_proof_resets(
    monkeypatch: pytest.MonkeyPatch, checks: ModuleType
) -> None:
    device = FakeCdevDevice()
    result = dut_cdev(monkeypatch, device)

    assert result["info"]["devices"] == [{"bdf": NVME, "devid": DEVID}]
    assert device.resets == [[FakeGroup(FOREIGN_GROUP).fd], []]
    assert (result["group_fds"], result["complete"]) == ("-EINVAL", "0")
    assert judge(checks, result, "iommufd")[:2] == ("PASS", "")


@pytest.mark.usefixtures("link_up")
def test_cdev_accepting_a_group_fd_fails(
    monkeypatch: pytest.MonkeyPatch, checks: ModuleType
) -> None:
    device = FakeCdevDevice()
    device.raw_hot_reset = lambda fds: 0  # type: ignore[method-assign]
    verdict, reason, _ = judge(checks, dut_cdev(monkeypatch, device), "iommufd")

    assert verdict == "FAIL"
    assert "(opened through its cdev) with a group fd got 0, expected -EINVAL" in reason


@pytest.mark.usefixtures("link_up")
def test_cdev_devices_not_owned_must_be_refused(
    monkeypatch: pytest.MonkeyPatch, checks: ModuleType
) -> None:
    device = FakeCdevDevice(owned=False)
    result = dut_cdev(monkeypatch, device)
    assert result["unowned"] == "-EINVAL" and "complete" not in result
    assert judge(checks, result, "iommufd")[:2] == ("PASS", "")

    result["unowned"] = "0"  # a kernel resetting devices another iommufd may own
    verdict, reason, _ = judge(checks, result, "iommufd")
    assert verdict == "FAIL" and "reset devices its iommufd does not own" in reason


@pytest.mark.usefixtures("link_up")
def test_cdev_reset_that_fails_names_why(
    monkeypatch: pytest.MonkeyPatch, checks: ModuleType
) -> None:
    result = dut_cdev(monkeypatch, FakeCdevDevice(complete=-errno.ENOTTY))
    verdict, reason, _ = judge(checks, result, "iommufd")
    assert verdict == "FAIL"
    assert "with every device owned by its iommufd got -ENOTTY" in reason
    assert "pci_reset_bus() gave up with ENOTTY" in reason
