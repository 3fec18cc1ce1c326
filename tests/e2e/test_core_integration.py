"""The core library against real devices on the virtual rack: provision a host (its devices'
IOMMU groups go to vfio-pci), run the tests/dut suite inside it as root, and give the
devices back. The suite exercises every public call of ``vfio_hil.core`` against edu, NVMe
and pci-testdev, including the 1000-cycle fd/mapping leak test. On the same host, before the
devices go back, the DMA map/unmap benchmark runs once and prints its figures (they are
shown, not judged: speed belongs to benchmarks, not to tests that could flake)."""

from __future__ import annotations

import re
import subprocess
from typing import Any, Dict, NamedTuple

import pytest
from rackutil import (
    E2E_INVENTORY,
    REPO,
    dut_command,
    dut_pytest,
    pci_drivers,
    provisioned,
    pytest_summary,
    skip_reasons,
)

from vfio_hil.lab.rack import VirtualRack

pytestmark = pytest.mark.e2e

HOST = "e2e-intel"
DUT_SUITE = dut_pytest("tests/dut")
#: A short benchmark run: enough for figures, not for a fine comparison (``make bench``).
BENCH = (
    f"cd {REPO} && .venv/bin/python benchmarks/dma_map_bench.py --rounds 3 --seconds 0.3 "
    "--reserve-huge-page"
)
#: Why a DUT test may skip on the default Debian platform; anything else (a device missing,
#: a fixture skipping) would quietly shrink the coverage and fails the run.
EXPECTED_SKIPS = (
    "iommufd backend unavailable",  # Debian configs lack CONFIG_IOMMUFD
    "huge page",  # a 1 GiB page rarely fits in a small guest
    "no test device on vfio-pci is in a no-IOMMU group",  # test_noiommu: no no-IOMMU mode there
)


class DutRun(NamedTuple):
    returncode: int
    output: str
    bench: subprocess.CompletedProcess
    drivers_before: Dict[str, str]
    drivers_after: Dict[str, str]


@pytest.fixture(scope="module")
def dut_run(
    e2e_rack: VirtualRack, lab_host_started: Any, tmp_path_factory: pytest.TempPathFactory
) -> DutRun:
    """The core library's DUT tests and its benchmark inside e2e-intel; the lab-host run
    goes on beside them (``lab_host_started``: this keeps one guest busy, that one another)."""
    before = pci_drivers(e2e_rack, HOST)
    with provisioned(e2e_rack, E2E_INVENTORY, HOST, tmp_path_factory.mktemp("core")) as host:
        proc = dut_command(e2e_rack, HOST, DUT_SUITE)
        bench = dut_command(e2e_rack, HOST, f"{BENCH} --bdf {host.devices[0].bdf}")
    after = pci_drivers(e2e_rack, HOST)
    output = proc.stdout + proc.stderr
    print(f"[dut] {HOST}: {output.strip().splitlines()[-1] if output.strip() else 'no output'}")
    return DutRun(proc.returncode, output, bench, before, after)


def test_the_dut_suite_passes(dut_run: DutRun) -> None:
    counts = pytest_summary(dut_run.output)
    tail = dut_run.output[-6000:]
    assert counts, f"no pytest summary from the DUT:\n{tail}"
    assert not counts.get("failed") and not counts.get("error") and not counts.get("errors"), tail
    assert dut_run.returncode == 0, tail
    # Every test module ran against the devices: far more passed than skipped.
    assert counts.get("passed", 0) >= 80, tail


def test_skips_are_only_for_what_the_platform_lacks(dut_run: DutRun) -> None:
    reasons = skip_reasons(dut_run.output)
    unexpected = [r for r in reasons if not any(e in r for e in EXPECTED_SKIPS)]
    assert not unexpected, f"unexpected skips: {unexpected}"


def test_devices_are_back_on_their_drivers(dut_run: DutRun) -> None:
    assert dut_run.drivers_after == dut_run.drivers_before


def test_the_benchmark_prints_its_figures(
    dut_run: DutRun, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = dut_run.bench
    assert bench.returncode == 0, bench.stdout + bench.stderr
    rows = re.findall(
        r"^(?:.{22})?(C|Python floor|cffi floor|Container|IommuBackend) +(\d+)",
        bench.stdout,
        re.MULTILINE,
    )
    # Five loops for each of the two mappings, each with a rate.
    assert len(rows) == 10 and all(int(rate) > 0 for _, rate in rows), bench.stdout
    assert re.search(r"^library layers within 10% of the C loop: (yes|NO)$", bench.stdout, re.M)
    # And the cost per mapping with many live ones, for each count.
    assert len(re.findall(r"^ +\d+ +[\d.]+ +[\d.]+$", bench.stdout, re.M)) == 2, bench.stdout
    with capsys.disabled():
        print(f"\n[bench] {HOST}\n{bench.stdout.rstrip()}")
