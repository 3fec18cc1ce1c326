"""End-to-end fixtures: the e2e virtual rack is booted once per session and shared."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from rackutil import (
    E2E_INVENTORY,
    QUICK_PERF,
    RACK_INVENTORY,
    REPEAT_HOST,
    REUSED_HOST,
    KernelBuild,
    booted_rack,
    build_rack_kernel,
    lab_host_run,
    pci_drivers,
    run_cli,
)

from vfio_hil.lab.rack import VirtualRack

BUILT_MARK = "built_kernel"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the rack-built kernel go last: the kernel builds (the first time) while the
    other tests run."""
    items.sort(key=lambda item: item.get_closest_marker(BUILT_MARK) is not None)


@pytest.fixture(scope="session", autouse=True)
def rack_kernel(request: pytest.FixtureRequest) -> Iterator[Future[KernelBuild] | None]:
    """The rack kernel, building in the background from the session's start when a selected
    test needs it (niced: the rack's machines keep the CPU first); None when none does."""
    if not any(item.get_closest_marker(BUILT_MARK) for item in request.session.items):
        yield None
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2e-kernel") as pool:
        yield pool.submit(build_rack_kernel)


@pytest.fixture(scope="session", autouse=True)
def e2e_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One results store for every CLI run of the session, as a lab's nightly runs share one
    (test_history reads it; the sharing tests write it from two controllers at once)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'results.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VFIO_HIL_STORE", url)
        yield url


@pytest.fixture(scope="session")
def lab_host_rack() -> Iterator[VirtualRack]:
    """The one machine of lab_host_rack.yml (driven through a plain lab-host inventory),
    booted once for the lab-host and the sharing tests and stopped at the session's end."""
    with booted_rack(RACK_INVENTORY) as rack:
        yield rack


@pytest.fixture(scope="session")
def background() -> Iterator[ThreadPoolExecutor]:
    """Runs on one rack machine that go on while the tests drive another. Most e2e work keeps
    one guest busy, so one of a 2-core controller's cores: a run beside it costs little time.
    """
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="e2e-background") as pool:
        yield pool


@pytest.fixture(scope="session")
def lab_host_started(
    lab_host_rack: VirtualRack,
    background: ThreadPoolExecutor,
    tmp_path_factory: pytest.TempPathFactory,
) -> Future[dict[str, Any]]:
    """The lab-host run (test_lab_host), started in the background by the first test that
    asks for it: the core-integration tests, which drive e2e-intel meanwhile."""
    return background.submit(lab_host_run, lab_host_rack, tmp_path_factory.mktemp("lab-host"))


@pytest.fixture(scope="session")
def e2e_rack() -> Iterator[VirtualRack]:
    """The e2e rack, booted once for the whole session and stopped at its end."""
    with booted_rack(E2E_INVENTORY) as rack:
        yield rack


@pytest.fixture(scope="session")
def suite_run(e2e_rack: VirtualRack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `vfio-hil run` over every e2e platform, with the PCI drivers before and after;
    the machines no later test drives are stopped after it."""
    hosts = list(e2e_rack.inventory.hosts)
    before = {h: pci_drivers(e2e_rack, h) for h in hosts}
    # Two xdist workers, each owning whole hosts: the checks of two platforms run at once.
    xdist = ["-n", "2", "--dist", "loadgroup"]
    run = run_cli(
        ["run", "--inventory", str(E2E_INVENTORY), "--", *xdist, *QUICK_PERF],
        tmp_path_factory.mktemp("reports"),
        timeout=2400,
    )
    after = {h: pci_drivers(e2e_rack, h) for h in hosts}
    e2e_rack.down([h for h in hosts if h not in (REUSED_HOST, REPEAT_HOST)])
    return {"run": run, "before": before, "after": after}
