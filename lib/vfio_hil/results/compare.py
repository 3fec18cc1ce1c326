"""Comparisons between runs of the results store, per platform, check and device.

What changed for each :class:`~vfio_hil.results.store.ResultKey` (a check on a host's device,
in one variant, on one platform):

- verdicts: a **regression** (PASS -> FAIL or ERROR), a **fix** (FAIL or ERROR -> PASS), a
  **new** result (not run before) and a **missing** one (run before, not now);
- over the platform's last runs: **flaky** results (the outcome flipped at least ``flips``
  times in the last ``window`` runs) and results **failing since** a run (the first run of
  the current unbroken FAIL/ERROR streak);
- figures: the change of each figure from the earlier run, and its judgement against the
  platform's baseline (:mod:`vfio_hil.lab.baseline`) and against the trailing median of the
  platform's previous runs, each with the figure's tolerance.

SKIP says a check did not apply: it is neither an outcome that flips nor one that breaks or
starts a failing streak. ERROR records' figures are the lab's, not the platform's: never
judged nor used as samples.

:func:`compare_runs` compares two runs; :func:`latest_changes` a platform's latest run with
the runs before it. Both return a :class:`Comparison`; :func:`comparison_table` renders one.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from vfio_hil.core.perf import Figure
from vfio_hil.lab.baseline import (
    DEFAULT_TOLERANCES,
    BaselineStore,
    Expected,
    Subject,
    Tolerances,
    judged,
    tolerance_for,
)
from vfio_hil.lab.errors import StoreError
from vfio_hil.results.store import ResultKey, ResultsStore, StoredResult

#: How many of a platform's runs the flaky and trailing-median judgements look at.
DEFAULT_WINDOW = 10
#: How many outcome flips within the window make a result flaky.
DEFAULT_FLIPS = 2
BAD = ("FAIL", "ERROR")


class ChangeKind(str, Enum):
    """How a result's verdict changed between an earlier run and a later one."""

    REGRESSION = "regression"
    FIX = "fix"
    NEW = "new"
    MISSING = "missing"


@dataclass(frozen=True)
class VerdictChange:
    """A result whose verdict changed: ``before`` (None: new) -> ``after`` (None: missing),
    with the later record's reason (the earlier's for a missing one)."""

    key: ResultKey
    kind: ChangeKind
    before: Optional[str]
    after: Optional[str]
    vendor_device: Optional[str]
    reason: str


@dataclass(frozen=True)
class Flaky:
    """A result whose outcome flipped ``flips`` times over ``runs`` (oldest first)."""

    key: ResultKey
    flips: int
    runs: tuple[str, ...]
    verdicts: tuple[str, ...]


@dataclass(frozen=True)
class FailingSince:
    """A result that FAILs or ERRORs now and has since ``since_run``: ``streak`` runs."""

    key: ResultKey
    verdict: str
    since_run: str
    since: dt.datetime
    streak: int


@dataclass(frozen=True)
class FigureDelta:
    """A figure of a result in the earlier run and in the later one."""

    key: ResultKey
    before: Figure
    after: Figure

    @property
    def change(self) -> Optional[float]:
        """The relative change (after - before) / before; None when before is 0."""
        if self.before.value == 0:
            return None
        return (self.after.value - self.before.value) / self.before.value

    @property
    def worse(self) -> bool:
        """Whether the figure moved the wrong way (any amount)."""
        if self.after.higher_is_better:
            return self.after.value < self.before.value
        return self.after.value > self.before.value

    def text(self) -> str:
        """``randread_4k_qd1.iops 42598 IOPS -> 40000 IOPS (-6.1%)``."""
        return f"{self.after.name} {self.before.quantity()} -> {self.after.quantity()}" + (
            f" ({self.change:+.1%})" if self.change is not None else ""
        )


class Reference(str, Enum):
    """What a figure is judged against."""

    BASELINE = "baseline"
    MEDIAN = "trailing median"


