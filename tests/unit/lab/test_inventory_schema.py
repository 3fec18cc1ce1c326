"""Strict inventory input through the CLI: every malformed inventory or option set exits 2
with one line on stderr naming the file, the host (or group) and the field, no traceback, and
nothing booted. The repository's own inventories load as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfio_hil.lab import cli
from vfio_hil.lab.inventory import DEFAULT_INVENTORY, load_inventory
from vfio_hil.lab.kernel import KernelCache
from vfio_hil.lab.provision import Provisioner
from vfio_hil.lab.rack import VirtualRack

REPO = DEFAULT_INVENTORY.parents[1]
GOOD_INVENTORIES = sorted([*REPO.glob("inventory/*.yml"), *REPO.glob("tests/e2e/*.yml")])

#: One virtual host ``v`` with the variables ``{}`` inserted.
VIRTUAL = "all:\n  children:\n    virtual:\n      hosts:\n        v: {}\n"
#: One real host ``r`` with the variables ``{}`` inserted.
REAL = "all:\n  hosts:\n    r: {}\n"
GOOD = "all:\n  children:\n    virtual:\n      hosts:\n        v: {}\n  hosts:\n    r: {vfio_devices: ['3b:00.0']}\n"  # noqa: E501


def virtual(hvars: str) -> str:
    return VIRTUAL.replace("{}", hvars)


def real(hvars: str) -> str:
    return REAL.replace("{}", hvars)


@pytest.fixture
def booted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """What the run reached that changes a lab: a kernel fetch, the accelerator probe, a boot,
    a provisioning play, pytest. Each is recorded and fails."""
    reached: list[str] = []

    def stop(what: str):  # type: ignore[no-untyped-def]
        def record(*_args: object, **_kwargs: object) -> None:
            reached.append(what)
            raise AssertionError(f"{what} reached")

        return record

    monkeypatch.setattr(KernelCache, "get", stop("kernel"))
    monkeypatch.setattr(VirtualRack, "accel", stop("accel"))
    monkeypatch.setattr(VirtualRack, "_boot", stop("boot"))
    monkeypatch.setattr(Provisioner, "preflight", stop("preflight"))
    monkeypatch.setattr(Provisioner, "setup", stop("setup"))
    monkeypatch.setattr(cli, "_run_pytest", stop("pytest"))
    monkeypatch.setenv("VFIO_HIL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return reached


def one_error_line(
    argv: list[str], capsys: pytest.CaptureFixture[str], booted: list[str], tmp_path: Path
) -> str:
    """Run the CLI; assert exit 2, one line on stderr, no traceback, nothing booted."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vfio-hil: error: "), err
    assert "Traceback" not in err
    assert booted == []
    assert not (tmp_path / "home" / "racks").exists()
    assert not (tmp_path / "reports").exists()
    return lines[0]


