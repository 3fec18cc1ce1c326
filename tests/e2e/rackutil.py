"""Helpers of the end-to-end tests: run the CLI as a user would, look inside a rack DUT."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from vfio_hil.lab.inventory import Host, load_inventory
from vfio_hil.lab.kernel import KernelImage
from vfio_hil.lab.provision import Provisioner
from vfio_hil.lab.rack import VirtualRack

HERE = Path(__file__).parent
E2E_INVENTORY = HERE / "inventory.yml"
#: The rack machine the lab-host tests boot, and the name their plain inventory gives it.
RACK_INVENTORY = HERE / "lab_host_rack.yml"
RACK_HOST = "e2e-labhost"
LAB_HOST = "lab-server-1"
#: The NVMe in the hotplug-capable slot (behind a PCIe root port), listed with its model.
NVME_HOTPLUG = "0000:01:00.0"
#: The NVMe on the root complex, listed without a model (the DUT's engine probe finds it).
NVME_PLAIN = "0000:00:05.0"
TESTDEV = "0000:00:07.0"
VFIO_HIL = str(Path(sys.executable).with_name("vfio-hil"))
#: The e2e platforms on the kernel the rack builds (tests/e2e/test_built_kernel.py).
BUILT_INVENTORY = HERE / "built_kernel.yml"
BUILT_KERNEL = "build:linux-source-6.12"
#: This clone, quoted for a DUT's shell.
REPO = shlex.quote(str(HERE.resolve().parents[1]))
#: A DUT-side test suite under TCG, with room for a loaded controller.
DUT_TIMEOUT_S = 1800


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


#: The e2e rack's machines the tests drive again after the suite run (e2e-intel: test_run,
#: test_core_integration; e2e-amd-pt: the five-run repeatability test, test_history,
#: test_perf); the others are stopped once the suite run has read them.
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


def cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``vfio-hil`` with ``args`` as they are (no ``--reports`` put in: for the commands whose
    options follow an action, such as ``results compare`` or ``cert build``)."""
    return subprocess.run([VFIO_HIL, *args], capture_output=True, text=True, check=False)


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


