"""Provisioning of DUT hosts through ansible-runner: preflight facts, setup (deploy the DUT-side
library, bind devices to vfio-pci), teardown (give devices back to their original drivers).

Every play's artifacts (stdout, events) stay in the run's report folder under ``ansible/``.
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ansible_runner
import yaml

import vfio_hil
from vfio_hil.lab.errors import ProvisioningError
from vfio_hil.lab.inventory import Host, Inventory
from vfio_hil.lab.rack import VirtualRack

ANSIBLE_DIR = Path(__file__).with_name("ansible")
PACKAGE_DIR = Path(vfio_hil.__file__).parent
DUT_PACKAGES = ("core", "dut")


def build_dut_zip(dest: Path) -> Path:
    """Zip the DUT-side part of ``vfio_hil`` (core library and DUT functions) for deployment."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(PACKAGE_DIR / "__init__.py", "vfio_hil/__init__.py")
        for sub in DUT_PACKAGES:
            for path in sorted((PACKAGE_DIR / sub).rglob("*.py")):
                zf.write(path, f"vfio_hil/{path.relative_to(PACKAGE_DIR)}")
    return dest


class Provisioner:
    """Runs the vfio-hil playbooks against the hosts of an inventory."""

    def __init__(
        self,
        inventory: Inventory,
        rack: VirtualRack | None,
        work_dir: Path,
        log: Callable[[str], None] = print,
    ) -> None:
        self.inventory = inventory
        self.rack = rack
        self.work_dir = work_dir
        self.log = log
        self._dut_zip: Path | None = None

    def host_vars(self, host: Host) -> dict[str, Any]:
        """Connection and vfio-hil variables of one host for the generated inventory."""
        hvars = {k: v for k, v in host.vars.items() if not k.startswith("vm_")}
        hvars["vfio_hil_device_bdfs"] = [d.bdf for d in host.devices]
        if self._dut_zip is None:
            self._dut_zip = build_dut_zip(self.work_dir / "vfio_hil_dut.zip")
        hvars["vfio_hil_dut_zip"] = str(self._dut_zip)
        if host.virtual:
            assert self.rack is not None
            target = self.rack.ssh_target(host.name)
            hvars.update(
                ansible_host=target.alias,
                ansible_ssh_common_args=f"-F {target.ssh_config}",
                ansible_python_interpreter="/usr/bin/python3",
            )
        return hvars

    def _write_inventory(self, hosts: list[Host], ident: str) -> Path:
        path = self.work_dir / f"inventory-{ident}.yml"
        data = {"all": {"hosts": {h.name: self.host_vars(h) for h in hosts}}}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def run_play(self, hosts: list[Host], playbook: str) -> dict[str, dict[str, Any]]:
        """Run one playbook against ``hosts`` (in parallel, Ansible forks); return
        ``{host: {task name: result}}``.

        Raises ProvisioningError naming the host, the task and Ansible's message on a failed
        task or an unreachable host.
        """
        names = [h.name for h in hosts]
        ident = f"{playbook.removesuffix('.yml')}-{names[0] if len(names) == 1 else 'all'}"
        inventory = self._write_inventory(hosts, ident)
        env = {
            "ANSIBLE_LIBRARY": str(ANSIBLE_DIR / "library"),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=120s",
            "ANSIBLE_TIMEOUT": "60",
            "ANSIBLE_FORKS": str(max(5, len(hosts))),
            # ansible-runner starts ansible-playbook by name: use this interpreter's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        result = ansible_runner.run(
            private_data_dir=str(self.work_dir),
            project_dir=str(ANSIBLE_DIR / "playbooks"),
            playbook=playbook,
            inventory=str(inventory),
            ident=ident,
            envvars=env,
            quiet=True,
            rotate_artifacts=0,
        )
        if result.status == "canceled":
            # ansible-runner swallows Ctrl-C and cancels the play: pass it on to our caller.
            raise KeyboardInterrupt
        tasks: dict[str, dict[str, Any]] = {name: {} for name in names}
        failures = []
        for event in result.events:
            data = event.get("event_data", {})
            kind = event.get("event")
            host = data.get("host", "")
            if kind == "runner_on_ok" and host in tasks:
                tasks[host][data.get("task", "")] = data.get("res", {})
            elif kind in ("runner_on_failed", "runner_on_unreachable"):
                if data.get("ignore_errors"):
                    continue
                res = data.get("res", {})
                msg = res.get("msg") or res.get("stderr") or "failed"
                failures.append(
                    f"{playbook} on {host}: {data.get('task')}: {str(msg).strip().splitlines()[0]}"
                )
        if failures or result.rc != 0:
            log = self.work_dir / "artifacts" / ident / "stdout"
            reason = "; ".join(failures) or f"{playbook}: ansible-playbook exit status {result.rc}"
            raise ProvisioningError(f"{reason} (log: {log})")
        return tasks

    def preflight(self, hosts: list[Host]) -> dict[str, dict[str, Any]]:
        """Gather platform facts of ``hosts`` and check that every device under test is there;
        return ``{host: platform facts}``."""
        plays = self.run_play(hosts, "preflight.yml")
        return {name: tasks["platform facts"]["platform"] for name, tasks in plays.items()}

    def setup(self, host: Host) -> dict[str, Any]:
        """Deploy the DUT library and bind the devices' IOMMU groups to vfio-pci; return the
        platform facts gathered afterwards."""
        self.log(f"{host.name}: provisioning (setup.yml: bind {len(host.devices)} devices)")
        return self.run_play([host], "setup.yml")[host.name]["platform facts"]["platform"]

    def teardown(self, hosts: list[Host]) -> dict[str, dict[str, Any]]:
        """Give every device bound by setup back to its original driver; return
        ``{host: restore result}``."""
        plays = self.run_play(hosts, "teardown.yml")
        return {name: tasks.get("restore devices", {}) for name, tasks in plays.items()}
