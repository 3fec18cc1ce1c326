"""The per-platform regression dashboard: a static HTML site made from the results store.

``vfio-hil dashboard [--out DIR]`` writes ``index.html`` (the check-by-platform matrix of the
latest verdicts and the platforms with their latest changes) and one ``platform-<id>.html``
per platform: its runs with links to each run's report and evidence, the regressions, fixes,
flaky, new and missing checks of its latest run, the history strip of every check, and the
trends of its judged figures with the baseline's band and the trailing median. The charts are
SVG files drawn by matplotlib; the pages hold no script and load nothing from the network, so
the site opens from disk, offline.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import vfio_hil
from vfio_hil.lab.baseline import (
    DEFAULT_TOLERANCES,
    BaselineStore,
    Expected,
    Tolerances,
    tolerance_for,
)
from vfio_hil.results.compare import (
    Comparison,
    FigureJudgement,
    Reference,
    latest_changes,
)
from vfio_hil.results.store import (
    PlatformInfo,
    ResultKey,
    ResultsStore,
    RunInfo,
    StoredResult,
)
from vfio_hil.static_pages import svg_figure, template_env, utc_text

TEMPLATES = Path(__file__).with_name("templates")
#: How many of a platform's runs its page shows (history strips and trends).
DEFAULT_LAST = 20
#: The order of badness of verdicts, for a matrix cell over several records.
WORST_FIRST = ("ERROR", "FAIL", "PASS", "SKIP")
#: The files of a run folder its rows link to, when they are there.
RUN_LINKS = (
    ("results", "results.json"),
    ("junit", "junit.xml"),
    ("allure", "allure-report/index.html"),
)


@dataclass(frozen=True)
class Cell:
    """One verdict of a history strip (one run) or of the matrix (one platform)."""

    verdict: str
    reason: str = ""
    run_id: str = ""
    evidence: Optional[str] = None
    platform_id: str = ""
    link: str = ""
    count: int = 1
    regression: bool = False
    flaky: bool = False


@dataclass
class HistoryRow:
    """A check on a device (and variant) of a platform, over the platform's runs."""

    check_id: str
    title: str
    device: str
    anchor: str
    cells: list[Optional[Cell]]


@dataclass(frozen=True)
class Trend:
    """One judged figure of a check on a device over the platform's runs, drawn to
    ``chart`` (a path relative to the site)."""

    check_id: str
    name: str
    caption: str
    chart: str
    regressed: bool


@dataclass(frozen=True)
class ChangeRow:
    """A change of the latest run, as the page shows it."""

    kind: str
    check_id: str
    device: str
    before: Optional[str]
    after: Optional[str]
    since: Optional[str]
    reason: str


@dataclass
class RunRow:
    """A run of a platform, with links to what its folder holds."""

    id: str
    started: str
    exit_status: Optional[int]
    hosts: tuple[str, ...]
    links: list[tuple[str, str]]


@dataclass
class PlatformPage:
    """Everything a platform's page shows."""

    id: str
    label: str
    page: str
    runs: list[RunRow]
    changes: list[ChangeRow]
    history: list[HistoryRow]
    trends: list[Trend]
    latest_results: list[StoredResult] = field(default_factory=list)

    @property
    def latest(self) -> RunRow:
        """The platform's newest run."""
        return self.runs[-1]

    @property
    def change_counts(self) -> list[tuple[str, int]]:
        """``[("regression", 1), ("flaky", 2)]``: the kinds of change of the latest run."""
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.kind] = counts.get(change.kind, 0) + 1
        return sorted(counts.items())


@dataclass(frozen=True)
class MatrixRow:
    """A check and its latest verdict on every platform (None where it never ran)."""

    check_id: str
    title: str
    cells: list[Optional[Cell]]