def dut_command(
    rack: VirtualRack, host: str, command: str, timeout: float = DUT_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run a shell command on a rack DUT as root; its exit status and output."""
    target = rack.ssh_target(host)
    return subprocess.run(
        ["ssh", "-F", str(target.ssh_config), "-o", "BatchMode=yes", host, command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dut_shell(rack: VirtualRack, host: str, command: str) -> str:
    """Run a shell command on a rack DUT and return its output (it must succeed)."""
    proc = dut_command(rack, host, command, timeout=120)
    proc.check_returncode()
    return proc.stdout


def dut_pytest(args: str) -> str:
    """The shell command that runs this clone's ``tests/dut`` (``args``: paths and options)
    inside a DUT, which sees the controller's filesystem at the same paths."""
    return f"cd {REPO} && .venv/bin/python -m pytest -p no:cacheprovider {args} -q -rs"


def pytest_summary(output: str) -> dict[str, int]:
    """Counts of pytest's final summary line ("104 passed, 41 skipped in 57.0s")."""
    lines = [line for line in output.splitlines() if re.search(r" in [\d.]+s", line)]
    if not lines:
        return {}
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", lines[-1])}


def skip_reasons(output: str) -> list[str]:
    """The reasons of the SKIPPED lines of a ``pytest -rs`` output."""
    return re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", output, re.MULTILINE)


@contextlib.contextmanager
def provisioned(
    rack: VirtualRack, inventory_path: Path, host: str, work_dir: Path
) -> Iterator[Host]:
    """One rack host provisioned as a run would (its devices' groups on vfio-pci) for the
    block, and restored after it."""
    inventory = load_inventory(inventory_path)
    target = inventory.hosts[host]
    provisioner = Provisioner(inventory, rack, work_dir, log=lambda m: print(f"[prov] {m}"))
    provisioner.setup(target)
    try:
        yield target
    finally:
        provisioner.teardown([target])


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


@dataclass(frozen=True)
class KernelBuild:
    """The rack kernel of ``BUILT_INVENTORY``, as the session's background build left it."""

    image: KernelImage
    #: False when the cache already held it, built from today's inputs.
    built: bool
    seconds: float


def build_rack_kernel() -> KernelBuild:
    """Build :data:`BUILT_KERNEL` unless the kernel cache holds it from today's inputs."""
    rack = VirtualRack(load_inventory(BUILT_INVENTORY), log=lambda m: print(f"[kernel] {m}"))
    built = rack.kernel_builds.cached(BUILT_KERNEL) is None
    start = time.monotonic()
    image = rack.kernel(BUILT_KERNEL)
    return KernelBuild(image, built, time.monotonic() - start)


@contextlib.contextmanager
def booted_rack(inventory: Path) -> Iterator[VirtualRack]:
    """The virtual machines of ``inventory``, booted for the block and stopped after it."""
    rack = VirtualRack(load_inventory(inventory), log=lambda m: print(f"[rack] {m}"))
    rack.up()
    try:
        yield rack
    finally:
        rack.down()


def write_lab_inventory(rack: VirtualRack, folder: Path) -> Path:
    """A plain lab-host inventory for the rack machine, as a lab engineer writes one for a
    real server: address, port, user and key; the host key pinned in a known_hosts file of
    its own; an ssh_config for the DUT channel; the devices to test. No vm_* variables."""
    target = rack.ssh_target(RACK_HOST)
    known_hosts = folder / "known_hosts"
    # The rack wrote the machine's host key for [127.0.0.1]:<port>; keep a copy of our own.
    shutil.copyfile(rack.state_dir(RACK_HOST) / "known_hosts", known_hosts)
    ssh_options = {
        "IdentitiesOnly": "yes",
        "UserKnownHostsFile": str(known_hosts),
        "StrictHostKeyChecking": "yes",
        "LogLevel": "ERROR",
        "ConnectTimeout": "20",
        "ServerAliveInterval": "15",
    }
    ssh_config = folder / "ssh_config"
    ssh_config.write_text(
        "\n".join(
            [
                f"Host {LAB_HOST}",
                f"  HostName {target.hostname}",
                f"  Port {target.port}",
                f"  User {target.user}",
                f"  IdentityFile {target.key}",
                *(f"  {k} {v}" for k, v in ssh_options.items()),
                "",
            ]
        )
    )
    host_vars = {
        "ansible_host": target.hostname,
        "ansible_port": target.port,
        "ansible_user": target.user,
        "ansible_ssh_private_key_file": str(target.key),
        # Ansible reaches 127.0.0.1 by address: give it the same host key pinning.
        "ansible_ssh_common_args": " ".join(f"-o {k}={v}" for k, v in ssh_options.items()),
        # The DUT channel (execnet over ssh) reads its own ssh_config.
        "vfio_hil_ssh_config": str(ssh_config),
        "vfio_devices": [
            {"bdf": NVME_HOTPLUG, "model": "nvme"},
            {"bdf": NVME_PLAIN},
            {"bdf": TESTDEV, "model": "pci-testdev"},
        ],
    }
    path = folder / "lab.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {LAB_HOST: host_vars}}}, sort_keys=False))
    return path


def lab_host_run(rack: VirtualRack, folder: Path) -> dict[str, Any]:
    """One `vfio-hil run` of the whole catalogue against a plain lab-host inventory naming
    the lab-host rack machine, with its PCI drivers before and after."""
    inventory = write_lab_inventory(rack, folder)
    before = pci_drivers(rack, RACK_HOST)
    run = run_cli(
        ["run", "--inventory", str(inventory), "--", *QUICK_PERF], folder / "reports", timeout=3000
    )
    after = pci_drivers(rack, RACK_HOST)
    return {"run": run, "inventory": inventory, "before": before, "after": after}
