"""A host lost under a run: noticed once, its remaining checks ERROR at once with one reason,
a kernel panic its console showed during a check is that check's FAIL, and the output stays
short (no traceback per check; one summary row for what the host left undone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFTEST = """
import pytest
from vfio_hil.lab.channel import ChannelLost
from vfio_hil.lab.inventory import Host
from vfio_hil.lab.session import HostLostError, HostSession

REASON = "lab-3 lost: QEMU exited; console: Kernel panic - not syncing: Fatal exception"
PANIC = ["BUG: unable to handle page fault for address: 0000000000001000",
         "Kernel panic - not syncing: Fatal exception"]


class Log:
    entries = []


class Channel:
    ioctl_log = Log()
    calls = []

    def call(self, func, **kwargs):
        self.calls.append(func)
        if func == "probes.crash":
            raise ChannelLost("probes.crash on lab-3: channel broke after 0.2 s")
        return {"evidence.kmsg_cursor": 0, "probes.fine": 1, "evidence.after_check":
                {"kernel_log": {"lines": [], "trouble": []}, "sysfs": {}}}[func]


def diagnose(name, error):
    return HostLostError(REASON, PANIC)


SESSION = HostSession(Host("lab-3", {}, None), {}, Channel(), diagnose=diagnose)


@pytest.fixture
def dut_host(request):
    if SESSION.lost is not None:  # what Lab.host does for a lost host
        raise SESSION.lost.again()
    return SESSION

"""

CHECKS = '''
from vfio_hil_pytest import check

@check("TST-001", "runs", level="MUST", spec="s")
def test_fine(dut_host):
    """r"""
    assert dut_host.call("probes.fine") == 1

@check("TST-002", "the DUT dies under it", level="MUST", spec="s")
def test_crash(dut_host):
    """r"""
    dut_host.call("probes.crash")

@check("TST-003", "after", level="MUST", spec="s")
def test_after(dut_host):
    """r"""

@check("TST-004", "after too", level="MUST", spec="s")
def test_after_too(dut_host):
    """r"""
'''


@pytest.fixture
def run(pytester: pytest.Pytester, tmp_path: Path) -> tuple[pytest.RunResult, dict]:
    inventory = tmp_path / "inv.yml"
    inventory.write_text("all:\n  hosts:\n    lab-3: {vfio_devices: ['00:04.0']}\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_checks=CHECKS)
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess(
        f"--vfio-inventory={inventory}", f"--vfio-reports={reports}", "-p", "no:cacheprovider"
    )
    return result, json.loads((reports / "latest" / "results.json").read_text())


REASON = "lab-3 lost: QEMU exited; console: Kernel panic - not syncing: Fatal exception"


def test_the_panic_fails_its_check_and_the_rest_error_with_one_reason(
    run: tuple[pytest.RunResult, dict],
) -> None:
    _, data = run
    got = {r["check_id"]: (r["verdict"], r["reason"], r["host_lost"]) for r in data["results"]}
    assert got == {
        "TST-001": ("PASS", "", False),
        "TST-002": (
            "FAIL",
            "kernel panic or oops on the DUT: BUG: unable to handle page fault for address: "
            "0000000000001000",
            True,
        ),
        "TST-003": ("ERROR", REASON, True),
        "TST-004": ("ERROR", REASON, True),
    }
    assert data["run"]["lost_hosts"] == {"lab-3": REASON}
    crash = next(r for r in data["results"] if r["check_id"] == "TST-002")
    evidence = json.loads((Path(data["run"]["inventory"]).parent / "reports" / "latest" /
                           crash["evidence"]).read_text())  # fmt: skip
    assert evidence["console"][-1] == "Kernel panic - not syncing: Fatal exception"


def test_the_output_names_the_lost_host_once(run: tuple[pytest.RunResult, dict]) -> None:
    result, _ = run
    out = result.stdout.str()
    assert result.ret == 1
    assert "ERROR at setup" not in out  # no section per undone check
    assert "2 host lost" in out.splitlines()[-1]
    result.stdout.fnmatch_lines([f"2 checks*lab-3*-*ERROR*{REASON}"])
    assert out.count(REASON) == 1
