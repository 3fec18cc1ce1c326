#!/usr/bin/python3
"""Ansible module: bind PCI devices and their IOMMU groups to vfio-pci, and restore.

Every original binding is journaled before anything is changed, so a restore
after a crash (of the controller, the test or the module itself) still knows
where each device came from. The logic lives in plain functions taking a
``root`` path and a sysfs writer so the unit tests can run it against a fake
sysfs tree without Ansible.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from typing import Any, Callable

DOCUMENTATION = r"""
module: vfio_pci_bind
short_description: Bind PCI devices (with their IOMMU groups) to vfio-pci and restore them
description:
  - C(state=bound) journals the original driver and driver_override of every
    non-bridge device in the IOMMU groups of I(devices), then binds them all
    to vfio-pci through driver_override.
  - C(state=restored) puts every journaled device back on its original driver
    and removes the journal once all are restored.
options:
  devices:
    description: PCI addresses (C(0000:00:04.0) or C(00:04.0)); required for C(state=bound).
    type: list
    elements: str
  state:
    description: Whether the devices should be bound to vfio-pci or restored.
    type: str
    choices: [bound, restored]
    default: bound
  journal:
    description: Where the original bindings are recorded.
    type: path
    default: /var/lib/vfio-hil/bindings.json
  release_holders:
    description: Before restoring, end every process that still holds the VFIO group node
      (or device cdev) of a journaled device (a run that died left them; the caller owns the
      host, so no live run does). Binding does it too when a journal is left over.
    type: bool
    default: true
  skip_ungrouped:
    description: Leave devices that are in no IOMMU group alone (listed in C(ungrouped))
      instead of failing; the checks then report the platform. In VFIO's no-IOMMU mode
      (vfio.enable_unsafe_noiommu_mode=Y once vfio-pci is loaded) such devices are bound
      instead (listed in C(noiommu)): vfio-pci gives each a no-IOMMU group of its own,
      /dev/vfio/noiommu-N, which the library refuses unless asked for it by name.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: bind devices
  vfio_pci_bind:
    devices: ["0000:00:04.0", "0000:00:06.0"]
    state: bound

- name: restore devices
  vfio_pci_bind:
    state: restored
"""

RETURN = r"""
bindings:
  description: For state=bound, every bound device -> {original_driver, driver}.
  returned: state=bound
  type: dict
groups:
  description: For state=bound, every bound device -> its IOMMU group number.
  returned: state=bound
  type: dict
