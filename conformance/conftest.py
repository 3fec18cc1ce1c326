"""The conformance checks are run by `vfio-hil run` (or pytest with --vfio-inventory); the
fixtures come from the vfio_hil_pytest plugin. The PERF checks' durations are options of
this suite: ``vfio-hil run -- --perf-seconds 10``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vfio-hil PERF")
    group.addoption(
        "--perf-seconds", type=float, default=0.5,
        help="measured time per PERF workload (default 0.5 s: short, so a run stays fast)",
    )  # fmt: skip
    group.addoption(
        "--perf-warmup", type=float, default=0.1,
        help="unmeasured warm-up before each PERF workload (default 0.1 s)",
    )  # fmt: skip


@dataclass(frozen=True)
class PerfTime:
    """How long each PERF workload runs: ``warmup_s`` unmeasured, then ``seconds``."""

    seconds: float
    warmup_s: float

    def kwargs(self) -> Dict[str, float]:
        """As the DUT's perf functions take them."""
        return {"seconds": self.seconds, "warmup_s": self.warmup_s}


@pytest.fixture(scope="session")
def perf_time(pytestconfig: pytest.Config) -> PerfTime:
    """The PERF workloads' durations (``--perf-seconds``, ``--perf-warmup``)."""
    seconds = pytestconfig.getoption("perf_seconds")
    warmup = pytestconfig.getoption("perf_warmup")
    if seconds <= 0 or warmup < 0:
        raise pytest.UsageError(
            f"--perf-seconds must be above 0 and --perf-warmup not negative "
            f"(got {seconds} and {warmup})"
        )
    return PerfTime(seconds, warmup)
