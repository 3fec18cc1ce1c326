"""The host lock and group leases, with real keeper processes and real flocks in a folder."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from vfio_hil.lab.errors import ChannelError
from vfio_hil.lab.ownership import (
    Holder,
    HostBusyError,
    LockKeeper,
    holder_text,
    keeper_command,
)


def _keeper(lock_dir: Path, log: list[str] | None = None) -> LockKeeper:
    sink = log if log is not None else []
    return LockKeeper("dut0", keeper_command(None, sys.executable, str(lock_dir)), sink.append)


def _holder(run_id: str) -> Holder:
    return Holder(run_id=run_id, controller="ctl", pid=os.getpid(), checkout="/src/vfio-hil")


def test_a_second_run_waits_then_gives_up_naming_the_holder(tmp_path: Path) -> None:
    first, second = _keeper(tmp_path), _keeper(tmp_path, log := [])
    assert first.own(_holder("run-A")) == "held"
    with pytest.raises(HostBusyError) as busy:
        second.own(_holder("run-B"), wait_s=1.2)
    text = str(busy.value)
    assert text.startswith("host dut0 is held by run run-A (controller ctl")
    assert "checkout /src/vfio-hil" in text and "gave up after waiting 1 s" in text
    assert "\n" not in text
    assert log and "held by run run-A" in log[0] and log[0].endswith("waiting")
    first.close()


def test_the_second_run_gets_the_host_once_the_first_ends(tmp_path: Path) -> None:
    first, second = _keeper(tmp_path), _keeper(tmp_path)
    first.own(_holder("run-A"))
    first.close()
    assert second.own(_holder("run-B"), wait_s=5) == "held"
    assert second.holder()["run_id"] == "run-B"  # type: ignore[index]
    second.close()


def test_a_killed_session_leaves_no_stale_lock(tmp_path: Path) -> None:
    first, second = _keeper(tmp_path), _keeper(tmp_path)
    first.own(_holder("run-A"))
    os.kill(first._proc.pid, signal.SIGKILL)  # the controller's session dies, nothing else
    first._proc.wait()
    assert second.own(_holder("run-B"), wait_s=5) == "held"
    assert first.lost() is not None
    second.close()


def test_a_waiting_run_takes_the_host_when_the_holder_dies(tmp_path: Path) -> None:
    first, second = _keeper(tmp_path), _keeper(tmp_path)
    first.own(_holder("run-A"))
    start = time.monotonic()
    os.kill(first._proc.pid, signal.SIGKILL)
    assert second.own(_holder("run-B"), wait_s=10) == "held"
    assert time.monotonic() - start < 5
    second.close()


def test_processes_of_one_run_join_its_ownership(tmp_path: Path) -> None:
    cli, worker, other = _keeper(tmp_path), _keeper(tmp_path), _keeper(tmp_path)
    assert cli.own(_holder("run-A")) == "held"
    assert worker.own(_holder("run-A")) == "joined"
    with pytest.raises(HostBusyError):
        other.own(_holder("run-B"), wait_s=0.6)
    for k in (cli, worker):
        k.close()


def test_group_leases_exclude_other_sessions_and_count_in_one(tmp_path: Path) -> None:
    a, b = _keeper(tmp_path), _keeper(tmp_path)
    a.lease("group-12", _holder("run-A"))
    a.lease("group-12", _holder("run-A"))  # a check holding a peer of the same group
    a.release("group-12")
    with pytest.raises(HostBusyError, match="group-12 of dut0 is held by run run-A"):
        b.lease("group-12", _holder("run-A"), wait_s=0.6)
    b = _keeper(tmp_path)  # the abandoned wait ended that session
    b.lease("group-13", _holder("run-A"), wait_s=1)  # another group is free
    a.release("group-12")
    b.lease("group-12", _holder("run-A"), wait_s=5)
    for k in (a, b):
        k.close()


def test_nobody_holds_a_host_whose_keeper_is_gone(tmp_path: Path) -> None:
    first = _keeper(tmp_path)
    first.own(_holder("run-A"))
    first.close()
    probe = _keeper(tmp_path)
    assert probe.holder() is None
    assert holder_text(None) == "nobody"
    probe.close()


def test_a_keeper_that_cannot_start_is_a_channel_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ChannelError, match="lock keeper on dut0 did not start: cannot create"):
        _keeper(blocker / "locks")


def test_a_lost_session_is_a_channel_error_naming_its_end(tmp_path: Path) -> None:
    keeper = _keeper(tmp_path)
    os.kill(keeper._proc.pid, signal.SIGKILL)
    with pytest.raises(ChannelError, match="the session to dut0 ended"):
        keeper.lease("group-1", _holder("run-A"), wait_s=5)


def test_the_ssh_error_is_kept_for_every_later_question() -> None:
    # A session that cannot start: SSH's last words on stderr, then exit status 255.
    broken = [
        "sh",
        "-c",
        "echo 'ssh: connect to host dut0 port 22: Connection refused' >&2; exit 255",
    ]
    with pytest.raises(ChannelError, match="Connection refused") as first:
        LockKeeper("dut0", broken)
    assert "did not start" not in str(first.value)


def test_a_lost_keeper_names_the_same_cause_each_time() -> None:
    # A keeper that starts, then its session breaks with SSH's message on stderr.
    script = (
        "import json, sys, time; print(json.dumps({'ready': 1}), flush=True); time.sleep(0.2); "
        "sys.stderr.write('client_loop: send disconnect: Broken pipe' + chr(10)); sys.exit(255)"
    )
    keeper = LockKeeper("dut0", [sys.executable, "-c", script])
    keeper._proc.wait(10)
    reason = keeper.lost()
    assert reason == "the session to dut0 ended: client_loop: send disconnect: Broken pipe"
    assert keeper.lost() == reason  # its stderr can be read once: the cause is kept


def test_the_ssh_command_gets_its_own_connection() -> None:
    cmd = keeper_command(["ssh", "-F", "/rack/ssh_config", "vdut0"], "/usr/bin/python3")
    assert cmd[:7] == [
        "ssh",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        "BatchMode=yes",
    ]
    assert cmd[-2] == "vdut0"
    assert cmd[-1].startswith("/usr/bin/python3 -c ") and cmd[-1].endswith(" /run/vfio-hil")


def test_the_keeper_is_out_of_reach_of_the_terminals_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C reaches the run's process group; the keeper (its own session) keeps the lock
    until the run has restored the host and closes it."""
    keeper = _keeper(tmp_path)
    keeper.own(_holder("run-A"))
    assert os.getpgid(keeper._proc.pid) != os.getpgrp()
    keeper.close()
