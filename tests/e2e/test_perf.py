"""PERF figures judged against a saved baseline on the virtual rack, as a lab would do it:
run, `vfio-hil baseline save`, run again. A baseline of the measured figures PASSes; a baseline
twice the measured rate makes the PERF check FAIL, naming the figure, the expected and the
measured value.

The judged figure is PERF-004's 4 KiB DMA map+unmap rate (every other figure left unjudged):
it is measured on the DUT's CPU alone, the steadiest of the PERF figures on an emulated rack
shared with other VMs (the 2 MiB rate moved by half from one run to the next on a loaded
controller). Its tolerance is 40 % rather than the default 25 % for rates: with thirteen
machines on two cores the 4 KiB rate moved by 26 % between two runs a minute apart, and a
baseline of twice the rate (the measured figure 50 % below) still lies outside it.

The runs go on in the background (conftest's ``perf_started``) beside the five-run test, which
drives another machine."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from rackutil import PERF_RATES

pytestmark = pytest.mark.e2e


def test_a_baseline_judges_the_perf_check(perf_started: Future[dict[str, Any]]) -> None:
    runs = perf_started.result()
    first = runs["first"]
    record = first["record"]
    assert (first["rc"], record["verdict"], record["baseline"]) == (0, "PASS", None)
    assert "no baseline" in record["reason"] and record["hot_path"] == "compiled"
    measured = {f["name"]: f["value"] for f in record["figures"]}
    assert set(PERF_RATES) <= set(measured) and all(measured[r] > 0 for r in PERF_RATES)

    # The measured figures themselves: PASS, the rate compared.
    again = runs["again"]["record"]
    assert again["verdict"] == "PASS", again["reason"]
    assert again["baseline"]["compared"] == len(PERF_RATES)

    # Twice the measured rate: FAIL, naming the figure, what was expected and what came.
    doubled = runs["doubled"]
    reason = doubled["record"]["reason"]
    assert (doubled["rc"], doubled["record"]["verdict"]) == (1, "FAIL"), reason
    for name in PERF_RATES:
        expected = 2 * measured[name]
        assert f"{name}: measured " in reason
        assert f"expected {expected:.0f} ops/s within 40%" in reason or (
            f"expected {expected:.4g} ops/s within 40%" in reason
        ), reason
