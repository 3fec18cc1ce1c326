"""Provisioning of DUT hosts through ansible-runner: preflight facts, setup (deploy the DUT-side
library, bind devices to vfio-pci), teardown (give devices back to their original drivers).

Every play's artifacts (stdout, events) stay in the run's report folder under ``ansible/``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import py_compile
import signal
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ansible_runner
import yaml

import vfio_hil
from vfio_hil.lab.channel import DUT_ZIP_PATH
from vfio_hil.lab.errors import InventoryError, ProvisioningError
from vfio_hil.lab.inventory import DEVICE_MODELS, DeviceModel, Host, Inventory
from vfio_hil.lab.rack import VirtualRack

ANSIBLE_DIR = Path(__file__).with_name("ansible")
PACKAGE_DIR = Path(vfio_hil.__file__).parent
DUT_PACKAGES = ("core", "dut")
#: Where Ansible's persistent SSH connections live. The socket is named by ssh's ``%C`` (a hash
#: of the address, port and user ssh resolved), not by Ansible's default (a hash of the
#: inventory name): every virtual rack reaches its ``vdut0`` through an alias of that name, so
#: under Ansible's default one rack's plays reused another rack's live connection and ran on
#: the other machine.
SSH_CONTROL_DIR = Path.home() / ".ansible" / "cp"
if len(str(SSH_CONTROL_DIR)) > 48:
    # A socket path holds at most 107 bytes, and the name adds 50: under a long home (a CI
    # runner's) the sockets go to a short folder of this user's instead.
    SSH_CONTROL_DIR = Path(tempfile.gettempdir()) / f"vfio-hil-cp-{os.getuid()}"
#: The compiled hot path (a stable-ABI extension built at install time): shipped in the zip,
#: so a DUT needs no compiler (``vfio_hil.core.perf.hotpath`` loads it from there).
DUT_NATIVE = "_hotpath*.so"


def build_dut_zip(dest: Path) -> Path:
    """Zip the DUT-side part of ``vfio_hil`` (core library and DUT functions) for deployment.

    Each module goes in as source and as bytecode of this Python (checked against the
    source's hash): a DUT Python of the same version imports without compiling, which costs
    seconds on a slow DUT and is paid again by every child process a check starts; any other
    version finds the bytecode's magic wrong and compiles the source.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    sources, natives = [PACKAGE_DIR / "__init__.py"], []
    for sub in DUT_PACKAGES:
        sources += sorted((PACKAGE_DIR / sub).rglob("*.py"))
        natives += sorted((PACKAGE_DIR / sub).rglob(DUT_NATIVE))
    with tempfile.TemporaryDirectory() as tmp:
        _zip_sources(dest, sources, Path(tmp) / "module.pyc")
        with zipfile.ZipFile(dest, "a", zipfile.ZIP_DEFLATED) as zf:
            for path in natives:
                zf.write(path, f"vfio_hil/{path.relative_to(PACKAGE_DIR)}")
    return dest


def _zip_sources(dest: Path, sources: list[Path], scratch_pyc: Path) -> None:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sources:
            arcname = f"vfio_hil/{path.relative_to(PACKAGE_DIR)}"
            zf.write(path, arcname)
            pyc = py_compile.compile(
                str(path),
                cfile=str(scratch_pyc),
                dfile=f"{DUT_ZIP_PATH}/{arcname}",
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )
            zf.write(pyc, f"{arcname}c")


def _hex(text: str | None) -> int | None:
    """A sysfs hex value (``0x1b36``) as an integer, None when absent or unreadable."""
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def _ids(vendor: int | None, device: int | None) -> str | None:
    return None if vendor is None or device is None else f"{vendor:04x}:{device:04x}"


def _class_text(code: int) -> str:
    """A class code as base class, subclass and programming interface: ``01:08:02``."""
    return f"{code >> 16:02x}:{(code >> 8) & 0xFF:02x}:{code & 0xFF:02x}"


def device_identity(facts: dict[str, Any]) -> dict[str, str | None]:
    """What a device says it is, from its platform facts (the registers of its config space
    as the DUT's sysfs shows them): ``vendor_device``, ``subsystem_vendor_device``,
    ``class_code`` (``01:08:02``), ``revision`` and ``dsn``, its PCIe Device Serial Number
    (``00-1b-21-ff-ff-a1-b2-c3``); None for what sysfs did not show (most emulated devices,
    and every conventional PCI one, have no serial number)."""
    pci_class, revision = _hex(facts.get("class")), _hex(facts.get("revision"))
    return {
        "vendor_device": _ids(_hex(facts.get("vendor")), _hex(facts.get("device"))),
        "subsystem_vendor_device": _ids(
            _hex(facts.get("subsystem_vendor")), _hex(facts.get("subsystem_device"))
        ),
        "class_code": None if pci_class is None else _class_text(pci_class),
        "revision": None if revision is None else f"{revision:02x}",
        "dsn": facts.get("dsn"),
    }


def _model_text(model: DeviceModel) -> str:
    """What a model requires of a device: ``1234:11e8``, ``class 01:08:02``."""
    parts = [f"{model.vendor_id:04x}:{model.device_id:04x}"] if model.vendor_id else []
    if model.class_code is not None:
        parts.append(f"class {_class_text(model.class_code)}")
    return ", ".join(parts)


def model_contradiction(model: DeviceModel, facts: dict[str, Any]) -> str | None:
    """What the device is, when its platform facts contradict ``model`` (its IDs or class
    code differ from the model's); None when they match or the model requires nothing."""
    vendor, device, pci_class = (_hex(facts.get(k)) for k in ("vendor", "device", "class"))
    ids_match = not model.vendor_id or (vendor, device) == (model.vendor_id, model.device_id)
    class_match = model.class_code is None or pci_class == model.class_code
    if ids_match and class_match:
        return None
    identity = device_identity(facts)
    return f"{identity['vendor_device']}, class {identity['class_code']}"


def check_device_models(host: Host, devices: dict[str, dict[str, Any]]) -> None:
    """Raise InventoryError (one line: host, BDF, listed model, what the device is) when a
    device of ``host`` is not what its listed model says; ``devices`` are the platform facts'
    devices of the host. A device listed without a model (``generic``) matches anything."""
    wrong = []
    for dev in host.devices:
        model = DEVICE_MODELS[dev.model]
        found = model_contradiction(model, devices.get(dev.bdf, {}))
        if found is not None:
            wrong.append(
                f"{dev.bdf} is listed as model {dev.model} ({_model_text(model)}), "
                f"but the device is {found}"
            )
    if wrong:
        raise InventoryError(f"{host.name}: " + "; ".join(wrong))


@contextlib.contextmanager
def _interrupt_watch() -> Iterator[Callable[[], bool]]:
    """Notice Ctrl-C and SIGTERM during a play; yield the question "did one come?".

    ansible-runner's own watch replaces the process's SIGINT and SIGTERM handlers for good,
    so a Ctrl-C after the first play would be swallowed and the run would go on. Ours is
    given to it as its cancel callback and puts the previous handlers back after the play.
    Outside the main thread no handler can be set: the question is then always "no".
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    came = threading.Event()

    def note(signum: int, frame: object) -> None:
        came.set()

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield came.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
        if host.virtual:
            assert self.rack is not None
            target = self.rack.ssh_target(host.name)
            hvars.update(
                ansible_host=target.alias,
                ansible_ssh_common_args=f"-F {target.ssh_config}",
                ansible_python_interpreter="/usr/bin/python3",
            )
        return hvars

    def dut_package(self) -> str:
        """The DUT-side package (zip, built once, kept in the work dir) as base64, the way
        setup.yml's ``vfio_hil_deploy`` takes it."""
        if self._dut_zip is None:
            self._dut_zip = build_dut_zip(self.work_dir / "vfio_hil_dut.zip")
        return base64.b64encode(self._dut_zip.read_bytes()).decode("ascii")

    def _write_inventory(
        self, hosts: list[Host], ident: str, group_vars: dict[str, Any] | None = None
    ) -> Path:
        path = self.work_dir / f"inventory-{ident}.yml"
        data: dict[str, Any] = {"all": {"hosts": {h.name: self.host_vars(h) for h in hosts}}}
        if group_vars:
            data["all"]["vars"] = group_vars
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def run_play(
        self, hosts: list[Host], playbook: str, group_vars: dict[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Run one playbook against ``hosts`` (in parallel, Ansible forks), with ``group_vars``
        set for all of them; return ``{host: {task name: result}}``.

        Raises ProvisioningError naming the host, the task and Ansible's message on a failed
        task or an unreachable host.
        """
        names = [h.name for h in hosts]
        ident = f"{playbook.removesuffix('.yml')}-{names[0] if len(names) == 1 else 'all'}"
        inventory = self._write_inventory(hosts, ident, group_vars)
        SSH_CONTROL_DIR.mkdir(parents=True, exist_ok=True)
        env = {
            "ANSIBLE_LIBRARY": str(ANSIBLE_DIR / "library"),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_SSH_ARGS": (
                "-C -o ControlMaster=auto -o ControlPersist=120s "
                f"-o ControlPath={SSH_CONTROL_DIR}/vfio-hil-%C"
            ),
            "ANSIBLE_TIMEOUT": "60",
            "ANSIBLE_FORKS": str(max(5, len(hosts))),
            # ansible-runner starts ansible-playbook by name: use this interpreter's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        with _interrupt_watch() as interrupted:
            result = ansible_runner.run(
                private_data_dir=str(self.work_dir),
                project_dir=str(ANSIBLE_DIR / "playbooks"),
                playbook=playbook,
                inventory=str(inventory),
                ident=ident,
                envvars=env,
                quiet=True,
                rotate_artifacts=0,
                cancel_callback=interrupted,
            )
        if interrupted() or result.status == "canceled":
            # Ctrl-C during the play (which cancels it, or came as it ended): our caller's.
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
        """Gather platform facts of ``hosts``, check that every device under test is there and
        is what its listed model says (InventoryError otherwise, before anything changed);
        return ``{host: platform facts}``."""
        plays = self.run_play(hosts, "preflight.yml")
        facts = {name: tasks["platform facts"]["platform"] for name, tasks in plays.items()}
        for host in hosts:
            check_device_models(host, facts[host.name]["devices"])
        return facts

    def setup(self, host: Host) -> dict[str, Any]:
        """Deploy the DUT library and bind the devices' IOMMU groups to vfio-pci; return the
        platform facts gathered afterwards."""
        self.log(f"{host.name}: provisioning (setup.yml: bind {len(host.devices)} devices)")
        plays = self.run_play([host], "setup.yml", {"vfio_hil_dut_package": self.dut_package()})
        return plays[host.name]["platform facts"]["platform"]

    def teardown(self, hosts: list[Host]) -> dict[str, dict[str, Any]]:
        """Give every device bound by setup back to its original driver; return
        ``{host: restore result}``."""
        plays = self.run_play(hosts, "teardown.yml")
        return {name: tasks.get("restore devices", {}) for name, tasks in plays.items()}
