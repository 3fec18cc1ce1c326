"""Sharing a lab host: what CI lab racks do to the same machine from several runners.

One rack machine (``lab_host_rack.yml``) is driven through a plain lab-host inventory, as a
real server is: the host lock and the group leases live on the DUT, so two controllers (two
checkouts with caches of their own, as two CI runners have) see each other's runs. Then a
controller is killed with SIGKILL (``vfio-hil restore`` gives the devices back; no stale lock
blocks the next run), and last the DUT itself dies under a run (one reason, ERROR records,
exit 3, a short summary). The tests run in this order; the last one kills the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rackutil import (
    LAB_HOST,
    NVME_HOTPLUG,
    RACK_HOST,
    VFIO_HIL,
    pci_drivers,
    run_cli,
    write_lab_inventory,
)

from vfio_hil.lab.rack import VirtualRack
from vfio_hil.results import ResultsStore

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: Checks that hold and rebind whole groups (GRP) and do DMA (DMA-001): quick, and what
#: collided before the host lock.
SELECTION = ["-k", "GRP or DMA-001"]
#: Longer work, to be interrupted in the middle.
LONG_SELECTION = ["-k", "DMA or ISO"]


@pytest.fixture(scope="module")
def shared(lab_host_rack: VirtualRack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The rack machine (the lab-host tests' own), its plain inventory, and the PCI drivers
    it started with."""
    folder = tmp_path_factory.mktemp("shared")
    return {
        "rack": lab_host_rack,
        "inventory": write_lab_inventory(lab_host_rack, folder),
        "folder": folder,
        "drivers": pci_drivers(lab_host_rack, RACK_HOST),
    }


