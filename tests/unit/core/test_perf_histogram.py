"""The latency histogram against exact percentiles of sorted samples, and the compiled hot
path's bucket arithmetic against the Python one."""

from __future__ import annotations

import math
import random
from typing import List

import pytest

from vfio_hil.core.perf import hotpath
from vfio_hil.core.perf.histogram import (
    BUCKETS,
    PERCENTILES,
    Histogram,
    bucket_bounds,
    bucket_index,
)
from vfio_hil.core.perf.measure import Measurement


def exact(sorted_values: List[int], p: float) -> int:
    """The nearest-rank percentile: the value at rank ceil(p/100 * n)."""
    return sorted_values[max(1, math.ceil(p / 100 * len(sorted_values))) - 1]


def _samples(kind: str, n: int = 20000) -> List[int]:
    rng = random.Random(kind)
    if kind == "uniform":
        return [rng.randrange(20_000, 200_000) for _ in range(n)]
    if kind == "lognormal":
        return [int(rng.lognormvariate(11, 1.2)) for _ in range(n)]
    if kind == "bimodal":
        return [rng.choice((rng.randrange(90, 110), rng.randrange(5_000_000, 6_000_000)))
                for _ in range(n)]  # fmt: skip
    return [rng.randrange(0, 128) for _ in range(n)]  # "small": exact buckets


@pytest.mark.parametrize("kind", ["uniform", "lognormal", "bimodal", "small"])
def test_percentiles_match_sorted_samples_within_a_bucket(kind: str) -> None:
    values = _samples(kind)
    hist = Histogram.of(values)
    ordered = sorted(values)
    assert (hist.count, hist.min_ns, hist.max_ns) == (len(values), ordered[0], ordered[-1])
    assert hist.mean_ns == pytest.approx(sum(values) / len(values))
    for p in (*PERCENTILES, 1.0, 25.0, 100.0):
        truth = exact(ordered, p)
        low, high = bucket_bounds(bucket_index(truth))
        got = hist.percentile(p)
        # The answer is the ranked value's bucket (its middle), so within one bucket width,
        # which is at most 1/64 of the value (exact below 128 ns).
        assert low <= got <= high, (p, truth, got, low, high)
        assert abs(got - truth) <= max(truth / 64, 1), (p, truth, got)


def test_small_values_are_exact() -> None:
    hist = Histogram.of([5, 7, 7, 9, 120])
    assert [hist.percentile(p) for p in (20, 40, 60, 80, 100)] == [5, 7, 7, 9, 120]


def test_buckets_tile_the_range() -> None:
    previous_high = 0
    for index in range(BUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous_high, index  # no gap, no overlap
        assert bucket_index(low) == index and bucket_index(high - 1) == index
        if low >= 128:
            assert (high - low) * 64 <= low  # at most 1/64 of its values wide
        previous_high = high
    assert bucket_index(1 << 40) == BUCKETS - 1  # beyond 17 s: the last bucket


def test_edges_and_round_trip() -> None:
    empty = Histogram()
    assert (empty.percentile(50), empty.mean_ns) == (0.0, 0.0)
    with pytest.raises(ValueError, match="percentile 0"):
        empty.percentile(0)
    with pytest.raises(ValueError, match="bucket"):
        bucket_bounds(BUCKETS)
    hist = Histogram.of([1_000, 2_000_000, 3])
    assert Histogram.from_dict(hist.to_dict()) == hist
    dense = [0] * BUCKETS
    for index, count in hist.buckets.items():
        dense[index] = count
    assert Histogram.from_counts(3, hist.sum_ns, 3, 2_000_000, dense) == hist


def test_compiled_buckets_are_the_python_buckets() -> None:
    module, why = hotpath.load()
    if module is None:
        pytest.fail(f"the install builds the compiled hot path; it did not load: {why}")
    rng = random.Random(7)
    values = [*range(0, 4096), *(rng.getrandbits(rng.randint(1, 40)) for _ in range(50000))]
    assert [module.lib.vh_hist_index(v) for v in values] == [bucket_index(v) for v in values]
    c_hist = module.ffi.new("struct vh_hist *")
    module.lib.vh_hist_reset(c_hist)
    for v in values[:5000]:
        module.lib.vh_hist_add(c_hist, v)
    got = Histogram.from_counts(
        c_hist.count, c_hist.sum_ns, c_hist.min_ns, c_hist.max_ns, c_hist.buckets
    )
    assert got == Histogram.of(values[:5000])


def test_io_figures() -> None:
    hist = Histogram.of([10_000] * 99 + [1_000_000])
    m = Measurement("randread_4k_qd1", "compiled", 100, 409600, 0, 0, 500_000_000, 50_000_000,
                    hist.to_dict())  # fmt: skip
    figures = {f.name.split(".", 1)[1]: f for f in m.io_figures()}
    assert figures["iops"].value == 200 and figures["iops"].higher_is_better
    assert figures["mib_s"].value == pytest.approx(409600 / 0.5 / 2**20, abs=0.01)
    assert figures["lat_p50"].value == pytest.approx(10.0, rel=1 / 64)
    assert figures["lat_max"].value == 1000.0 and not figures["lat_max"].higher_is_better
    assert figures["lat_p99_99"].unit == "us" and figures["cpu_per_io"].value == 500.0
    assert set(figures) >= {"lat_mean", "lat_min", "lat_p90", "lat_p99", "lat_p99_9"}
