"""Latency histograms with log-linear buckets, as fio keeps them, and their percentiles.

Values are nanoseconds. Below 128 ns every value has a bucket of its own; above, each power
of two is split into 64 equal buckets, so a bucket is at most 1/64 of its values wide and a
percentile read from the histogram is within 1.6 % of the exact one. 29 groups of buckets
reach 2^34 ns (17 s); longer values land in the last bucket (min and max stay exact).

The compiled hot path (``hotpath.c``) fills the same buckets; :func:`bucket_index` mirrors its
``vh_hist_index`` and a unit test holds the two together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Sequence

BITS = 6
#: Buckets per power of two.
PER_GROUP = 1 << BITS
GROUPS = 29
BUCKETS = GROUPS * PER_GROUP
#: The percentiles every latency figure set reports.
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


def bucket_index(ns: int) -> int:
    """The bucket of a value of ``ns`` nanoseconds."""
    if ns < 2 * PER_GROUP:
        return max(ns, 0)
    msb = ns.bit_length() - 1
    shift = msb - BITS
    index = ((shift + 1) << BITS) + ((ns >> shift) & (PER_GROUP - 1))
    return min(index, BUCKETS - 1)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The values ``[low, high)`` bucket ``index`` holds."""
    if not 0 <= index < BUCKETS:
        raise ValueError(f"histogram bucket {index} is outside 0..{BUCKETS - 1}")
    if index < 2 * PER_GROUP:
        return index, index + 1
    shift = (index >> BITS) - 1
    low = (PER_GROUP + (index & (PER_GROUP - 1))) << shift
    return low, low + (1 << shift)


@dataclass
class Histogram:
    """Counts of latencies per bucket (sparse), with exact count, sum, minimum and maximum."""

    count: int = 0
    sum_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0
    buckets: Dict[int, int] = field(default_factory=dict)

    def add(self, ns: int) -> None:
        """Count one value."""
        index = bucket_index(ns)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.min_ns = ns if self.count == 0 else min(self.min_ns, ns)
        self.max_ns = max(self.max_ns, ns)
        self.count += 1
        self.sum_ns += ns

    @classmethod
    def of(cls, values: Iterable[int]) -> Histogram:
        """A histogram of ``values``."""
        hist = cls()
        for ns in values:
            hist.add(ns)
        return hist

    @classmethod
    def from_counts(
        cls, count: int, sum_ns: int, min_ns: int, max_ns: int, counts: Sequence[int]
    ) -> Histogram:
        """From a dense bucket array (the compiled loop's), keeping the non-empty buckets."""
        buckets = {i: int(n) for i, n in enumerate(counts) if n}
        return cls(int(count), int(sum_ns), int(min_ns) if count else 0, int(max_ns), buckets)

    @property
    def mean_ns(self) -> float:
        """The exact mean (0 when empty)."""
        return self.sum_ns / self.count if self.count else 0.0

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (nearest rank) in ns: the middle of the bucket holding
        the ranked value (the value itself below 128 ns), kept within [min, max]."""
        if not 0 < p <= 100:
            raise ValueError(f"percentile {p} is not in (0, 100]")
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                middle = low if high - low == 1 else (low + high) / 2
                return float(min(max(middle, self.min_ns), self.max_ns))
        return float(self.max_ns)

    def percentiles(self, ps: Sequence[float] = PERCENTILES) -> Dict[float, float]:
        """Several percentiles at once: ``{50.0: ns, ...}``."""
        return {p: self.percentile(p) for p in ps}

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form; buckets as ``[[index, count], ...]`` (JSON keys are strings)."""
        return {
            "count": self.count,
            "sum_ns": self.sum_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "buckets": [[i, n] for i, n in sorted(self.buckets.items())],
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Histogram:
        """The inverse of :meth:`to_dict`."""
        return cls(
            int(data["count"]), int(data["sum_ns"]), int(data["min_ns"]), int(data["max_ns"]),
            {int(i): int(n) for i, n in data["buckets"]},
        )  # fmt: skip
