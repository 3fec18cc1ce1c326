"""The playbooks' contract with the controller: task names, modules, targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

PLAYBOOKS = Path(__file__).resolve().parents[3] / "lib/vfio_hil/lab/ansible/playbooks"
LOCAL_MODULES = {"vfio_hil_deploy", "vfio_hil_facts", "vfio_pci_bind"}
TASK_KEYWORDS = {"name", "register", "when", "changed_when", "failed_when", "vars"}


def tasks_of(playbook: str) -> list[tuple[str, str, dict]]:
    """Return (task name, module, module args) for every task of a one-play playbook."""
    [play] = yaml.safe_load((PLAYBOOKS / playbook).read_text())
    assert play["hosts"] == "{{ target | default('all') }}"
    assert play["gather_facts"] is False
    tasks = []
    for task in play["tasks"]:
        [module] = set(task) - TASK_KEYWORDS
        tasks.append((task["name"], module, task[module] or {}))
    return tasks


@pytest.mark.parametrize("playbook", ["preflight.yml", "setup.yml", "teardown.yml"])
def test_only_builtin_and_local_modules(playbook: str) -> None:
    for _, module, _ in tasks_of(playbook):
        assert module.startswith("ansible.builtin.") or module in LOCAL_MODULES


def test_preflight_checks_devices_in_platform_facts() -> None:
    assert tasks_of("preflight.yml") == [
        (
            "platform facts",
            "vfio_hil_facts",
            {"devices": "{{ vfio_hil_device_bdfs | default(omit) }}"},
        )
    ]


def test_setup_checks_devices_first_and_ends_with_platform_facts() -> None:
    tasks = tasks_of("setup.yml")
    names = [name for name, _, _ in tasks]

    assert tasks[0] == (
        "device presence",
        "vfio_hil_facts",
        {"devices": "{{ vfio_hil_device_bdfs }}", "python": "{{ vfio_hil_python }}"},
    )
    assert names[-2:] == ["bind devices", "platform facts"]
    assert tasks[-2][1:] == (
        "vfio_pci_bind",
        {
            "devices": "{{ vfio_hil_device_bdfs }}",
            "state": "bound",
            "skip_ungrouped": True,
            "journal": "{{ vfio_hil_state_dir }}/bindings.json",
        },
    )
    assert names.count("platform facts") == 1


def test_teardown_restores_from_the_journal() -> None:
    assert tasks_of("teardown.yml") == [
        (
            "restore devices",
            "vfio_pci_bind",
            {"state": "restored", "journal": "/var/lib/vfio-hil/bindings.json"},
        )
    ]


def test_setup_installs_fio_only_when_allowed_and_runs_without_it() -> None:
    [play] = yaml.safe_load((PLAYBOOKS / "setup.yml").read_text())
    tasks = {task["name"]: task for task in play["tasks"]}
    install = tasks["install fio"]
    assert "check fio" not in tasks  # the presence facts say whether fio is there
    assert install["ansible.builtin.apt"] == {"name": "fio", "state": "present"}
    assert install["when"] == "not vfio_hil_presence.fio and vfio_hil_may_install"
    # A host without fio is still set up: the PERF checks that need it SKIP naming it.
    assert not [
        name
        for name, task in tasks.items()
        if "presence.fio" in str(task.get("when")) and "ansible.builtin.fail" in task
    ]