MALFORMED = [
    # Unknown variables of vfio-hil's own, with the closest known one.
    ("vm-typo", virtual("{vm_iommu_option: 'intremap=off'}"), "host v: unknown variable vm_iommu_option (did you mean vm_iommu_options?)"),  # noqa: E501
    ("vfio-typo", real("{vfio_device: ['3b:00.0']}"), "host r: unknown variable vfio_device (did you mean vfio_devices?)"),  # noqa: E501
    ("vfio-hil-typo", real("{vfio_devices: ['3b:00.0'], vfio_hil_install_package: true}"), "host r: unknown variable vfio_hil_install_package (did you mean vfio_hil_install_packages?)"),  # noqa: E501
    ("vm-unknown", virtual("{vm_zzz: true}"), "host v: unknown variable vm_zzz (known: vm_iommu"),
    ("group-var-typo", "all:\n  vars: {vm_kernal: x}\n" + VIRTUAL[5:], "group all: unknown variable vm_kernal (did you mean vm_kernel?)"),  # noqa: E501
    ("device-key-typo", virtual("{vm_devices: [{model: edu, slot: 8, hotplugg: true}]}"), "host v: vm_devices[0]: unknown key hotplugg (did you mean hotplug?)"),  # noqa: E501
    ("real-device-key-typo", real("{vfio_devices: [{bdf: '3b:00.0', modle: nvme}]}"), "host r: vfio_devices[0]: unknown key modle (did you mean model?)"),  # noqa: E501
    # Wrong types.
    ("list-for-string", virtual("{vm_kernel: [linux-image-amd64]}"), "host v: vm_kernel: must be a string, not ['linux-image-amd64']"),  # noqa: E501
    ("int-for-string", virtual("{vm_iommu_options: 5}"), "host v: vm_iommu_options: must be a string, not 5"),  # noqa: E501
    ("string-for-int", virtual("{vm_cpus: '2'}"), "host v: vm_cpus: must be an integer, not '2'"),
    ("bool-for-int", virtual("{vm_memory_mb: true}"), "host v: vm_memory_mb: must be an integer, not True"),  # noqa: E501
    ("float-for-int", virtual("{vm_devices: [{model: edu, slot: 4.0}]}"), "host v: vm_devices[0].slot: must be an integer, not 4.0"),  # noqa: E501
    ("string-for-list", virtual("{vm_devices: edu}"), "host v: vm_devices: must be a list, not 'edu'"),  # noqa: E501
    ("int-in-qemu-args", virtual("{vm_qemu_args: [-smp, 2]}"), "host v: vm_qemu_args[1]: must be a string, not 2"),  # noqa: E501
    ("device-not-mapping", virtual("{vm_devices: [5]}"), "host v: vm_devices[0]: expected {model: ..., slot: N}, not 5"),  # noqa: E501
    ("device-without-slot", virtual("{vm_devices: [{model: edu}]}"), "host v: vm_devices[0].slot: is required"),  # noqa: E501
    ("host-vars-not-mapping", "all:\n  hosts:\n    r: [1, 2]\n", "host r: variables must be a mapping"),  # noqa: E501
    # Booleans given as strings.
    ("hotplug-no", virtual("{vm_devices: [{model: edu, slot: 8, hotplug: 'no'}]}"), "host v: vm_devices[0].hotplug: must be true or false, not 'no'"),  # noqa: E501
    ("scratch-yes", real("{vfio_devices: [{bdf: '3b:00.0', scratch: 'yes'}]}"), "host r: vfio_devices[0].scratch: must be true or false, not 'yes'"),  # noqa: E501
    ("install-packages-string", real("{vfio_devices: ['3b:00.0'], vfio_hil_install_packages: 'true'}"), "host r: vfio_hil_install_packages: must be true or false, not 'true'"),  # noqa: E501
    # Out of range.
    ("no-cpus", virtual("{vm_cpus: 0}"), "host v: vm_cpus: must be from 1 to 255, not 0"),
    ("negative-memory", virtual("{vm_memory_mb: -1024}"), "host v: vm_memory_mb: must be from 128 to 1048576, not -1024"),  # noqa: E501
    ("slot-too-high", virtual("{vm_devices: [{model: edu, slot: 31}]}"), "host v: vm_devices[0].slot: must be from 3 to 30, not 31"),  # noqa: E501
    ("slot-too-low", virtual("{vm_devices: [{model: edu, slot: 2}]}"), "host v: vm_devices[0].slot: must be from 3 to 30, not 2"),  # noqa: E501
    ("function-too-high", virtual("{vm_devices: [{model: edu, slot: 9}, {model: edu, slot: 9, function: 8}]}"), "host v: vm_devices[1].function: must be from 0 to 7, not 8"),  # noqa: E501
    ("empty-kernel", virtual("{vm_kernel: ''}"), "host v: vm_kernel: must not be empty"),
    # The file itself.
    ("not-utf8", b"all:\n  hosts:\n    r: {vfio_devices: ['3b:00.0']}  # \xe9t\xe9\n", "not UTF-8 text (byte 0xe9 at offset"),  # noqa: E501
    ("not-yaml", "all:\n  hosts:\n    h: [1, 2\n", "not valid YAML at line"),
    ("not-mapping", "- a\n- b\n", "expected a mapping of groups"),
    ("empty", "", "is empty"),
    ("comments-only", "# nothing here\n", "is empty"),
    ("missing", None, "no such file"),
    # The same device twice, once written otherwise.
    ("bdf-twice", real("{vfio_devices: ['3b:00.0', {bdf: '0000:3B:00.0', model: nvme}]}"), "host r: vfio_devices: 0000:3b:00.0 is listed twice"),  # noqa: E501
    ("bdf-unquoted", real("{vfio_devices: [{bdf: 00:04.0}]}"), "host r: vfio_devices[0].bdf: YAML read the PCI address as the number 4.0: quote it"),  # noqa: E501
    # One host under two groups that disagree (no parent-child order settles it).
    ("groups-conflict", "all:\n  children:\n    lab:\n      hosts:\n        v: {vm_iommu: amd}\n    virtual:\n      hosts:\n        v: {vm_iommu: intel}\n", "host v: vm_iommu is 'amd' in group lab but 'intel' in group virtual"),  # noqa: E501
    ("group-vars-conflict", "all:\n  children:\n    fast:\n      vars: {vm_cpus: 2}\n      hosts: {v: {}}\n    big:\n      vars: {vm_cpus: 4}\n      hosts: {v: {}}\n", "host v: vm_cpus is 2 in group fast but 4 in group big"),  # noqa: E501
    ("host-var-vs-child-group", "all:\n  hosts:\n    v: {vm_iommu: amd}\n  children:\n    virtual:\n      vars: {vm_iommu: intel}\n      hosts: {v: {}}\n", "host v: vm_iommu is 'amd' in group all but 'intel' in group virtual"),  # noqa: E501
    # What was validated before.
    ("iommu-kind", virtual("{vm_iommu: arm}"), "host v: vm_iommu: 'arm' is not one of intel, amd, virtio, none"),  # noqa: E501
    ("slot-shared", virtual("{vm_devices: [{model: edu, slot: 4}, {model: edu, slot: 4}]}"), "host v: vm_devices: two devices share a slot and function"),  # noqa: E501
    ("function-without-0", virtual("{vm_devices: [{model: edu, slot: 9, function: 1}]}"), "host v: vm_devices: slot 9 has function 1 but no 0"),  # noqa: E501
    ("hotplug-function", virtual("{vm_devices: [{model: edu, slot: 9, function: 1, hotplug: true}]}"), "host v: vm_devices[0]: a hotplug device sits at function 0"),  # noqa: E501
    ("hotplug-shared", virtual("{vm_devices: [{model: edu, slot: 9, hotplug: true}, {model: edu, slot: 9, function: 1}]}"), "host v: vm_devices: hotplug slot 9 holds other functions"),  # noqa: E501
    ("vm-model", virtual("{vm_devices: [{model: gpu, slot: 4}]}"), "host v: vm_devices[0].model: unknown model 'gpu' (edu, nvme, pci-testdev)"),  # noqa: E501
    ("real-model", real("{vfio_devices: [{bdf: '3b:00.0', model: gpu}]}"), "host r: vfio_devices[0].model: unknown model 'gpu'"),  # noqa: E501
    ("real-without-devices", real("{ansible_host: 10.1.2.3}"), "host r: a real host needs 'vfio_devices'"),  # noqa: E501
    ("not-a-bdf", real("{vfio_devices: [zz]}"), "host r: vfio_devices[0].bdf: 'zz' is not a PCI address"),  # noqa: E501
    ("virtual-with-vfio-devices", virtual("{vfio_devices: ['3b:00.0']}"), "host v: vfio_devices: a virtual host's devices come from vm_devices"),  # noqa: E501
    ("group-unknown-key", "all:\n  host: {}\n", "group all: unknown key(s) host"),
    ("no-hosts", "all:\n  hosts: {}\n", "defines no hosts"),
    ("bad-host-name", "all:\n  hosts:\n    'a b': {vfio_devices: ['3b:00.0']}\n", "host a b: host names may hold"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "problem"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED]
)
@pytest.mark.parametrize(
    "command",
    [["rack", "up", "--inventory"], ["run", "--inventory"]],
    ids=["rack-up", "run"],
)
def test_malformed_inventory_is_one_line_exit_2_and_boots_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    booted: list[str],
    command: list[str],
    text: str | bytes | None,
    problem: str,
) -> None:
    path = tmp_path / "inv.yml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    line = one_error_line([*command, str(path)], capsys, booted, tmp_path)
    assert line.startswith(f"vfio-hil: error: inventory {path}: "), line
    assert problem in line, line


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["rack", "up", "--inventory", "{inv}", "nosuch"], "not a virtual host of the inventory: nosuch"),  # noqa: E501
        (["rack", "up", "nosuch", "--inventory", "{inv}"], "not a virtual host of the inventory: nosuch"),  # noqa: E501
        (["rack", "up", "--inventory", "{inv}", "r"], "not a virtual host of the inventory: r"),
        (["rack", "down", "--inventory", "{inv}", "v", "--force"], "unrecognized arguments: --force"),  # noqa: E501
        (["rack", "explode"], "argument action: invalid choice: 'explode'"),
        (["explode"], "argument command: invalid choice: 'explode'"),
        ([], "the following arguments are required: command"),
        (["run", "--inventory", "{inv}", "--limit", "nosuchhost"], "inventory {inv}: no host nosuchhost"),  # noqa: E501
        (["run", "--inventory", "{inv}", "--limit", "v,nosuch"], "inventory {inv}: no host nosuch"),
        (["run", "--inventory"], "argument --inventory: expected one argument"),
        (["checks", "list", "--yaml"], "unrecognized arguments: --yaml"),
    ],
)  # fmt: skip
def test_bad_option_set_is_one_line_exit_2_and_boots_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    booted: list[str],
    argv: list[str],
    problem: str,
) -> None:
    inv = tmp_path / "inv.yml"
    inv.write_text(GOOD)
    line = one_error_line([a.format(inv=inv) for a in argv], capsys, booted, tmp_path)
    assert problem.format(inv=inv) in line, line