def _second_checkout(folder: Path) -> tuple[Path, dict[str, str]]:
    """Another checkout of the project with a home (caches, Ansible's sockets) of its own: a
    second CI runner. Returns its folder and the environment that runs its code."""
    checkout = folder / "vfio-hil-runner2"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("lib", "fixtures", "conformance"):
        shutil.copytree(ROOT / part, checkout / part, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", checkout)
    home = folder / "home-runner2"
    home.mkdir()  # long, as a CI runner's can be: the controller must cope
    env = {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": f"{checkout / 'lib'}:{checkout / 'fixtures'}",
    }
    env.pop("VFIO_HIL_HOME", None)
    return checkout, env


def _start(
    args: list[str], reports: Path, env: dict[str, str] | None = None, python_cli: bool = False
) -> subprocess.Popen[str]:
    """Start a controller (its own process group, as a CI job), output to files in
    ``reports``."""
    reports.mkdir(parents=True, exist_ok=True)
    cli = (
        [sys.executable, "-c", "import sys; from vfio_hil.lab.cli import main; sys.exit(main())"]
        if python_cli
        else [VFIO_HIL]
    )
    return subprocess.Popen(
        [*cli, args[0], "--reports", str(reports), *args[1:]],
        stdout=open(reports / "stdout", "w"),  # closed with the process
        stderr=open(reports / "stderr", "w"),
        text=True,
        env={**(env or os.environ), "VFIO_HIL_BASELINES": str(reports / "baselines")},
        start_new_session=True,
    )


def _text(reports: Path, name: str) -> str:
    return (reports / name).read_text()


def _results(reports: Path) -> dict[str, Any]:
    return json.loads((reports / "latest" / "results.json").read_text())


def _wait_for(
    what: str, ready: Any, proc: subprocess.Popen[str], reports: Path, timeout: float = 600
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = _text(reports, "stderr")[-2000:]
            raise AssertionError(f"the run ended or timed out before {what}: {tail}")
        time.sleep(0.5)


def _owned_run_id(reports: Path) -> str | None:
    found = re.search(r"owned by run (\S+)", _text(reports, "stderr"))
    return found.group(1) if found else None


def test_two_controllers_take_turns_and_a_short_wait_names_the_holder(
    shared: dict[str, Any], e2e_store: str
) -> None:
    folder: Path = shared["folder"]
    inventory = str(shared["inventory"])
    checkout, env2 = _second_checkout(folder)
    first = _start(["run", "--inventory", inventory, "--", *SELECTION], folder / "r1", env2, True)
    _wait_for(
        "the first run owned the host", lambda: _owned_run_id(folder / "r1"), first, folder / "r1"
    )
    time.sleep(10)
    second = _start(["run", "--inventory", inventory, "--", *SELECTION], folder / "r2")
    impatient = _start(
        ["run", "--inventory", inventory, "--lock-wait", "5", "--", *SELECTION], folder / "r3"
    )
    assert impatient.wait(300) == 3, _text(folder / "r3", "stderr")[-2000:]
    assert first.wait(900) == 0, _text(folder / "r1", "stderr")[-3000:]
    assert second.wait(900) == 0, _text(folder / "r2", "stderr")[-3000:]

    first_id = _owned_run_id(folder / "r1")
    # The first run was the other checkout's (PYTHONPATH took its code and its home).
    assert f"checkout {checkout}" in _text(folder / "r3", "stderr")
    errors = _text(folder / "r3", "stderr").strip().splitlines()
    assert re.fullmatch(
        rf"vfio-hil: error: host {LAB_HOST} is held by run {first_id} \(controller \S+, "
        rf"pid \d+, checkout {re.escape(str(checkout))}\) since \S+; gave up after waiting 5 s "
        r"\(--lock-wait\)",
        errors[-1],
    ), errors[-1]
    assert not (folder / "r3" / "latest" / "results.json").exists()  # no check ran
    # The second run waited, saying for whom, and then ran as cleanly as the first.
    assert f"is held by run {first_id}" in _text(folder / "r2", "stderr")
    for name in ("r1", "r2"):
        counts = _results(folder / name)["run"]["counts"]
        assert counts["FAIL"] == 0 and counts["ERROR"] == 0 and counts["PASS"] >= 10, counts
    r1, r2 = _results(folder / "r1")["run"], _results(folder / "r2")["run"]
    assert r2["started"] >= r1["finished"] or _owned_run_id(folder / "r2") != first_id
    assert pci_drivers(shared["rack"], RACK_HOST) == shared["drivers"]
    # Both controllers recorded their runs, whole, in the lab's one results store.
    with ResultsStore.open(e2e_store) as store:
        for name in ("r1", "r2"):
            document = _results(folder / name)
            assert len(store.results(document["run"]["id"])) == len(document["results"])


def test_restore_after_a_killed_controller(shared: dict[str, Any]) -> None:
    folder: Path = shared["folder"]
    rack: VirtualRack = shared["rack"]
    inventory = str(shared["inventory"])
    reports = folder / "killed"
    run = _start(["run", "--inventory", inventory, "--", *LONG_SELECTION], reports)

    def checking() -> bool:
        evidence = list(reports.glob("*/evidence/*.json"))
        return len(evidence) >= 3

    _wait_for("three checks had run", checking, run, reports)
    os.killpg(run.pid, signal.SIGKILL)  # the CI job is killed: controller, pytest, ssh
    run.wait(60)
    assert pci_drivers(rack, RACK_HOST)[NVME_HOTPLUG] == "vfio-pci"  # left behind

    restore = run_cli(["restore", "--inventory", inventory], folder / "restore-reports")
    assert restore.returncode == 0, restore.stderr[-2000:]
    assert f"{LAB_HOST}: {NVME_HOTPLUG} back on nvme" in restore.stdout
    assert pci_drivers(rack, RACK_HOST) == shared["drivers"]


def test_a_dut_lost_mid_run_is_one_reason_and_exit_3(shared: dict[str, Any]) -> None:
    """The run after the killed one (no stale lock held it back: it owned the host at once
    and ran checks), until the DUT dies under it."""
    folder: Path = shared["folder"]
    rack: VirtualRack = shared["rack"]
    reports = folder / "lost"
    run = _start(
        ["run", "--inventory", str(shared["inventory"]), "--lock-wait", "30", "--",
         *LONG_SELECTION],
        reports,
    )  # fmt: skip
    _wait_for(
        "three checks had run", lambda: len(list(reports.glob("*/evidence/*"))) >= 3, run, reports
    )
    assert "is held by run" not in _text(reports, "stderr")
    pid = rack.status(rack.inventory.hosts[RACK_HOST]).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the DUT dies
    assert run.wait(600) == 3, _text(reports, "stderr")[-3000:]

    results = _results(reports)
    lost = results["run"]["lost_hosts"]
    assert list(lost) == [LAB_HOST]
    reason = lost[LAB_HOST]
    # A real host: the channel's error and what SSH says now.
    assert reason.startswith(f"{LAB_HOST} lost: its channel broke") and "; ssh: " in reason
    counts = results["run"]["counts"]
    assert counts["FAIL"] == 0 and counts["ERROR"] >= 10, counts
    errors = [r for r in results["results"] if r["verdict"] == "ERROR"]
    assert {r["reason"] for r in errors} == {reason}  # one reason, noticed once
    stderr_errors = [ln for ln in _text(reports, "stderr").splitlines() if "error:" in ln]
    assert stderr_errors == [f"vfio-hil: error: {reason}"]
    stdout = _text(reports, "stdout")
    assert re.search(rf"\d+ checks\s+{LAB_HOST}\s+-\s+ERROR\s+{re.escape(reason)}", stdout)
    # Short: no traceback per check, one summary row for all the host left undone.
    assert len(stdout.splitlines()) < 60 + counts["PASS"] + counts["SKIP"], stdout[-3000:]
    assert "Traceback" not in stdout