noiommu:
  description: For state=bound, the requested devices that were in no IOMMU group and got
    a no-IOMMU group from vfio-pci (VFIO's no-IOMMU mode is on).
  returned: state=bound
  type: list
restored:
  description: For state=restored, every restored device -> {original_driver, driver}.
  returned: state=restored
  type: dict
failures:
  description: For state=restored, every device that could not be restored -> reason.
  returned: state=restored
  type: dict
released:
  description: Processes ended because they held a journaled device's VFIO node
    (pid, command line, node).
  returned: always
  type: list
"""

VFIO_DRIVER = "vfio-pci"
#: The vfio module's switch of no-IOMMU mode ("Y" when on), once vfio is loaded.
NOIOMMU_PARAM = "sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
JOURNAL_VERSION = 1
DEFAULT_JOURNAL = "/var/lib/vfio-hil/bindings.json"
BDF_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<slot>[0-9a-fA-F]{2})\.(?P<func>[0-7])$"
)

Writer = Callable[[str, str], None]
Loader = Callable[[str], None]
Killer = Callable[[int], None]
#: How long a process ended by release_holders may take to go.
RELEASE_WAIT_S = 10.0


class BindError(Exception):
    """A device could not be bound; the message is shown to the operator."""


def normalize_bdf(text: str) -> str:
    """Return the canonical ``dddd:bb:ss.f`` form of a PCI address.

    Raises BindError for anything that is not a PCI address.
    """
    match = BDF_RE.match(text.strip())
    if match is None:
        raise BindError(f"{text!r} is not a PCI address (expected 0000:00:04.0)")
    domain = match.group("domain") or "0000"
    return f"{domain}:{match['bus']}:{match['slot']}.{match['func']}".lower()


def write_sysfs(path: str, value: str) -> None:
    """Write one value to a sysfs attribute; the kernel reports refusals as OSError."""
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


def device_dir(root: str, bdf: str) -> str:
    """Return the sysfs directory of a PCI device."""
    return os.path.join(root, "sys/bus/pci/devices", bdf)


def driver_dir(root: str, driver: str) -> str:
    """Return the sysfs directory of a PCI driver."""
    return os.path.join(root, "sys/bus/pci/drivers", driver)


def current_driver(root: str, bdf: str) -> str | None:
    """Return the name of the driver a device is bound to, or None."""
    try:
        return os.path.basename(os.readlink(os.path.join(device_dir(root, bdf), "driver")))
    except OSError:
        return None


def driver_override(root: str, bdf: str) -> str | None:
    """Return a device's driver_override, or None when it is not set."""
    with open(os.path.join(device_dir(root, bdf), "driver_override"), encoding="ascii") as handle:
        value = handle.read().strip()
    # The kernel reports an unset override as "(null)".
    return None if value in ("", "(null)") else value


def iommu_group(root: str, bdf: str) -> int | None:
    """Return a device's IOMMU group number, or None when it has none."""
    link = os.path.join(device_dir(root, bdf), "iommu_group")
    try:
        return int(os.path.basename(os.readlink(link)))
    except (OSError, ValueError):
        return None


def group_members(root: str, group: int) -> list[str]:
    """Return the PCI devices of an IOMMU group."""
    members = os.listdir(os.path.join(root, "sys/kernel/iommu_groups", str(group), "devices"))
    # Non-PCI members (platform devices on some SoCs) cannot go to vfio-pci.
    return sorted(name for name in members if os.path.isdir(device_dir(root, name)))


def is_bridge(root: str, bdf: str) -> bool:
    """Tell whether a device is a PCI-to-PCI bridge (class 0x0604xx)."""
    with open(os.path.join(device_dir(root, bdf), "class"), encoding="ascii") as handle:
        return handle.read().strip().lower().startswith("0x0604")


def load_journal(path: str) -> dict[str, dict[str, str | None]]:
    """Return the journaled original bindings, {} when there is no journal."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise BindError(f"cannot read binding journal {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != JOURNAL_VERSION:
        raise BindError(f"binding journal {path} has an unknown format")
    return data["devices"]


def save_journal(path: str, entries: dict[str, dict[str, str | None]]) -> None:
    """Replace the journal atomically, so a crash leaves the old or the new one."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".bindings-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(
                {"version": JOURNAL_VERSION, "devices": entries}, handle, indent=2, sort_keys=True
            )
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sysfs_write(writer: Writer, path: str, value: str, bdf: str) -> None:
    """Write through ``writer``, turning kernel refusals into a BindError."""
    try:
        writer(path, value)
    except OSError as exc:
        raise BindError(
            f"{bdf}: writing {value.strip() or 'newline'!r} to {path} failed: {exc}"
        ) from exc


def check_requested(
    root: str, devices: list[str], skip_ungrouped: bool = False
) -> tuple[dict[str, int], list[str]]:
    """Validate the requested devices; return each one's IOMMU group, and the devices in no
    group (those are an error unless ``skip_ungrouped``: then they are left alone, and the
    checks report the platform)."""
    host = socket.gethostname()
    groups: dict[str, int] = {}
    ungrouped: list[str] = []
    for bdf in devices:
        if not os.path.isdir(device_dir(root, bdf)):
            raise BindError(f"device {bdf} is not present on {host}")
        group = iommu_group(root, bdf)
        if group is None and skip_ungrouped:
            ungrouped.append(bdf)
            continue
        if group is None:
            raise BindError(
                f"device {bdf} has no IOMMU group: the IOMMU is off or absent on {host} "
                "(enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on or amd_iommu=on)"
            )
        if is_bridge(root, bdf):
            raise BindError(f"device {bdf} is a PCI bridge; vfio-pci cannot bind bridges")
        groups[bdf] = group
    return groups, ungrouped


def ensure_vfio_driver(root: str, load_driver: Loader | None) -> None:
    """Make sure the vfio-pci driver is registered, loading it if needed."""
    if not os.path.isdir(driver_dir(root, VFIO_DRIVER)) and load_driver is not None:
        load_driver(VFIO_DRIVER)
    if not os.path.isdir(driver_dir(root, VFIO_DRIVER)):
        raise BindError(f"the {VFIO_DRIVER} driver is not available (modprobe vfio-pci)")


def noiommu_mode(root: str) -> bool:
    """Whether VFIO's no-IOMMU mode is on: vfio-pci then gives a device in no IOMMU group a
    no-IOMMU group of its own when it binds it (False while vfio is not loaded)."""
    try:
        with open(os.path.join(root, NOIOMMU_PARAM), encoding="ascii") as handle:
            return handle.read().strip() == "Y"
    except FileNotFoundError:
        return False


def bind_one(root: str, bdf: str, writer: Writer) -> bool:
    """Move one device to vfio-pci; return whether anything was written."""
    changed = False
    if driver_override(root, bdf) != VFIO_DRIVER:
        # The override keeps any other driver from claiming the device later.
        sysfs_write(
            writer, os.path.join(device_dir(root, bdf), "driver_override"), VFIO_DRIVER, bdf
        )
        changed = True
    driver = current_driver(root, bdf)
    if driver == VFIO_DRIVER:
        return changed
    if driver is not None:
        sysfs_write(writer, os.path.join(driver_dir(root, driver), "unbind"), bdf, bdf)
    sysfs_write(writer, os.path.join(root, "sys/bus/pci/drivers_probe"), bdf, bdf)
    driver = current_driver(root, bdf)
    if driver != VFIO_DRIVER:
        raise BindError(
            f"device {bdf} did not bind to {VFIO_DRIVER}: it is bound to {driver or 'no driver'}"
        )
    return True


def vfio_nodes(root: str, bdfs: list[str]) -> set[str]:
    """The VFIO nodes through which ``bdfs`` can be held: their groups' ``/dev/vfio/N`` (or
    ``/dev/vfio/noiommu-N``) and their device cdevs ``/dev/vfio/devices/vfioN``."""
    nodes = set()
    for bdf in bdfs:
        group = iommu_group(root, bdf)
        if group is not None:
            nodes.update((f"/dev/vfio/{group}", f"/dev/vfio/noiommu-{group}"))
        cdevs = os.path.join(device_dir(root, bdf), "vfio-dev")
        if os.path.isdir(cdevs):
            nodes.update(f"/dev/vfio/devices/{name}" for name in os.listdir(cdevs))
    return nodes


def node_holders(root: str, nodes: set[str]) -> list[dict[str, Any]]:
    """Processes with a descriptor open on one of ``nodes``: ``{pid, cmdline, node}``."""
    proc = os.path.join(root, "proc")
    found: list[dict[str, Any]] = []
    pids = os.listdir(proc) if os.path.isdir(proc) else []
    for pid in sorted((p for p in pids if p.isdigit()), key=int):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(os.path.join(proc, pid, "fd"))
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                target = os.readlink(os.path.join(proc, pid, "fd", fd))
            except OSError:
                continue
            if target in nodes:
                try:
                    with open(os.path.join(proc, pid, "cmdline"), "rb") as handle:
                        cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    cmdline = ""
                found.append({"pid": int(pid), "cmdline": cmdline.strip()[:200], "node": target})
                break
    return found


def _kill(pid: int) -> None:
    os.kill(pid, 9)


def release_holders(
    root: str, bdfs: list[str], killer: Killer = _kill, wait_s: float = RELEASE_WAIT_S
) -> list[dict[str, Any]]:
    """End every process holding a VFIO node of ``bdfs`` (left by a run that died: unbinding
    a held device blocks until its holder lets go) and wait until they are gone. Returns
    what was ended; BindError when one outlives ``wait_s``."""
    holders = node_holders(root, vfio_nodes(root, bdfs))
    for holder in holders:
        try:
            killer(holder["pid"])
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + wait_s
    for holder in holders:
        while os.path.exists(os.path.join(root, "proc", str(holder["pid"]))):
            if time.monotonic() > deadline:
                raise BindError(
                    f"process {holder['pid']} ({holder['cmdline']}) still holds {holder['node']}"
                )
            time.sleep(0.1)
    return holders


def bind_devices(
    devices: list[str],
    journal_path: str,
    root: str = "/",
    writer: Writer = write_sysfs,
    load_driver: Loader | None = None,
    skip_ungrouped: bool = False,
    killer: Killer = _kill,
) -> dict[str, Any]:
    """Bind ``devices`` and the rest of their IOMMU groups to vfio-pci.

    ``load_driver(name)`` is called to load vfio-pci when its driver directory
    is missing. With ``skip_ungrouped``, a device in no IOMMU group is left alone, unless
    VFIO's no-IOMMU mode is on: then it is bound too, and gets a no-IOMMU group. Returns
    {"changed", "bindings", "groups", "ungrouped", "noiommu", "released"}; raises BindError.
    """
    requested = sorted({normalize_bdf(bdf) for bdf in devices})
    requested_groups, ungrouped = check_requested(root, requested, skip_ungrouped)
    ensure_vfio_driver(root, load_driver)
    # Known only now that vfio-pci (so vfio) is loaded.
    noiommu = ungrouped if ungrouped and noiommu_mode(root) else []
    ungrouped = [bdf for bdf in ungrouped if bdf not in noiommu]
    bridges = [bdf for bdf in noiommu if is_bridge(root, bdf)]
    if bridges:
        raise BindError(f"device {bridges[0]} is a PCI bridge; vfio-pci cannot bind bridges")

    groups: dict[str, int] = {}
    for group in sorted(set(requested_groups.values())):
        for bdf in group_members(root, group):
            # Bridges may stay on pcieport: vfio counts that as group-viable.
            if not is_bridge(root, bdf):
                groups[bdf] = group

    journal = load_journal(journal_path)
    # A journal left over means a run died on this host; what it left holding our devices
    # would make the checks collide with it.
    released = release_holders(root, sorted(journal), killer) if journal else []
    unrecorded = [bdf for bdf in [*groups, *noiommu] if bdf not in journal]
    for bdf in unrecorded:
        # Only first sightings are recorded: after a crash mid-bind the device
        # may already be on vfio-pci, and that is not its true original.
        journal[bdf] = {
            "original_driver": current_driver(root, bdf),
            "original_driver_override": driver_override(root, bdf),
        }
    if unrecorded:
        save_journal(journal_path, journal)

    changed = bool(unrecorded)
    bindings: dict[str, dict[str, str | None]] = {}
    for bdf in sorted([*groups, *noiommu]):
        changed = bind_one(root, bdf, writer) or changed
        bindings[bdf] = {
            "original_driver": journal[bdf]["original_driver"],
            "driver": current_driver(root, bdf),
        }
    for bdf in noiommu:
        group = iommu_group(root, bdf)
        if group is None:
            raise BindError(
                f"device {bdf} is on {VFIO_DRIVER} in no-IOMMU mode but got no IOMMU group"
            )
        groups[bdf] = group
    return {
        "changed": changed or bool(released),
        "bindings": bindings,
        "groups": groups,
        "ungrouped": ungrouped,
        "noiommu": noiommu,
        "released": released,
    }


def restore_device(root: str, bdf: str, entry: dict[str, str | None], writer: Writer) -> None:
    """Put one device back on its original driver and driver_override.

    Raises BindError when the device ends up anywhere else.
    """
    if not os.path.isdir(device_dir(root, bdf)):
        raise BindError(f"device {bdf} is not present on {socket.gethostname()}")
    original = entry["original_driver"]
    original_override = entry["original_driver_override"]
    driver = current_driver(root, bdf)
    if driver is not None and driver != original:
        sysfs_write(writer, os.path.join(driver_dir(root, driver), "unbind"), bdf, bdf)
    if driver_override(root, bdf) != original_override:
        # A lone newline is how the kernel is told to clear the override.
        path = os.path.join(device_dir(root, bdf), "driver_override")
        sysfs_write(writer, path, original_override or "\n", bdf)
    if original is not None and current_driver(root, bdf) is None:
        if os.path.isdir(driver_dir(root, original)):
            sysfs_write(writer, os.path.join(driver_dir(root, original), "bind"), bdf, bdf)
        else:
            sysfs_write(writer, os.path.join(root, "sys/bus/pci/drivers_probe"), bdf, bdf)
    driver = current_driver(root, bdf)
    if driver != original:
        raise BindError(
            f"device {bdf} is bound to {driver or 'no driver'}, expected {original or 'no driver'}"
        )


def restore_devices(
    journal_path: str,
    root: str = "/",
    writer: Writer = write_sysfs,
    release: bool = True,
    killer: Killer = _kill,
) -> dict[str, Any]:
    """Restore every journaled device; remove the journal once all are back. With
    ``release``, first end what still holds them (:func:`release_holders`).

    Returns {"changed", "restored", "failures", "released"}; a device that fails does not
    stop the others, and keeps the journal for a later retry.
    """
    journal = load_journal(journal_path)
    released = release_holders(root, sorted(journal), killer) if journal and release else []
    written: list[str] = []

    def recording_writer(path: str, value: str) -> None:
        # Counted after the write: a device that fails half-way still changed.
        writer(path, value)
        written.append(path)

    restored: dict[str, dict[str, str | None]] = {}
    failures: dict[str, str] = {}
    for bdf in sorted(journal):
        entry = journal[bdf]
        try:
            restore_device(root, bdf, entry, recording_writer)
        except (BindError, OSError) as exc:
            failures[bdf] = str(exc)
            continue
        restored[bdf] = {
            "original_driver": entry["original_driver"],
            "driver": current_driver(root, bdf),
        }
    if journal and not failures:
        os.unlink(journal_path)
    return {
        "changed": bool(written) or (bool(journal) and not failures) or bool(released),
        "restored": restored,
        "failures": failures,
        "released": released,
    }


def main() -> None:
    """Run as an Ansible module."""
    # Imported here so the unit tests can load this file without Ansible.
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "devices": {"type": "list", "elements": "str"},
            "state": {"type": "str", "choices": ["bound", "restored"], "default": "bound"},
            "journal": {"type": "path", "default": DEFAULT_JOURNAL},
            "skip_ungrouped": {"type": "bool", "default": False},
            "release_holders": {"type": "bool", "default": True},
        },
        required_if=[("state", "bound", ["devices"])],
    )

    def modprobe(name: str) -> None:
        module.run_command(["modprobe", name], check_rc=True)

    params = module.params
    try:
        if params["state"] == "bound":
            result = bind_devices(
                params["devices"],
                params["journal"],
                load_driver=modprobe,
                skip_ungrouped=params["skip_ungrouped"],
            )
        else:
            result = restore_devices(params["journal"], release=params["release_holders"])
    except (BindError, OSError) as exc:
        module.fail_json(msg=str(exc), journal=params["journal"])
    if result.get("failures"):
        listed = "; ".join(result["failures"].values())
        module.fail_json(
            msg=f"could not restore {len(result['failures'])} device(s): {listed}",
            journal=params["journal"],
            **result,
        )
    module.exit_json(journal=params["journal"], **result)


if __name__ == "__main__":
    main()
