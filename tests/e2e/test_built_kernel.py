"""The kernel the rack builds from Debian's linux-source (issue 14), met for real: the only
kernel here with iommufd and VFIO device cdevs, and with VFIO's no-IOMMU mode.

On ``e2e-kbuild`` the catalogue runs under every backend the kernel offers (iommufd through
device cdevs, the legacy container's type1v2 and type1) with zero FAIL and zero ERROR, and the
core library's DUT tests of its iommufd backend PASS instead of SKIPping. On
``e2e-kbuild-noiommu`` (no IOMMU, ``vfio.enable_unsafe_noiommu_mode=1``) exactly the checks
covering it FAIL, and the library refuses the no-IOMMU groups unless asked for them by name.

These tests run last (tests/e2e/conftest.py): the kernel builds in the background, the first
time, while the other e2e tests run.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
from rackutil import (
    BUILT_INVENTORY,
    BUILT_KERNEL,
    QUICK_PERF,
    CliRun,
    KernelBuild,
    booted_rack,
    dut_command,
    dut_pytest,
    pci_drivers,
    provisioned,
    pytest_summary,
    run_cli,
    skip_reasons,
)

from vfio_hil.lab.inventory import load_inventory
from vfio_hil.lab.rack import VirtualRack

pytestmark = [pytest.mark.e2e, pytest.mark.built_kernel]

IOMMUFD_HOST = "e2e-kbuild"
NOIOMMU_HOST = "e2e-kbuild-noiommu"
#: The core library's DUT tests of its iommufd backend (every ``[iommufd]`` variant; the
#: no-IOMMU ones run on the other platform).
DUT_IOMMUFD = dut_pytest("tests/dut -k 'iommufd and not noiommu'")
#: The library against a no-IOMMU group: refused unless asked for by name.
DUT_NOIOMMU = dut_pytest("tests/dut/test_noiommu.py")
#: What the no-IOMMU platform must FAIL, with a word each reason must hold: no IOMMU
#: (PLAT-001), hence no interrupt remapping (PLAT-002) and no DMAR table (PLAT-005), and
#: VFIO's no-IOMMU mode switched on (PLAT-003). Every other check SKIPs.
NOIOMMU_FAILS = {
    "PLAT-001": "IOMMU",
    "PLAT-002": "interrupt remapping",
    "PLAT-003": "enable_unsafe_noiommu_mode",
    "PLAT-005": "DMAR",
}


@dataclass
class BuiltRun:
    """What the tests judge: the kernel, the catalogue run over both platforms, the DUT
    tests on each, and every PCI device's driver before and after."""

    kernel: KernelBuild
    run: CliRun
    iommufd_dut: subprocess.CompletedProcess[str]
    noiommu_dut: subprocess.CompletedProcess[str]
    drivers_before: dict[str, dict[str, str]]
    drivers_after: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def built(
    rack_kernel: Future[KernelBuild] | None, tmp_path_factory: pytest.TempPathFactory
) -> BuiltRun:
    """Wait for the background build, boot both platforms, run the catalogue over them (two
    xdist workers, one per platform), then the DUT tests on each."""
    assert rack_kernel is not None, "the session did not start the kernel build"
    kernel = rack_kernel.result()
    work = tmp_path_factory.mktemp("built-kernel")
    hosts = (IOMMUFD_HOST, NOIOMMU_HOST)
    with booted_rack(BUILT_INVENTORY) as rack:
        before = {h: pci_drivers(rack, h) for h in hosts}
        xdist = ["-n", "2", "--dist", "loadgroup"]
        run = run_cli(
            ["run", "--inventory", str(BUILT_INVENTORY), "--", *xdist, *QUICK_PERF],
            work / "reports",
            timeout=2400,
        )
        dut = {}
        for host, command in ((IOMMUFD_HOST, DUT_IOMMUFD), (NOIOMMU_HOST, DUT_NOIOMMU)):
            with provisioned(rack, BUILT_INVENTORY, host, work / host):
                dut[host] = dut_command(rack, host, command)
        after = {h: pci_drivers(rack, h) for h in hosts}
    return BuiltRun(kernel, run, dut[IOMMUFD_HOST], dut[NOIOMMU_HOST], before, after)


def _records(run: CliRun, host: str) -> list[dict[str, Any]]:
    return [r for r in run.results["results"] if r["host"] == host]


def test_the_kernel_is_built_once(built: BuiltRun, capsys: pytest.CaptureFixture[str]) -> None:
    """The build happened only if the cache lacked it (or its inputs changed); afterwards the
    cache holds it under today's inputs, so the next session builds nothing."""
    kernel = built.kernel
    with capsys.disabled():
        how = f"built in {kernel.seconds / 60:.1f} min" if kernel.built else "from the cache"
        print(f"\n[kernel] {BUILT_KERNEL}: {kernel.image.release}, {how}")
    assert kernel.image.release.endswith("-vfio-hil")
    rack = VirtualRack(load_inventory(BUILT_INVENTORY), log=lambda _m: None)
    assert rack.kernel_builds.cached(BUILT_KERNEL) == kernel.image


