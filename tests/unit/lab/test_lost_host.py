"""A lost host as the Lab tells it: QEMU's end and the console since the running check began
(a virtual host), the SSH error (a real one); noticed once, never asked again."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vfio_hil.lab import session as session_mod
from vfio_hil.lab.channel import ChannelLost
from vfio_hil.lab.inventory import load_inventory
from vfio_hil.lab.session import HostLostError, HostSession, Lab


class FakeRack:
    """What the Lab asks the rack about a machine that died."""

    def __init__(self, console: list[str], running: bool = False) -> None:
        self.console = console
        self.running = running

    def status(self, host: Any) -> SimpleNamespace:
        return SimpleNamespace(running=self.running)

    def console_size(self, name: str) -> int:
        return len(self.console)

    def console_since(self, name: str, mark: int) -> list[str]:
        return self.console[mark:]

    def qemu_log_tail(self, name: str) -> str:
        return "qemu-system-x86_64: terminating on signal 15 from pid 4242"


def _lab(tmp_path: Path, body: str, rack: Any) -> Lab:
    inv = tmp_path / "inv.yml"
    inv.write_text(body)
    return Lab(load_inventory(inv), tmp_path / "work", rack=rack, log=lambda m: None)


VIRTUAL = "all:\n  children:\n    virtual:\n      hosts:\n        vdut0: {}\n"
REAL = "all:\n  hosts:\n    lab-1: {vfio_devices: ['3b:00.0']}\n"


def test_a_virtual_host_names_qemus_end_and_the_panic_since_the_check_began(
    tmp_path: Path,
) -> None:
    rack = FakeRack(["[  1.0] booted", "BUG: kernel NULL pointer dereference"])  # an old one
    lab = _lab(tmp_path, VIRTUAL, rack)
    lab.mark_console("vdut0")
    rack.console += ["[ 90.1] Oops: 0000 [#1] PREEMPT SMP", "Kernel panic - not syncing: Fatal"]
    lost = lab._diagnose("vdut0", "probes.x on vdut0: channel broke after 0.1 s: EOFError")
    assert str(lost) == (
        "vdut0 lost: QEMU exited (the last line of its log: qemu-system-x86_64: terminating on "
        "signal 15 from pid 4242); console: [ 90.1] Oops: 0000 [#1] PREEMPT SMP; "
        "Kernel panic - not syncing: Fatal"
    )
    assert lost.panic == [
        "[ 90.1] Oops: 0000 [#1] PREEMPT SMP",
        "Kernel panic - not syncing: Fatal",
    ]


def test_a_running_virtual_host_whose_channel_broke_says_so(tmp_path: Path) -> None:
    lab = _lab(tmp_path, VIRTUAL, FakeRack([], running=True))
    lost = lab._diagnose("vdut0", "call timed out")
    assert str(lost) == "vdut0 lost: its channel broke (call timed out); console: nothing new"
    assert lost.panic == []


def test_a_real_host_names_what_ssh_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = _lab(tmp_path, REAL, None)
    seen = []

    def ssh(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 255, "", "ssh: connect to host 10.0.0.9 port 22: No route to host\n"
        )

    monkeypatch.setattr(session_mod.subprocess, "run", ssh)
    lost = lab._diagnose("lab-1", "probes.x on lab-1: channel broke after 3.0 s: EOFError")
    assert str(lost) == (
        "lab-1 lost: its channel broke (probes.x on lab-1: channel broke after 3.0 s: EOFError); "
        "ssh: ssh: connect to host 10.0.0.9 port 22: No route to host"
    )
    assert seen[0][-2:] == ["lab-1", "true"]


class BrokenChannel:
    """Breaks on its first call; counts every call."""

    host = "vdut0"
    ioctl_log = SimpleNamespace(entries=[])

    def __init__(self) -> None:
        self.calls = 0

    def call(self, func: str, **kwargs: Any) -> Any:
        self.calls += 1
        raise ChannelLost(f"{func} on vdut0: channel broke after 0.1 s")

    def close(self) -> None:
        pass


def test_a_session_notices_the_loss_once_and_never_asks_again(tmp_path: Path) -> None:
    channel = BrokenChannel()
    diagnosed = []

    def diagnose(name: str, error: str) -> HostLostError:
        diagnosed.append(error)
        return HostLostError(f"{name} lost: QEMU exited", ["Kernel panic - not syncing"])

    host = load_inventory(_write(tmp_path, VIRTUAL)).hosts["vdut0"]
    session = HostSession(host, {}, channel, diagnose=diagnose)
    with pytest.raises(HostLostError) as first:
        session.call("probes.x")
    with pytest.raises(HostLostError) as later:
        session.call("probes.y")
    assert channel.calls == 1 and diagnosed == ["probes.x on vdut0: channel broke after 0.1 s"]
    assert str(later.value) == str(first.value) == "vdut0 lost: QEMU exited"
    assert first.value.panic and not later.value.panic  # the panic is the first check's
    assert later.value is not first.value


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "inv.yml"
    path.write_text(body)
    return path