@dataclass(frozen=True)
class FigureJudgement:
    """A measured figure against what ``reference`` expects (value, tolerance, samples);
    ``source`` names the baseline's platform and runs, or the runs of the median."""

    key: ResultKey
    measured: Figure
    reference: Reference
    expected: Expected
    source: tuple[str, ...]

    @property
    def regressed(self) -> bool:
        """Whether the figure is worse than expected by more than its tolerance."""
        return self.expected.regressed(self.measured.value)

    def text(self) -> str:
        """``randread_4k_qd1.iops 30000 IOPS: regressed against the trailing median 42000
        IOPS within 25% (3 runs)``."""
        state = "regressed against" if self.regressed else "within"
        tolerance = self.expected.tolerance
        within = f" within {tolerance * 100:g}%" if tolerance is not None else ""
        return (
            f"{self.measured.name} {self.measured.quantity()}: {state} the {self.reference.value} "
            f"{self.expected.figure().quantity()}{within} ({len(self.expected.samples)} samples)"
        )


@dataclass(frozen=True)
class Comparison:
    """What changed from ``run_a`` (None: no earlier run) to ``run_b``."""

    run_a: Optional[str]
    run_b: str
    changes: tuple[VerdictChange, ...]
    flaky: tuple[Flaky, ...]
    failing_since: tuple[FailingSince, ...]
    figure_deltas: tuple[FigureDelta, ...]
    figure_judgements: tuple[FigureJudgement, ...]

    def of_kind(self, kind: ChangeKind) -> list[VerdictChange]:
        """The verdict changes of one kind."""
        return [c for c in self.changes if c.kind is kind]

    def figure_regressions(self) -> list[FigureJudgement]:
        """The judged figures that regressed."""
        return [j for j in self.figure_judgements if j.regressed]


