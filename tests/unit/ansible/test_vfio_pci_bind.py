"""Unit tests of the vfio_pci_bind Ansible module's plain functions."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import ModuleType

import pytest
from ansible_fake_sysfs import FakeSysfs

EDU = "0000:00:04.0"
EDU2 = "0000:00:05.0"
NVME = "0000:00:06.0"


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """Where the tests keep the binding journal (its directory does not exist yet)."""
    return tmp_path / "state" / "bindings.json"


def bind(bind_mod: ModuleType, fake: FakeSysfs, journal: Path, devices: list[str]) -> dict:
    """Run state=bound against the fake tree."""
    return bind_mod.bind_devices(devices, str(journal), root=str(fake.root), writer=fake.write)


def restore(bind_mod: ModuleType, fake: FakeSysfs, journal: Path) -> dict:
    """Run state=restored against the fake tree."""
    return bind_mod.restore_devices(str(journal), root=str(fake.root), writer=fake.write)


def journal_devices(journal: Path) -> dict:
    """The device entries of the journal file."""
    return json.loads(journal.read_text())["devices"]


def test_bound_records_originals_before_changing(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    journal_at_first_write: list[dict] = []
    kernel_write = vm_sysfs.write

    def observing_write(path: str, value: str) -> None:
        if not journal_at_first_write:
            journal_at_first_write.append(journal_devices(journal))
        kernel_write(path, value)

    result = bind_mod.bind_devices(
        ["00:04.0", NVME], str(journal), root=str(vm_sysfs.root), writer=observing_write
    )

    originals = {
        EDU: {"original_driver": None, "original_driver_override": None},
        NVME: {"original_driver": "nvme", "original_driver_override": None},
    }
    assert journal_at_first_write == [originals]
    assert journal_devices(journal) == originals
    assert result == {
        "changed": True,
        "bindings": {
            EDU: {"original_driver": None, "driver": "vfio-pci"},
            NVME: {"original_driver": "nvme", "driver": "vfio-pci"},
        },
        "groups": {EDU: 3, NVME: 5},
        "ungrouped": [],
        "noiommu": [],
        "released": [],
    }
    assert vm_sysfs.driver_of(EDU) == vm_sysfs.driver_of(NVME) == "vfio-pci"
    assert vm_sysfs.override_of(NVME) == "vfio-pci"
    # The untouched devices stay where they were.
    assert vm_sysfs.driver_of(EDU2) is None
    assert vm_sysfs.override_of(EDU2) == "(null)"


def test_journal_is_replaced_without_leftovers(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    bind(bind_mod, vm_sysfs, journal, [EDU])
    bind(bind_mod, vm_sysfs, journal, [EDU2])

    assert [p.name for p in journal.parent.iterdir()] == ["bindings.json"]
    assert json.loads(journal.read_text())["version"] == 1


def test_whole_group_is_bound_but_bridges_are_skipped(
    bind_mod: ModuleType, fake_sysfs: FakeSysfs, journal: Path
) -> None:
    fake_sysfs.add_driver("vfio-pci")
    fake_sysfs.add_device("0000:00:1c.0", pci_class="0x060400", group=1, driver="pcieport")
    fake_sysfs.add_device("0000:02:00.0", pci_class="0x030000", group=1, driver="amdgpu")
    fake_sysfs.add_device("0000:02:00.1", pci_class="0x040300", group=1, driver="snd_hda_intel")

    result = bind(bind_mod, fake_sysfs, journal, ["0000:02:00.0"])

    assert result["groups"] == {"0000:02:00.0": 1, "0000:02:00.1": 1}
    assert fake_sysfs.driver_of("0000:02:00.1") == "vfio-pci"
    assert fake_sysfs.driver_of("0000:00:1c.0") == "pcieport"
    assert fake_sysfs.override_of("0000:00:1c.0") == "(null)"
    assert set(journal_devices(journal)) == {"0000:02:00.0", "0000:02:00.1"}


def test_second_bound_keeps_the_true_originals(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    bind(bind_mod, vm_sysfs, journal, [NVME])
    vm_sysfs.writes.clear()

    again = bind(bind_mod, vm_sysfs, journal, [NVME])

    assert again["changed"] is False
    assert vm_sysfs.writes == []
    assert again["bindings"] == {NVME: {"original_driver": "nvme", "driver": "vfio-pci"}}
    assert journal_devices(journal)[NVME]["original_driver"] == "nvme"

    widened = bind(bind_mod, vm_sysfs, journal, [NVME, EDU])

    assert widened["changed"] is True
    assert journal_devices(journal) == {
        EDU: {"original_driver": None, "original_driver_override": None},
        NVME: {"original_driver": "nvme", "original_driver_override": None},
    }


def test_bound_after_a_crash_mid_bind_resumes(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    vm_sysfs.refusing.add("vfio-pci")
    with pytest.raises(bind_mod.BindError, match=f"device {NVME} did not bind to vfio-pci"):
        bind(bind_mod, vm_sysfs, journal, [NVME])
    assert vm_sysfs.driver_of(NVME) is None
    vm_sysfs.refusing.clear()

    result = bind(bind_mod, vm_sysfs, journal, [NVME])

    assert result["bindings"] == {NVME: {"original_driver": "nvme", "driver": "vfio-pci"}}


def test_bound_loads_vfio_pci_when_missing(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    vfio_dir = vm_sysfs.pci / "drivers" / "vfio-pci"
    for name in ("bind", "unbind"):
        (vfio_dir / name).unlink()
    vfio_dir.rmdir()
    loaded: list[str] = []

    def load_driver(name: str) -> None:
        loaded.append(name)
        vm_sysfs.add_driver(name)

    bind_mod.bind_devices(
        [EDU], str(journal), root=str(vm_sysfs.root), writer=vm_sysfs.write, load_driver=load_driver
    )

    assert loaded == ["vfio-pci"]
    assert vm_sysfs.driver_of(EDU) == "vfio-pci"


def test_missing_device_fails_before_anything_changes(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    with pytest.raises(bind_mod.BindError) as caught:
        bind(bind_mod, vm_sysfs, journal, [EDU, "00:09.0"])

    assert str(caught.value) == f"device 0000:00:09.0 is not present on {socket.gethostname()}"
    assert vm_sysfs.writes == []
    assert not journal.exists()


def test_device_without_iommu_group_fails_clearly(
    bind_mod: ModuleType, fake_sysfs: FakeSysfs, journal: Path
) -> None:
    fake_sysfs.add_driver("vfio-pci")
    fake_sysfs.add_device(EDU)

    with pytest.raises(
        bind_mod.BindError, match=f"device {EDU} has no IOMMU group: .*off or absent"
    ):
        bind(bind_mod, fake_sysfs, journal, [EDU])
    assert fake_sysfs.writes == []


def test_restored_returns_to_originals_and_removes_journal(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    bind(bind_mod, vm_sysfs, journal, [EDU, NVME])

    result = restore(bind_mod, vm_sysfs, journal)

    assert result == {
        "changed": True,
        "restored": {
            EDU: {"original_driver": None, "driver": None},
            NVME: {"original_driver": "nvme", "driver": "nvme"},
        },
        "failures": {},
        "released": [],
    }
    assert vm_sysfs.driver_of(EDU) is None
    assert vm_sysfs.driver_of(NVME) == "nvme"
    assert vm_sysfs.override_of(EDU) == vm_sysfs.override_of(NVME) == "(null)"
    assert (str(vm_sysfs.pci / "drivers/nvme/bind"), NVME) in vm_sysfs.writes
    assert not journal.exists()


def test_restored_without_journal_changes_nothing(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    assert restore(bind_mod, vm_sysfs, journal) == {
        "changed": False,
        "restored": {},
        "failures": {},
        "released": [],
    }
    assert vm_sysfs.writes == []


def test_restored_after_a_crash_between_unbind_and_probe(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    bind(bind_mod, vm_sysfs, journal, [NVME])
    # What a crash leaves behind: override set, driver gone, journal intact.
    vm_sysfs.write(str(vm_sysfs.pci / "drivers/vfio-pci/unbind"), NVME)

    result = restore(bind_mod, vm_sysfs, journal)

    assert result["restored"] == {NVME: {"original_driver": "nvme", "driver": "nvme"}}
    assert vm_sysfs.driver_of(NVME) == "nvme"
    assert not journal.exists()


def test_restored_rebinds_through_drivers_probe_without_driver_dir(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    bind(bind_mod, vm_sysfs, journal, [NVME])
    journal.write_text(
        json.dumps(
            {
                "version": 1,
                "devices": {
                    NVME: {"original_driver": "nvme-legacy", "original_driver_override": None}
                },
            }
        )
    )
    vm_sysfs.natural[NVME] = "nvme"

    result = restore(bind_mod, vm_sysfs, journal)

    assert (str(vm_sysfs.pci / "drivers_probe"), NVME) in vm_sysfs.writes
    assert result["failures"] == {NVME: f"device {NVME} is bound to nvme, expected nvme-legacy"}
    assert journal.exists()


def test_restore_failure_keeps_journal_and_others_restored(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    bind(bind_mod, vm_sysfs, journal, [EDU, NVME])
    vm_sysfs.refusing.add("nvme")

    result = restore(bind_mod, vm_sysfs, journal)

    assert result["changed"] is True
    assert result["restored"] == {EDU: {"original_driver": None, "driver": None}}
    assert set(result["failures"]) == {NVME}
    assert "drivers/nvme/bind" in result["failures"][NVME]
    assert journal.exists()

    vm_sysfs.refusing.clear()
    retried = restore(bind_mod, vm_sysfs, journal)

    assert retried["failures"] == {}
    assert vm_sysfs.driver_of(NVME) == "nvme"
    assert not journal.exists()


def test_restore_failing_half_way_still_reports_changed(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    bind(bind_mod, vm_sysfs, journal, [NVME])
    vm_sysfs.refusing.add("nvme")

    result = restore(bind_mod, vm_sysfs, journal)

    # The unbind from vfio-pci went through before the rebind failed.
    assert result["changed"] is True
    assert result["restored"] == {}
    assert vm_sysfs.driver_of(NVME) is None


def test_restored_keeps_an_original_override(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    vm_sysfs.write(str(vm_sysfs.pci / "devices" / NVME / "driver_override"), "nvme")
    bind(bind_mod, vm_sysfs, journal, [NVME])

    restore(bind_mod, vm_sysfs, journal)

    assert vm_sysfs.override_of(NVME) == "nvme"
    assert vm_sysfs.driver_of(NVME) == "nvme"


def test_short_addresses_are_normalized(bind_mod: ModuleType) -> None:
    assert bind_mod.normalize_bdf("00:04.0") == EDU
    assert bind_mod.normalize_bdf("0000:3B:00.1") == "0000:3b:00.1"
    with pytest.raises(bind_mod.BindError, match="is not a PCI address"):
        bind_mod.normalize_bdf("0000:00:04")


def test_unknown_journal_format_is_refused(bind_mod: ModuleType, journal: Path) -> None:
    journal.parent.mkdir()
    journal.write_text('{"devices": {}}')

    with pytest.raises(bind_mod.BindError, match="unknown format"):
        bind_mod.load_journal(str(journal))


def test_ungrouped_devices_are_skipped_when_asked(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    vm_sysfs.add_device("0000:00:09.0")
    result = bind_mod.bind_devices(
        ["0000:00:09.0", EDU],
        str(journal),
        root=str(vm_sysfs.root),
        writer=vm_sysfs.write,
        skip_ungrouped=True,
    )
    assert result["ungrouped"] == ["0000:00:09.0"]
    assert "0000:00:09.0" not in result["bindings"]
    assert result["bindings"][EDU]["driver"] == "vfio-pci"


def test_in_no_iommu_mode_ungrouped_devices_get_a_no_iommu_group_and_go_back(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    vm_sysfs.add_device("0000:00:09.0", driver="nvme")
    vm_sysfs.add_device("0000:00:0a.0")
    vm_sysfs.set_noiommu_mode()
    result = bind_mod.bind_devices(
        ["0000:00:09.0", "0000:00:0a.0", EDU],
        str(journal),
        root=str(vm_sysfs.root),
        writer=vm_sysfs.write,
        skip_ungrouped=True,
    )
    assert result["ungrouped"] == [] and result["noiommu"] == ["0000:00:09.0", "0000:00:0a.0"]
    numbers = vm_sysfs.noiommu_groups
    assert len(set(numbers.values())) == 2
    for bdf in ("0000:00:09.0", "0000:00:0a.0"):
        assert result["groups"][bdf] == numbers[bdf]
        assert result["bindings"][bdf]["driver"] == "vfio-pci"
    assert journal_devices(journal)["0000:00:09.0"]["original_driver"] == "nvme"
    # A holder of a no-IOMMU group's node is found by restore like any other.
    _holding(vm_sysfs, 4242, f"/dev/vfio/noiommu-{numbers['0000:00:09.0']}")
    killed: list[int] = []
    restored = bind_mod.restore_devices(
        str(journal), root=str(vm_sysfs.root), writer=vm_sysfs.write,
        killer=_reaper(vm_sysfs, killed),
    )  # fmt: skip
    assert killed == [4242] and restored["failures"] == {}
    assert vm_sysfs.driver_of("0000:00:09.0") == "nvme"
    assert vm_sysfs.driver_of("0000:00:0a.0") is None
    assert vm_sysfs.noiommu_groups == {}


def test_no_iommu_mode_off_leaves_ungrouped_devices_alone(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    vm_sysfs.add_device("0000:00:09.0", driver="nvme")
    vm_sysfs.set_noiommu_mode(False)
    result = bind_mod.bind_devices(
        ["0000:00:09.0"],
        str(journal),
        root=str(vm_sysfs.root),
        writer=vm_sysfs.write,
        skip_ungrouped=True,
    )
    assert result["ungrouped"] == ["0000:00:09.0"] and result["noiommu"] == []
    assert vm_sysfs.driver_of("0000:00:09.0") == "nvme"


def _holding(fake: FakeSysfs, pid: int, node: str, cmdline: str = "python3 -c agent") -> None:
    """A process of the fake tree with a descriptor open on ``node``."""
    fd_dir = fake.root / "proc" / str(pid) / "fd"
    fd_dir.mkdir(parents=True)
    (fd_dir / "3").symlink_to(node)
    (fake.root / "proc" / str(pid) / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode())


def _reaper(fake: FakeSysfs, killed: list[int], survivors: tuple[int, ...] = ()):
    def kill(pid: int) -> None:
        killed.append(pid)
        if pid not in survivors:
            for entry in sorted((fake.root / "proc" / str(pid)).rglob("*"), reverse=True):
                entry.unlink() if entry.is_symlink() or entry.is_file() else entry.rmdir()
            (fake.root / "proc" / str(pid)).rmdir()

    return kill


def test_restore_first_ends_what_a_dead_run_left_holding_its_devices(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    bind(bind_mod, vm_sysfs, journal, [EDU, NVME])
    _holding(vm_sysfs, 4242, "/dev/vfio/5")  # the NVMe's group, left open by a killed agent
    _holding(vm_sysfs, 4343, "/dev/vfio/9")  # a lab's own VFIO user of another group
    killed: list[int] = []
    result = bind_mod.restore_devices(
        str(journal), root=str(vm_sysfs.root), writer=vm_sysfs.write,
        killer=_reaper(vm_sysfs, killed),
    )  # fmt: skip
    assert killed == [4242]
    assert result["released"] == [
        {"pid": 4242, "cmdline": "python3 -c agent", "node": "/dev/vfio/5"}
    ]
    assert result["failures"] == {} and not journal.exists()


def test_a_holder_that_does_not_go_is_a_bind_error_naming_it(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    bind(bind_mod, vm_sysfs, journal, [EDU, NVME])
    _holding(vm_sysfs, 4242, "/dev/vfio/3")
    with pytest.raises(
        bind_mod.BindError, match=r"process 4242 \(python3 -c agent\) still holds /dev/vfio/3"
    ):
        bind_mod.release_holders(
            str(vm_sysfs.root), [EDU], _reaper(vm_sysfs, [], survivors=(4242,)), wait_s=0.3
        )


def test_binding_over_a_leftover_journal_ends_its_holders_and_a_clean_one_ends_none(
    bind_mod: ModuleType, vm_sysfs: FakeSysfs, journal: Path
) -> None:
    _holding(vm_sysfs, 4343, "/dev/vfio/5")  # no journal: not ours, left alone
    killed: list[int] = []
    first = bind_mod.bind_devices(
        [NVME], str(journal), root=str(vm_sysfs.root), writer=vm_sysfs.write,
        killer=_reaper(vm_sysfs, killed),
    )  # fmt: skip
    assert first["released"] == [] and killed == []
    again = bind_mod.bind_devices(
        [NVME], str(journal), root=str(vm_sysfs.root), writer=vm_sysfs.write,
        killer=_reaper(vm_sysfs, killed),
    )  # fmt: skip
    assert killed == [4343] and again["released"][0]["pid"] == 4343
