"""The figures one check measured, as its result record carries them, and their judgement
against the platform's baseline. Plain Python: the pytest plugin's ``figures`` fixture is a
thin layer over :class:`CheckFigures`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vfio_hil.core.perf import Figure
from vfio_hil.lab.baseline import BaselineStore, Subject, judge, judged, platform_key


def exact_quantity(figure: Figure) -> str:
    """``161234.5 IOPS``: the value at full precision with its unit, for machine readers
    (JUnit properties, allure parameters); :meth:`Figure.quantity` rounds for humans."""
    return f"{figure.value:.15g} {figure.unit}"


@dataclass
class CheckFigures:
    """What one check measured (``figures``, by which ``hot_path``: ``compiled``,
    ``python``, ``fio``) and how it compared with its baseline (``baseline``: None when
    nothing was compared, with ``note`` saying why)."""

    figures: list[Figure] = field(default_factory=list)
    hot_path: str | None = None
    baseline: dict[str, Any] | None = None
    note: str = ""

    def record(self, figures: Iterable[Figure], hot_path: str) -> None:
        """Add ``figures``, measured by ``hot_path``. A check records one hot path: its
        figures are compared with the baseline of that path."""
        figures = list(figures)
        bad = [f for f in figures if not isinstance(f, Figure)]
        if bad:
            raise TypeError(f"figures.record() takes Figure objects, not {bad[0]!r}")
        if not hot_path or (self.hot_path is not None and hot_path != self.hot_path):
            raise ValueError(f"hot path {hot_path!r}: this check recorded {self.hot_path!r}")
        names = [f.name for f in self.figures + figures]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"figures recorded twice: {', '.join(twice)}")
        self.figures += figures
        self.hot_path = hot_path

    def judge(self, store: BaselineStore, record: Mapping[str, Any]) -> None:
        """Compare the recorded figures with the baseline of ``record``'s platform, check,
        device and this hot path in ``store``. Without one, nothing is judged and ``note``
        says so; with one, every regression is reported at once by an AssertionError (the
        check FAILs) whose text joins the regressions' texts with ``; ``."""
        if self.hot_path is None:
            raise RuntimeError("figures.judge() before figures.record(): nothing to judge")
        subject = Subject.of_record({**record, "hot_path": self.hot_path})
        platform_id, _ = platform_key(record.get("platform") or {})
        saved = store.load(platform_id)
        expected = saved.find(subject) if saved else None
        if expected is None:
            known = f" ({subject.text()})" if saved else ""
            self.note = f"no baseline for platform {platform_id}{known}: figures reported only"
            return
        self.baseline = {
            "platform_id": platform_id,
            "file": str(store.path(platform_id)),
            "compared": len(judged(self.figures, expected)),
        }
        regressions = judge(self.figures, expected, platform_id)
        if regressions:
            raise AssertionError("; ".join(r.text() for r in regressions))

    def record_fields(self) -> dict[str, Any]:
        """The record's ``figures`` (figure dicts), ``hot_path`` and ``baseline``."""
        return {
            "figures": [f.to_dict() for f in self.figures],
            "hot_path": self.hot_path,
            "baseline": self.baseline,
        }