def compare_runs(
    store: ResultsStore,
    run_a: str,
    run_b: str,
    *,
    baselines: Optional[BaselineStore] = None,
    window: int = DEFAULT_WINDOW,
    flips: int = DEFAULT_FLIPS,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> Comparison:
    """What changed from run ``run_a`` to run ``run_b`` (StoreError for an unknown run):
    verdict changes and figure deltas between the two, and, per platform of ``run_b``,
    flaky and failing results over its last ``window`` runs up to ``run_b``, and ``run_b``'s
    figures against the baselines in ``baselines`` (when given) and against the trailing
    median of the platform's ``window`` runs before ``run_b``."""
    before = store.results(run_a)
    after = store.results(run_b)
    return _compare(store, run_a, run_b, before, after, baselines, window, flips, tolerances)


def latest_changes(
    store: ResultsStore,
    platform_id: str,
    *,
    baselines: Optional[BaselineStore] = None,
    window: int = DEFAULT_WINDOW,
    flips: int = DEFAULT_FLIPS,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> Comparison:
    """What changed in the latest run of ``platform_id`` against the platform's ``window``
    runs before it: each result against its latest earlier record there (so a result missing
    now is one any of those runs had; a platform's first run has no verdict changes).
    StoreError when the platform has no run."""
    runs = store.runs(platform_id)
    if not runs:
        raise StoreError(f"no run of platform {platform_id!r} in the results store {store.url}")
    latest = runs[-1].id
    earlier = [r.id for r in runs[-window - 1 : -1]]
    history = store.history(platform_id, until=latest, last=window + 1)
    before = [r for r in history if r.run_id in earlier]
    after = [r for r in history if r.run_id == latest]
    run_a = earlier[-1] if earlier else None
    return _compare(store, run_a, latest, before, after, baselines, window, flips, tolerances)


def _compare(
    store: ResultsStore,
    run_a: Optional[str],
    run_b: str,
    before: Sequence[StoredResult],
    after: Sequence[StoredResult],
    baselines: Optional[BaselineStore],
    window: int,
    flips: int,
    tolerances: Tolerances,
) -> Comparison:
    keys = {r.key for r in after}
    flaky_found: list[Flaky] = []
    trailing: list[FigureJudgement] = []
    for platform_id in sorted({k.platform_id for k in keys}):
        history = store.history(platform_id, until=run_b, last=window + 1)
        recent = _last_runs(history, window)
        flaky_found += [f for f in flaky(recent, flips=flips) if f.key in keys]
        trailing += judge_against_median(
            [r for r in after if r.key.platform_id == platform_id],
            [r for r in history if r.run_id != run_b],
            tolerances,
        )
    failing = [
        f
        for r in after
        if r.verdict in BAD
        for f in failing_since(store.history(r.key.platform_id, key=r.key, until=run_b))
    ]
    judgements = judge_against_baseline(after, baselines) if baselines else []
    return Comparison(
        run_a,
        run_b,
        # A platform's first run changed nothing: every result would be "new".
        tuple(verdict_changes(before, after) if run_a is not None else ()),
        tuple(flaky_found),
        tuple(failing),
        tuple(figure_deltas(before, after)),
        tuple(judgements + trailing),
    )


def _last_runs(history: Sequence[StoredResult], count: int) -> list[StoredResult]:
    """The records of the last ``count`` runs of ``history`` (oldest first)."""
    run_ids = list(dict.fromkeys(r.run_id for r in history))[-count:]
    return [r for r in history if r.run_id in run_ids]


def _latest_by_key(results: Iterable[StoredResult]) -> dict[ResultKey, StoredResult]:
    latest: dict[ResultKey, StoredResult] = {}
    for result in results:  # oldest first: the last one wins
        latest[result.key] = result
    return latest


def verdict_changes(
    before: Sequence[StoredResult], after: Sequence[StoredResult]
) -> list[VerdictChange]:
    """Regressions, fixes, new and missing results from ``before`` (oldest first; each key's
    latest record counts) to ``after``."""
    earlier = _latest_by_key(before)
    later = _latest_by_key(after)
    changes = []
    for key, now in later.items():
        then = earlier.get(key)
        if then is None:
            kind: Optional[ChangeKind] = ChangeKind.NEW
        elif then.verdict == "PASS" and now.verdict in BAD:
            kind = ChangeKind.REGRESSION
        elif then.verdict in BAD and now.verdict == "PASS":
            kind = ChangeKind.FIX
        else:
            kind = None
        if kind is not None:
            verdict = then.verdict if then else None
            changes.append(
                VerdictChange(key, kind, verdict, now.verdict, now.vendor_device, now.reason)
            )
    changes += [
        VerdictChange(key, ChangeKind.MISSING, then.verdict, None, then.vendor_device, then.reason)
        for key, then in earlier.items()
        if key not in later
    ]
    return sorted(changes, key=lambda c: (c.kind.value, c.key.sort_key()))


def flaky(history: Sequence[StoredResult], *, flips: int = DEFAULT_FLIPS) -> list[Flaky]:
    """The results of ``history`` (oldest first) whose outcome (PASS, or FAIL/ERROR) flipped
    at least ``flips`` times between consecutive runs that ran them (SKIPs left out)."""
    found = []
    for key, records in _by_key(history).items():
        ran = [r for r in records if r.verdict != "SKIP"]
        count = sum((a.verdict == "PASS") != (b.verdict == "PASS") for a, b in zip(ran, ran[1:]))
        if count >= flips:
            found.append(
                Flaky(key, count, tuple(r.run_id for r in ran), tuple(r.verdict for r in ran))
            )
    return sorted(found, key=lambda f: f.key.sort_key())


def failing_since(history: Sequence[StoredResult]) -> list[FailingSince]:
    """Per result of ``history`` (oldest first) whose latest outcome is FAIL or ERROR, the
    first run of that unbroken FAIL/ERROR streak (SKIPs neither break nor start one)."""
    found = []
    for key, records in _by_key(history).items():
        ran = [r for r in records if r.verdict != "SKIP"]
        if not ran or ran[-1].verdict not in BAD:
            continue
        streak = 0
        while streak < len(ran) and ran[-1 - streak].verdict in BAD:
            streak += 1
        first = ran[-streak]
        found.append(FailingSince(key, ran[-1].verdict, first.run_id, first.started, streak))
    return sorted(found, key=lambda f: f.key.sort_key())


def figure_deltas(
    before: Sequence[StoredResult], after: Sequence[StoredResult]
) -> list[FigureDelta]:
    """Each figure of ``after`` beside the same figure of its key's latest record in
    ``before`` (oldest first), when that has it in the same unit and direction."""
    earlier = _latest_by_key(r for r in before if r.verdict != "ERROR")
    deltas = []
    for now in after:
        then = earlier.get(now.key)
        if then is None or now.verdict == "ERROR":
            continue
        old = {f.name: f for f in then.figures}
        deltas += [
            FigureDelta(now.key, old[f.name], f)
            for f in now.figures
            if f.name in old and _same_kind(old[f.name], f)
        ]
    return deltas


def judge_against_baseline(
    results: Sequence[StoredResult], baselines: BaselineStore
) -> list[FigureJudgement]:
    """The figures of ``results`` that their platform's baseline judges (same check, device
    and hot path; the baseline's own tolerances), each with its judgement. BaselineError
    when a figure's unit or direction differs from its baseline's."""
    judgements = []
    for result in results:
        if not result.figures or result.verdict == "ERROR":
            continue
        baseline = baselines.load(result.key.platform_id)
        subject = Subject(result.key.check_id, result.vendor_device, result.hot_path)
        expected = baseline.find(subject) if baseline else None
        if expected is None:
            continue
        source = (result.key.platform_id, *expected.runs)
        judgements += [
            FigureJudgement(result.key, figure, Reference.BASELINE, exp, source)
            for figure, exp in judged(result.figures, expected)
        ]
    return judgements


def judge_against_median(
    results: Sequence[StoredResult],
    earlier: Sequence[StoredResult],
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> list[FigureJudgement]:
    """Each figure of ``results`` against the median of the same figure (same key, name,
    unit and direction) over the records of ``earlier``, with the tolerance ``tolerances``
    give its name (figures with none are not judged, nor those without earlier samples)."""
    samples: dict[tuple[ResultKey, str], list[tuple[str, Figure]]] = {}
    for record in earlier:
        if record.verdict != "ERROR":
            for figure in record.figures:
                samples.setdefault((record.key, figure.name), []).append((record.run_id, figure))
    judgements = []
    for result in results:
        if result.verdict == "ERROR":
            continue
        for figure in result.figures:
            tolerance = tolerance_for(figure.name, tolerances)
            past = [
                (run_id, f)
                for run_id, f in samples.get((result.key, figure.name), [])
                if _same_kind(f, figure) and run_id != result.run_id
            ]
            if tolerance is None or not past:
                continue
            values = tuple(f.value for _, f in past)
            expected = Expected(
                figure.name,
                statistics.median(values),
                figure.unit,
                figure.higher_is_better,
                tolerance,
                values,
            )
            source = tuple(dict.fromkeys(run_id for run_id, _ in past))
            judgements.append(
                FigureJudgement(result.key, figure, Reference.MEDIAN, expected, source)
            )
    return judgements


def _same_kind(a: Figure, b: Figure) -> bool:
    return (a.unit, a.higher_is_better) == (b.unit, b.higher_is_better)


def _by_key(history: Iterable[StoredResult]) -> dict[ResultKey, list[StoredResult]]:
    grouped: dict[ResultKey, list[StoredResult]] = {}
    for record in history:
        grouped.setdefault(record.key, []).append(record)
    return grouped


def comparison_table(comparison: Comparison) -> str:
    """The comparison for a human: one row per verdict change, flaky or failing result and
    figure (delta from the earlier run, and any judgement that regressed)."""
    rows = [("PLATFORM", "CHECK", "DEVICE", "CHANGE", "BEFORE -> AFTER", "DETAIL")]

    def row(key: ResultKey, change: str, verdicts: str, detail: str) -> None:
        rows.append((key.platform_id, key.check_id, key.device_text(), change, verdicts, detail))

    for c in comparison.changes:
        row(c.key, c.kind.value, f"{c.before or '-'} -> {c.after or '-'}", c.reason[:80])
    for f in comparison.flaky:
        row(f.key, "flaky", " ".join(f.verdicts), f"{f.flips} flips in {len(f.runs)} runs")
    for s in comparison.failing_since:
        row(s.key, "failing", f"since {s.since_run}", f"{s.verdict}, {s.streak} runs")
    for d in comparison.figure_deltas:
        change = f" {d.change:+.1%}" if d.change is not None else ""
        row(
            d.key, "figure", f"{d.before.quantity()} -> {d.after.quantity()}", d.after.name + change
        )
    for j in comparison.figure_regressions():
        row(j.key, "figure regressed", j.reference.value, j.text())
    header = f"{comparison.run_a or '(no earlier run)'} -> {comparison.run_b}"
    if len(rows) == 1:
        return f"{header}: no change"
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5] for r in rows]
    return "\n".join([header, *(line.rstrip() for line in lines)])