def build_dashboard(
    store: ResultsStore,
    out: Path,
    *,
    baselines: Optional[BaselineStore] = None,
    last: int = DEFAULT_LAST,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> Path:
    """Write the dashboard of ``store`` into ``out`` (made if missing; its pages and charts
    are replaced) and return the path of its ``index.html``. ``baselines`` give the figure
    charts their band; ``last`` is how many runs of a platform are shown."""
    out.mkdir(parents=True, exist_ok=True)
    charts = out / "charts"
    charts.mkdir(exist_ok=True)
    for old in [*charts.glob("*.svg"), *out.glob("platform-*.html")]:
        old.unlink()
    env = template_env(TEMPLATES)
    common = {
        "version": vfio_hil.__version__,
        "store": store.url,
        "made": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    pages = [
        _platform_page(store, platform, out, baselines, last, tolerances)
        for platform in store.platforms()
    ]
    pages = [p for p in pages if p.runs]
    for page in pages:
        html = env.get_template("platform.html.j2").render(p=page, **common)
        (out / page.page).write_text(html)
    index = out / "index.html"
    index.write_text(
        env.get_template("index.html.j2").render(platforms=pages, matrix=_matrix(pages), **common)
    )
    return index


def _platform_page(
    store: ResultsStore,
    platform: PlatformInfo,
    out: Path,
    baselines: Optional[BaselineStore],
    last: int,
    tolerances: Tolerances,
) -> PlatformPage:
    runs = store.runs(platform.id)[-last:]
    page = PlatformPage(
        platform.id,
        platform.label,
        f"platform-{platform.id}.html",
        [_run_row(run, out) for run in runs],
        [],
        [],
        [],
    )
    if not runs:
        return page
    records = store.history(platform.id, last=last)
    comparison = latest_changes(
        store, platform.id, baselines=baselines, window=last, tolerances=tolerances
    )
    page.changes = _change_rows(comparison)
    page.history = _history(records, runs, out)
    # Per check, device and variant: its record in the latest run that ran it (a run of a
    # few checks leaves the others' latest verdicts as they were).
    page.latest_results = store.latest_verdicts(platform.id)
    page.trends = _trends(
        records, runs, page.latest_results, comparison.figure_judgements, out, tolerances
    )
    return page


def _run_row(run: RunInfo, out: Path) -> RunRow:
    folder = Path(run.path)
    links = [
        (name, _href(folder / rel, out)) for name, rel in RUN_LINKS if (folder / rel).is_file()
    ]
    return RunRow(run.id, utc_text(run.started), run.exit_status, run.hosts, links)


def _href(target: Path, out: Path) -> str:
    """A link from a page in ``out`` to ``target``: relative, so a copied tree still works."""
    return Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()


def _change_rows(comparison: Comparison) -> list[ChangeRow]:
    """The rows of the latest-changes table: verdict changes, flaky results, results failing
    since an earlier run, and figures that regressed against the baseline or the median."""
    rows = [
        ChangeRow(c.kind.value, c.key.check_id, c.key.device_text(), c.before, c.after, None,
                  c.reason)
        for c in comparison.changes
    ]  # fmt: skip
    rows += [
        ChangeRow("flaky", f.key.check_id, f.key.device_text(), None, f.verdicts[-1], None,
                  f"{f.flips} flips over {len(f.runs)} runs: {' '.join(f.verdicts)}")
        for f in comparison.flaky
    ]  # fmt: skip
    rows += [
        ChangeRow("failing since", f.key.check_id, f.key.device_text(), None, f.verdict,
                  f.since_run, f"{f.streak} runs in a row")
        for f in comparison.failing_since
    ]  # fmt: skip
    rows += [
        ChangeRow("figure regression", j.key.check_id, j.key.device_text(), None, None, None,
                  j.text())
        for j in comparison.figure_regressions()
    ]  # fmt: skip
    return rows


def _anchor(key: ResultKey) -> str:
    """An HTML id for the history row of ``key``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", "-".join(key.sort_key()[1:]))


def _history(
    records: Sequence[StoredResult], runs: Sequence[RunInfo], out: Path
) -> list[HistoryRow]:
    column = {run.id: i for i, run in enumerate(runs)}
    folders = {run.id: Path(run.path) for run in runs}
    rows: dict[ResultKey, HistoryRow] = {}
    for record in records:
        if record.run_id not in column:
            continue
        row = rows.get(record.key)
        if row is None:
            row = rows[record.key] = HistoryRow(
                record.key.check_id,
                record.title,
                record.key.device_text(),
                _anchor(record.key),
                [None] * len(runs),
            )
        evidence = folders[record.run_id] / record.evidence if record.evidence else None
        row.cells[column[record.run_id]] = Cell(
            record.verdict,
            record.reason,
            record.run_id,
            _href(evidence, out) if evidence is not None and evidence.is_file() else None,
        )
    return sorted(rows.values(), key=lambda r: (r.check_id, r.device))


def _matrix(pages: Sequence[PlatformPage]) -> list[MatrixRow]:
    titles: dict[str, str] = {}
    cells: dict[str, dict[str, Cell]] = {}
    for page in pages:
        by_check: dict[str, list[StoredResult]] = {}
        for record in page.latest_results:
            by_check.setdefault(record.key.check_id, []).append(record)
            titles.setdefault(record.key.check_id, record.title)
        kinds = {(c.kind, c.check_id) for c in page.changes}
        for check_id, records in by_check.items():
            worst = min(records, key=lambda r: WORST_FIRST.index(r.verdict))
            anchor = next((row.anchor for row in page.history if row.check_id == check_id), "")
            cells.setdefault(check_id, {})[page.id] = Cell(
                worst.verdict,
                worst.reason,
                worst.run_id,
                platform_id=page.id,
                link=f"{page.page}#{anchor}" if anchor else page.page,
                count=len(records),
                regression=("regression", check_id) in kinds,
                flaky=("flaky", check_id) in kinds,
            )
    return [
        MatrixRow(check_id, titles[check_id], [cells[check_id].get(p.id) for p in pages])
        for check_id in sorted(cells)
    ]


def _trends(
    records: Sequence[StoredResult],
    runs: Sequence[RunInfo],
    latest: Iterable[StoredResult],
    judgements: Iterable[FigureJudgement],
    out: Path,
    tolerances: Tolerances,
) -> list[Trend]:
    """A chart per judged figure (one with a tolerance) of the latest run's records: its
    values over the shown runs, the baseline's band and the trailing median where the
    comparison judged the figure against them."""
    order = {run.id: i for i, run in enumerate(runs)}
    reference = {(j.key, j.measured.name, j.reference): j for j in judgements}
    trends = []
    for record in latest:
        for figure in record.figures:
            if tolerance_for(figure.name, tolerances) is None:
                continue
            points = sorted(
                (order[r.run_id], f.value)
                for r in records
                if r.key == record.key and r.run_id in order
                for f in r.figures
                if f.name == figure.name
            )
            if not points:  # its latest run is older than the runs shown
                continue
            against = [
                reference.get((record.key, figure.name, ref))
                for ref in (Reference.BASELINE, Reference.MEDIAN)
            ]
            name = f"{_anchor(record.key)}-{re.sub(r'[^A-Za-z0-9_]+', '_', figure.name)}.svg"
            _draw(out / "charts" / name, points, figure.unit, *(
                j.expected if j else None for j in against
            ))  # fmt: skip
            trends.append(
                Trend(
                    record.key.check_id,
                    figure.name,
                    f"{record.key.check_id} {record.key.device_text()}: {figure.name} "
                    f"({figure.unit}, {'higher' if figure.higher_is_better else 'lower'} is "
                    "better)",
                    f"charts/{name}",
                    any(j is not None and j.regressed for j in against),
                )
            )
    return trends


def _draw(
    path: Path,
    points: Sequence[tuple[int, float]],
    unit: str,
    baseline: Optional[Expected],
    median: Optional[Expected],
) -> None:
    """Draw one figure's trend to an SVG file: the measured values by run, the baseline's
    value with its tolerance band, and the trailing median."""
    with svg_figure(path, (5.6, 2.6)) as ax:
        if baseline is not None and baseline.tolerance is not None:
            low = baseline.value * (1 - baseline.tolerance)
            high = baseline.value * (1 + baseline.tolerance)
            ax.axhspan(
                low, high, color="#9ecae1", alpha=0.45, label=f"baseline ±{baseline.tolerance:.0%}"
            )
            ax.axhline(baseline.value, color="#3182bd", linewidth=1)
        if median is not None:
            ax.axhline(
                median.value, color="#777", linestyle="--", linewidth=1, label="trailing median"
            )
        xs = [x + 1 for x, _ in points]
        ax.plot(
            xs, [y for _, y in points], marker="o", color="#222", linewidth=1.2, label="measured"
        )
        ax.set_xlabel("run")
        ax.set_ylabel(unit)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