@pytest.mark.parametrize(
    "argv",
    [
        ["rack", "up", "--inventory", "{inv}", "v"],
        ["rack", "up", "v", "--inventory", "{inv}"],
        ["rack", "status", "--inventory", "{inv}", "v"],
        ["rack", "down", "--inventory", "{inv}", "v"],
    ],
)
def test_rack_hosts_before_or_after_the_options(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    booted: list[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    inv = tmp_path / "inv.yml"
    inv.write_text(GOOD)
    asked: list[list[str] | None] = []
    monkeypatch.setattr(VirtualRack, "up", lambda _self, names=None, **kw: asked.append(names))
    monkeypatch.setattr(VirtualRack, "down", lambda _self, names=None: asked.append(names))
    assert cli.main([a.format(inv=inv) for a in argv]) == 0, capsys.readouterr().err
    assert asked == ([] if argv[1] == "status" else [["v"]])
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["HOST", "v"]


def test_run_passes_what_follows_double_dash_to_pytest(
    monkeypatch: pytest.MonkeyPatch, booted: list[str]
) -> None:
    seen = []
    monkeypatch.setattr(cli, "run_command", lambda args: seen.append(args) or 0)
    assert cli.main(["run", "--limit", "x", "--", "-k", "DMA"]) == 0
    assert seen[0].limit == "x"
    assert [a for a in seen[0].pytest_args if a != "--"] == ["-k", "DMA"]


@pytest.mark.parametrize("path", GOOD_INVENTORIES, ids=lambda p: str(p.relative_to(REPO)))
def test_good_inventories_of_the_repo_load(path: Path) -> None:
    inventory = load_inventory(path)
    assert inventory.hosts
    for host in inventory.hosts.values():
        assert host.virtual and host.vm is not None and host.devices


def test_e2e_inventory_reads_as_written() -> None:
    hosts = load_inventory(REPO / "tests" / "e2e" / "inventory.yml").hosts
    assert len(hosts) == 14
    assert hosts["e2e-newest"].vm.kernel == "linux-image-amd64/sid"  # type: ignore[union-attr]
    amd, nointremap = hosts["e2e-amd"].vm, hosts["e2e-nointremap"].vm
    assert amd is not None and nointremap is not None
    assert (amd.iommu, amd.iommu_options, amd.memory_mb) == ("amd", "", 1536)
    assert [(d.model, d.slot) for d in amd.devices] == [("edu", 4), ("nvme", 6), ("pci-testdev", 7)]
    assert nointremap.iommu_options == "intremap=off,caching-mode=on"
    assert nointremap.memory_mb == 1024
    assert hosts["e2e-612"].vm.kernel == "linux-image-amd64/bookworm-backports"  # type: ignore[union-attr]
    assert "allow_unsafe_interrupts=1" in hosts["e2e-unsafe"].vm.kernel_cmdline  # type: ignore[union-attr]
    labhost = load_inventory(REPO / "tests" / "e2e" / "lab_host_rack.yml").hosts["e2e-labhost"]
    assert [(d.bdf, d.model) for d in labhost.devices] == [
        ("0000:00:05.0", "nvme"),
        ("0000:01:00.0", "nvme"),
        ("0000:00:07.0", "pci-testdev"),
    ]


def test_a_host_in_a_parent_and_a_child_group_takes_ansibles_order(tmp_path: Path) -> None:
    """Ansible's order settles it: a child group's vars override its parent's, a host's own
    variables override the vars of the group it is listed under."""
    path = tmp_path / "inv.yml"
    path.write_text(
        "all:\n  vars: {vm_iommu: amd, vm_cpus: 2, vm_memory_mb: 1024}\n"
        "  hosts: {v: {vm_cpus: 3}}\n"
        "  children:\n    virtual:\n      vars: {vm_iommu: intel}\n      hosts: {v: {}}\n"
    )
    vm = load_inventory(path).hosts["v"].vm
    assert vm is not None and (vm.iommu, vm.cpus, vm.memory_mb) == ("intel", 3, 1024)


def test_other_variables_pass_through(tmp_path: Path) -> None:
    """``ansible_*`` and a lab's own variables are not vfio-hil's to judge."""
    path = tmp_path / "inv.yml"
    path.write_text(
        "all:\n  hosts:\n    r:\n      ansible_host: 10.1.2.3\n      ansible_port: 2222\n"
        "      rack_position: [3, 7]\n      vfio_hil_ssh_config: /etc/lab/ssh_config\n"
        "      vfio_hil_install_packages: true\n"
        "      vfio_devices: ['3b:00.0', {bdf: '5e:00.0', model: nvme, scratch: true}]\n"
    )
    host = load_inventory(path).hosts["r"]
    assert host.vars["ansible_port"] == 2222 and host.vars["rack_position"] == [3, 7]
    assert [(d.bdf, d.model, d.scratch) for d in host.devices] == [
        ("0000:3b:00.0", "generic", False),
        ("0000:5e:00.0", "nvme", True),
    ]
