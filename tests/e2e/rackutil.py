"""Helpers of the end-to-end tests: run the CLI as a user would, look inside a rack DUT."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vfio_hil.lab.inventory import load_inventory
from vfio_hil.lab.rack import VirtualRack

HERE = Path(__file__).parent
E2E_INVENTORY = HERE / "inventory.yml"
VFIO_HIL = str(Path(sys.executable).with_name("vfio-hil"))


@dataclass
class CliRun:
    """One finished `vfio-hil` invocation."""

    returncode: int
    stdout: str
    stderr: str
    reports: Path

    @property
    def results(self) -> dict[str, Any]:
        """The run's results.json."""
        return json.loads((self.reports / "latest" / "results.json").read_text())


#: The e2e rack's machines the tests drive again after the suite run (test_run, test_perf,
#: test_core_integration; the five-run repeatability test); the others are stopped once the
#: suite run has read them, so that idle machines do not slow the rest on a 2-core controller.
REUSED_HOST = "e2e-intel"
REPEAT_HOST = "e2e-amd-pt"

#: pytest options that keep the PERF checks short where the e2e tests only need their
#: verdicts (their figures are judged in test_perf.py, and timed in `make bench`).
QUICK_PERF = ["--perf-seconds", "0.3", "--perf-warmup", "0.05"]


def run_cli(args: list[str], reports: Path, timeout: float = 900) -> CliRun:
    """Run the vfio-hil CLI as a user would, with baselines of its own (``reports/baselines``,
    empty unless the test saves one there) so that no baseline of the checkout judges it."""
    proc = subprocess.run(
        [VFIO_HIL, args[0], "--reports", str(reports), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "VFIO_HIL_BASELINES": str(reports / "baselines")},
    )
    return CliRun(proc.returncode, proc.stdout, proc.stderr, reports)


def interrupt_cli_when(args: list[str], reports: Path, ready: Any, timeout: float = 600) -> CliRun:
    """Start the CLI in its own process group, send the group SIGINT (as Ctrl-C in a terminal
    does) once ``ready()`` is true, and wait for it to finish."""
    proc = subprocess.Popen(
        [VFIO_HIL, args[0], "--reports", str(reports), *args[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended before it could be interrupted: {err[-2000:]}")
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return CliRun(proc.returncode, out, err, reports)


def dut_shell(rack: VirtualRack, host: str, command: str) -> str:
    """Run a shell command on a rack DUT and return its output."""
    target = rack.ssh_target(host)
    proc = subprocess.run(
        ["ssh", "-F", str(target.ssh_config), "-o", "BatchMode=yes", host, command],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stdout


def pci_drivers(rack: VirtualRack, host: str) -> dict[str, str]:
    """Every PCI device of a DUT and the driver it is bound to ('' for none)."""
    out = dut_shell(
        rack,
        host,
        'for d in /sys/bus/pci/devices/*; do echo "${d##*/} $(basename "$(readlink $d/driver)")"; '
        "done",
    )
    result = {}
    for line in out.splitlines():
        bdf, _, drv = line.partition(" ")
        result[bdf] = "" if drv in ("", ".") else drv
    return result


@contextlib.contextmanager
def booted_rack(inventory: Path) -> Iterator[VirtualRack]:
    """The virtual machines of ``inventory``, booted for the block and stopped after it."""
    rack = VirtualRack(load_inventory(inventory), log=lambda m: print(f"[rack] {m}"))
    rack.up()
    try:
        yield rack
    finally:
        rack.down()
