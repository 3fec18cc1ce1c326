"""Runs sharing rack machines: a machine a run booted is stopped when the last run using it
ends, never under another's feet; ``rack up`` keeps machines; state belongs to a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfio_hil.lab import rack
from vfio_hil.lab.inventory import load_inventory


@pytest.fixture
def fake_rack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[rack.VirtualRack]:
    """A rack whose boots write the pid of a live stand-in process and whose stops record."""
    monkeypatch.delenv("VFIO_HIL_HOME", raising=False)
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  children:\n    virtual:\n      hosts:\n        h: {}\n        g: {}\n")
    r = rack.VirtualRack(load_inventory(inv), home=tmp_path / "home", log=lambda m: None)
    stand_ins: list[subprocess.Popen[bytes]] = []
    r.stopped = []  # type: ignore[attr-defined]

    def boot(names=None):  # type: ignore[no-untyped-def]
        for host in r.virtual_hosts(names):
            state = r.state_dir(host.name)
            if r._pid(state) is None:
                state.mkdir(parents=True, exist_ok=True)
                stand_ins.append(
                    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                )
                (state / "qemu.pid").write_text(str(stand_ins[-1].pid))
        return []

    def stop(name: str) -> None:
        r.stopped.append(name)  # type: ignore[attr-defined]
        (r.state_dir(name) / "qemu.pid").unlink()
        (r.state_dir(name) / "transient").unlink(missing_ok=True)

    monkeypatch.setattr(r, "_up", boot)
    monkeypatch.setattr(r, "_stop", stop)
    yield r
    for p in stand_ins:
        p.kill()
        p.wait()


def _other_user(r: rack.VirtualRack, name: str, pid: int) -> None:
    (r.state_dir(name) / "users" / str(pid)).touch()


def test_the_last_run_stops_what_a_run_booted(fake_rack: rack.VirtualRack) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with fake_rack.use(["h"]) as booted:
            assert booted == ["h"]
            _other_user(fake_rack, "h", other.pid)  # a second run joined
        assert fake_rack.stopped == []  # type: ignore[attr-defined]
        other.kill()
        other.wait()
        with fake_rack.use(["h"]) as booted:  # the machine still runs: not booted again
            assert booted == []
        assert fake_rack.stopped == ["h"]  # type: ignore[attr-defined]
    finally:
        other.kill()


def test_dead_users_do_not_keep_a_machine_up(fake_rack: rack.VirtualRack) -> None:
    with fake_rack.use(["h"]):
        _other_user(fake_rack, "h", 2**22 + 12345)  # a pid that is not running
    assert fake_rack.stopped == ["h"]  # type: ignore[attr-defined]


def test_machines_booted_by_rack_up_or_kept_stay_up(fake_rack: rack.VirtualRack) -> None:
    fake_rack.up(["h"], persist=True)
    with fake_rack.use(["h", "g"], keep=True):
        pass
    with fake_rack.use(["h"]):
        pass
    assert fake_rack.stopped == []  # type: ignore[attr-defined]


def test_rack_up_keeps_a_machine_a_run_booted(fake_rack: rack.VirtualRack) -> None:
    with fake_rack.use(["h"]):
        fake_rack.up(["h"], persist=True)
    assert fake_rack.stopped == []  # type: ignore[attr-defined]


def test_rack_state_belongs_to_the_checkout_unless_a_lab_home_is_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VFIO_HIL_HOME", raising=False)
    one = rack.checkout_tag(Path("/ci/runner1/vfio-hil"))
    two = rack.checkout_tag(Path("/ci/runner2/vfio-hil"))
    assert one != two and one.startswith("vfio-hil-") and two.startswith("vfio-hil-")
    assert rack.default_racks(tmp_path) == tmp_path / "racks" / rack.checkout_tag()
    monkeypatch.setenv("VFIO_HIL_HOME", str(tmp_path / "lab"))
    assert rack.default_racks(tmp_path / "lab") == tmp_path / "lab" / "racks"
    assert os.path.basename(rack.checkout_tag()).startswith(
        Path(rack.__file__).parents[3].name[:24]
    )
