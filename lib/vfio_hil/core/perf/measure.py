"""What a timed loop measured (typed, JSON-able: the DUT returns it, the controller judges),
and the figures derived from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List

from .figures import Figure
from .histogram import Histogram

#: How the figures were measured: the compiled hot path, or the pure-Python loop where the
#: compiled module could not load on the DUT (labelled so, never silently).
COMPILED = "compiled"
PYTHON = "python"


def percentile_suffix(p: float) -> str:
    """``p50``, ``p99_9``, ``p99_99``."""
    return "p" + f"{p:g}".replace(".", "_")


@dataclass
class Measurement:
    """One timed loop: ``ops`` operations (I/Os, accesses, map+unmap pairs) counted over
    ``elapsed_ns`` of wall time (warm-up excluded), using ``cpu_ns`` of the loop thread's CPU
    time; each operation's latency in ``latency`` (a :meth:`Histogram.to_dict`)."""

    name: str
    hot_path: str
    ops: int
    bytes: int
    errors: int
    #: The status of the first operation that failed (NVMe: SCT/SC), 0 when none did.
    first_error: int
    elapsed_ns: int
    cpu_ns: int
    latency: Dict[str, Any]

    @property
    def histogram(self) -> Histogram:
        """The latencies as a :class:`Histogram`."""
        return Histogram.from_dict(self.latency)

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.ops / (self.elapsed_ns / 1e9) if self.elapsed_ns else 0.0

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Measurement:
        """The inverse of :meth:`to_dict`."""
        return cls(**data)

    def latency_figures(self, unit: str = "us") -> List[Figure]:
        """Mean, min, max and the percentiles of :data:`PERCENTILES`, in ``unit`` (us or
        ns); lower is better."""
        scale = {"us": 1e-3, "ns": 1.0}[unit]
        hist = self.histogram
        values = {
            "lat_mean": hist.mean_ns,
            "lat_min": float(hist.min_ns),
            "lat_max": float(hist.max_ns),
            **{f"lat_{percentile_suffix(p)}": v for p, v in hist.percentiles().items()},
        }
        return [
            Figure(f"{self.name}.{key}", round(value * scale, 3), unit, False)
            for key, value in values.items()
        ]

    def io_figures(self) -> List[Figure]:
        """Block I/O: IOPS, MiB/s, latency in us, CPU time per I/O in us."""
        seconds = self.elapsed_ns / 1e9
        return [
            Figure(f"{self.name}.iops", round(self.rate), "IOPS", True),
            Figure(f"{self.name}.mib_s", round(self.bytes / seconds / 2**20, 2), "MiB/s", True),
            *self.latency_figures("us"),
            Figure(
                f"{self.name}.cpu_per_io", round(self.cpu_ns / max(self.ops, 1) / 1e3, 3), "us",
                False,
            ),
        ]  # fmt: skip

    def rate_figures(self) -> List[Figure]:
        """A rate of operations (ops/s) and their latency in us."""
        return [
            Figure(f"{self.name}.rate", round(self.rate), "ops/s", True),
            *self.latency_figures("us"),
        ]
