"""Figures: what a measurement reports, with its unit and direction.

A figure is the unit of performance data everywhere a user looks (results.json, the allure
result, JUnit properties, the summary, baselines). Names are stable and dotted:
``<workload>.<quantity>``, e.g. ``randread_4k_qd32.iops`` or ``randread_4k_qd1.lat_p99_9``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict


@dataclass(frozen=True)
class Figure:
    """One measured quantity: ``value`` in ``unit``; ``higher_is_better`` says which way is
    an improvement (IOPS: True; a latency: False)."""

    name: str
    value: float
    unit: str
    higher_is_better: bool

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form: ``{name, value, unit, higher_is_better}``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Figure:
        """The inverse of :meth:`to_dict`."""
        return cls(
            str(data["name"]), float(data["value"]), str(data["unit"]),
            bool(data["higher_is_better"]),
        )  # fmt: skip

    def text(self) -> str:
        """``randread_4k_qd32.iops = 331234 IOPS`` (at most 4 significant digits past 1000)."""
        return f"{self.name} = {self.quantity()}"

    def quantity(self) -> str:
        """The value with its unit as :meth:`text` shows it: ``331234 IOPS``, ``47.12 us``."""
        value = f"{self.value:.0f}" if abs(self.value) >= 1000 else f"{self.value:.4g}"
        return f"{value} {self.unit}"