def test_the_run_itself_succeeded(built: BuiltRun) -> None:
    run = built.run
    assert run.results["results"], run.stderr[-3000:]
    assert {r["host"] for r in run.results["results"]} == {IOMMUFD_HOST, NOIOMMU_HOST}


def test_every_backend_runs_the_catalogue_with_no_fail_and_no_error(built: BuiltRun) -> None:
    records = _records(built.run, IOMMUFD_HOST)
    bad = [
        (r["check_id"], r["backend"], r["verdict"], r["reason"])
        for r in records
        if r["verdict"] in ("FAIL", "ERROR")
    ]
    assert not bad
    by_backend: dict[str, dict[str, int]] = {}
    for r in records:
        counts = by_backend.setdefault(r["backend"] or "-", {})
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    print(f"[{IOMMUFD_HOST}] verdicts by backend: {by_backend}")
    # The kernel offers all three: no variant SKIPs for want of its backend.
    missing = [(r["check_id"], r["backend"]) for r in records if r["skip_kind"] == "backend"]
    assert not missing
    for backend in ("iommufd", "type1v2", "type1"):
        assert by_backend.get(backend, {}).get("PASS", 0) >= 40, (backend, by_backend)
    # A device offers the same capabilities through its cdev as through its group: each check
    # run under both gets the same verdict on each device.
    verdict = {
        (r["check_id"], (r["device"] or {}).get("bdf"), r["backend"]): r["verdict"] for r in records
    }
    differ = {
        (check, bdf): (v, verdict.get((check, bdf, "type1v2")))
        for (check, bdf, backend), v in verdict.items()
        if backend == "iommufd" and verdict.get((check, bdf, "type1v2"), v) != v
    }
    assert not differ


def test_the_iommufd_variants_went_through_device_cdevs(built: BuiltRun) -> None:
    """The iommufd records' ioctl transcripts show an IOAS and a cdev bound to it, never a
    container: the variant ran on the new interface, not on the legacy one under its name."""
    seen: set[str] = set()
    for r in _records(built.run, IOMMUFD_HOST):
        if r["backend"] != "iommufd" or not r["evidence"]:
            continue
        text = (built.run.reports / "latest" / r["evidence"]).read_text()
        transcript = json.dumps(json.loads(text).get("ioctl transcript", ""))
        assert "VFIO_GROUP_SET_CONTAINER" not in transcript, r["check_id"]
        seen |= {name for name in ("IOMMU_IOAS_ALLOC", "VFIO_DEVICE_BIND_IOMMUFD") if name in text}
    assert seen == {"IOMMU_IOAS_ALLOC", "VFIO_DEVICE_BIND_IOMMUFD"}


def test_the_library_iommufd_dut_tests_pass(built: BuiltRun) -> None:
    out = built.iommufd_dut.stdout + built.iommufd_dut.stderr
    counts = pytest_summary(out)
    assert counts, out[-4000:]
    assert not counts.get("failed") and not counts.get("error") and not counts.get("errors")
    assert built.iommufd_dut.returncode == 0, out[-4000:]
    assert counts.get("passed", 0) >= 40, counts
    # A 1 GiB huge page rarely fits in a small guest; nothing else may SKIP.
    assert all("huge page" in reason for reason in skip_reasons(out)), skip_reasons(out)


def test_noiommu_mode_fails_exactly_the_checks_covering_it(built: BuiltRun) -> None:
    records = _records(built.run, NOIOMMU_HOST)
    assert records
    failed = {r["check_id"]: r["reason"] for r in records if r["verdict"] == "FAIL"}
    assert set(failed) == set(NOIOMMU_FAILS), failed
    for check_id, word in NOIOMMU_FAILS.items():
        assert word.lower() in failed[check_id].lower(), (check_id, failed[check_id])
    others = [
        (r["check_id"], r["verdict"], r["reason"])
        for r in records
        if r["check_id"] not in NOIOMMU_FAILS and (r["verdict"] != "SKIP" or not r["reason"])
    ]
    assert not others


def test_the_library_refuses_noiommu_unless_asked_by_name(built: BuiltRun) -> None:
    out = built.noiommu_dut.stdout + built.noiommu_dut.stderr
    counts = pytest_summary(out)
    assert built.noiommu_dut.returncode == 0, out[-4000:]
    assert counts.get("passed", 0) >= 2 and not counts.get("skipped"), out[-4000:]


def test_devices_are_back_on_their_drivers(built: BuiltRun) -> None:
    assert built.drivers_after == built.drivers_before


def test_results_name_the_built_kernel(built: BuiltRun) -> None:
    """The platform record says which kernel ran: a certification or a dashboard can tell the
    rack-built kernel from Debian's."""
    releases = {
        (r.get("platform") or {}).get("kernel_release")
        for r in _records(built.run, IOMMUFD_HOST)
        if r.get("platform")
    }
    assert releases == {built.kernel.image.release}, releases
