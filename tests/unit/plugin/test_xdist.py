"""With `-n N --dist loadgroup`, every host's checks run on one xdist worker, which then owns
the host (provisioning, channel, teardown happen once per host)."""

from __future__ import annotations

from pathlib import Path

import pytest

FAKE_FIXTURES = """
import os, pytest

def _log(host):
    with open(os.environ["OWNERS_LOG"], "a") as fh:
        fh.write(f"{os.environ.get('PYTEST_XDIST_WORKER')} {host}\\n")

@pytest.fixture
def dut_host(request):
    _log(request.param)

@pytest.fixture
def dut_device(request):
    _log(request.param.host)
"""

CHECKS = '''
from vfio_hil_pytest import check

@check("TST-001", "a", level="MUST", spec="s")
def test_host(dut_host):
    """r"""

@check("TST-002", "b", level="MUST", spec="s")
def test_device(dut_device):
    """r"""

@check("TST-003", "c", level="MUST", spec="s")
def test_device_again(dut_device):
    """r"""
'''


def test_each_host_is_owned_by_one_worker(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "all:\n  hosts:\n"
        + "".join(f"    h{i}: {{vfio_devices: ['00:04.0', '00:05.0']}}\n" for i in range(4))
    )
    log = tmp_path / "owners"
    monkeypatch.setenv("OWNERS_LOG", str(log))
    pytester.makeconftest(FAKE_FIXTURES)
    pytester.makepyfile(test_checks=CHECKS)
    result = pytester.runpytest_subprocess(
        f"--vfio-inventory={inventory}",
        f"--vfio-reports={tmp_path / 'reports'}",
        "-n",
        "2",
        "--dist",
        "loadgroup",
    )
    assert result.ret == 0, result.stdout.str()
    owners: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        worker, host = line.split()
        owners.setdefault(host, set()).add(worker)
    assert set(owners) == {"h0", "h1", "h2", "h3"}
    assert all(len(workers) == 1 for workers in owners.values()), owners
    assert len(set().union(*owners.values())) == 2  # both workers got hosts
