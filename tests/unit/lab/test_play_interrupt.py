"""Ctrl-C during and after an Ansible play: real ansible-runner, a real play on this machine
(local connection), real signals to this process."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfio_hil.lab import provision
from vfio_hil.lab.inventory import load_inventory
from vfio_hil.lab.provision import Provisioner


class Interrupted(Exception):
    """What this test's own SIGINT handler raises, to tell it from pytest's."""


def _ours(signum: int, frame: object) -> None:
    raise Interrupted


@pytest.fixture
def our_handler() -> Iterator[None]:
    """SIGINT handled by ``_ours`` for the test, the previous handler back after it."""
    previous = signal.signal(signal.SIGINT, _ours)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _local_play(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str) -> Provisioner:
    """A Provisioner whose playbook ``play.yml`` runs ``task`` (a shell command) on this
    machine."""
    playbooks = tmp_path / "ansible" / "playbooks"
    playbooks.mkdir(parents=True)
    (playbooks / "play.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - name: the task\n      ansible.builtin.shell: '{task}'\n"
    )
    monkeypatch.setattr(provision, "ANSIBLE_DIR", tmp_path / "ansible")
    inventory_file = tmp_path / "inv.yml"
    inventory_file.write_text(
        "all:\n  hosts:\n    here:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
        "      vfio_devices: [{bdf: '00:00.0'}]\n"
    )
    return Provisioner(load_inventory(inventory_file), None, tmp_path / "work")


@pytest.mark.usefixtures("our_handler")
def test_a_play_leaves_the_sigint_handler_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provisioner = _local_play(tmp_path, monkeypatch, "true")
    hosts = list(provisioner.inventory.hosts.values())
    provisioner.run_play(hosts, "play.yml")
    provisioner.run_play(hosts, "play.yml")
    # ansible-runner's own watch would have taken SIGINT for good: Ctrl-C after a play
    # would then be swallowed and a run would go on as if nothing happened.
    assert signal.getsignal(signal.SIGINT) is _ours
    with pytest.raises(Interrupted):
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.usefixtures("our_handler")
def test_ctrl_c_as_a_play_ends_reaches_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The play's only task sends the Ctrl-C, then the play ends successfully.
    provisioner = _local_play(tmp_path, monkeypatch, f"kill -INT {os.getpid()}")
    with pytest.raises(KeyboardInterrupt):
        provisioner.run_play(list(provisioner.inventory.hosts.values()), "play.yml")
    assert signal.getsignal(signal.SIGINT) is _ours
