"""Baselines: the figures a platform is expected to deliver, and the judgement of measured
figures against them.

A baseline is per platform (:func:`platform_key`: IOMMU kind and mode, interrupt remapping,
kernel, QEMU version or firmware, CPU model, accelerator). ``vfio-hil baseline save RUN
[RUN ...]`` takes the figures of the given runs, groups them by platform, check, device
(vendor:device), hot path and figure name, and keeps the median over the runs with its
samples, one file per platform::

    <dir>/<platform-id>.json
    {
      "format": 1,
      "platform_id": "1a2b3c4d5e6f",
      "platform": {"iommu": "intel", "kernel_release": "6.1.0-28-amd64", ...},
      "checks": [
        {"check_id": "PERF-001", "device": "1b36:0010", "hot_path": "compiled",
         "runs": ["20261126-101500-1a2b", "20261126-103000-3c4d", "20261126-104500-5e6f"],
         "figures": {
           "randread_4k_qd32.iops": {"value": 330000.0, "unit": "IOPS",
                                     "higher_is_better": true, "tolerance": 0.25,
                                     "samples": [329000.0, 330000.0, 331500.0]}}}
      ]
    }

A measured figure regresses when it is worse than the baseline's value by more than the
figure's tolerance (a fraction; null: reported and stored, never judged).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vfio_hil.core.perf import Figure
from vfio_hil.lab.errors import BaselineError, ResultsFileError
from vfio_hil.lab.report import read_results

#: Version of the baseline file format; a file of another version is refused, not guessed at.
FORMAT = 1
#: Environment variable naming the baselines directory (default ``baselines``, from the cwd).
ENV_DIR = "VFIO_HIL_BASELINES"
#: What makes two platforms the same, for figures and for the results store (keys of a
#: record's ``platform``): the IOMMU kind and its default domain type, interrupt remapping,
#: the kernel, QEMU or the firmware, the CPU and the accelerator.
PLATFORM_FIELDS = (
    "iommu",
    "iommu_mode",
    "interrupt_remapping",
    "kernel_release",
    "qemu_version",
    "accel",
    "firmware",
    "cpu_model",
    "vm_host_cpu_model",
)

#: A tolerance table: fnmatch pattern of a figure name -> tolerance (a fraction of the expected
#: value), or None for "not judged". The first matching pattern wins.
Tolerances = Sequence[tuple[str, Optional[float]]]

DEFAULT_TOLERANCES: Tolerances = (
    # Throughput and rates are averages over the whole measurement; they move with the load of
    # the host (a shared CI machine, an emulated device under TCG) by 10-20 % run to run.
    ("*.iops", 0.25),
    ("*.mib_s", 0.25),
    ("*.rate", 0.25),
    # A ratio of two throughputs measured in the same run: both move with the host together.
    ("near_native.*", 0.25),
    # Central latencies and CPU time per I/O: still averages over many I/Os, but each one is
    # exposed to scheduling and timer noise, so they spread a little more than throughput.
    ("*.lat_mean", 0.35),
    ("*.lat_p50", 0.35),
    ("*.lat_p90", 0.35),
    ("*.cpu_per_io", 0.35),
    # Tails and extremes are set by a handful of I/Os (a preempted vCPU, a host page fault, an
    # interrupt storm next door): too noisy to judge run to run on a shared or emulated host.
    # They are still reported and stored.
    ("*.lat_min", None),
    ("*.lat_max", None),
    ("*.lat_p99", None),
    ("*.lat_p99_9", None),
    ("*.lat_p99_99", None),
)


def default_dir() -> Path:
    """The baselines directory: ``$VFIO_HIL_BASELINES``, else ``baselines`` in the cwd."""
    return Path(os.environ.get(ENV_DIR) or "baselines")


def platform_key(summary: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The platform a record's figures belong to: a short stable id (the first 12 hex digits
    of the SHA-256 of the canonical JSON of the fields) and the fields themselves (those of
    :data:`PLATFORM_FIELDS`, None where the summary lacks one)."""
    fields = {name: summary.get(name) for name in PLATFORM_FIELDS}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12], fields


def platform_text(fields: Mapping[str, Any]) -> str:
    """One line for a human: ``intel IOMMU (DMA-FQ), interrupt remapping on, kernel
    6.1.0-28-amd64, QEMU 7.2.22 (tcg), ...``."""
    iommu = f"{fields.get('iommu')} IOMMU"
    if fields.get("iommu_mode"):
        iommu += f" ({fields['iommu_mode']})"
    parts = [iommu]
    remapping = fields.get("interrupt_remapping")
    if remapping is not None:
        parts.append(f"interrupt remapping {'on' if remapping else 'off'}")
    parts.append(f"kernel {fields.get('kernel_release')}")
    if fields.get("qemu_version"):
        parts.append(f"QEMU {fields['qemu_version']} ({fields.get('accel')})")
    firmware = fields.get("firmware") or {}
    if any(firmware.values()):
        parts.append("firmware " + " ".join(str(v) for v in firmware.values() if v))
    if fields.get("cpu_model"):
        parts.append(f"CPU {fields['cpu_model']}")
    if fields.get("vm_host_cpu_model"):
        parts.append(f"on {fields['vm_host_cpu_model']}")
    return ", ".join(parts)


def tolerance_for(name: str, table: Tolerances = DEFAULT_TOLERANCES) -> float | None:
    """The tolerance of figure ``name``: the first pattern of ``table`` it matches. A figure
    no pattern names is not judged: a new kind of figure must not FAIL checks before someone
    decides how noisy it is."""
    for pattern, tolerance in table:
        if fnmatch.fnmatchcase(name, pattern):
            return tolerance
    return None


def parse_tolerance(text: str) -> tuple[str, float | None]:
    """``PATTERN=PCT`` (``*.iops=10``, ``*.lat_p99=40%``, ``*.lat_max=none``) as a row of a
    tolerance table; BaselineError naming the problem when it is not one."""
    pattern, sep, pct = text.partition("=")
    pct = pct.strip().removesuffix("%").strip()
    if not sep or not pattern.strip() or not pct:
        raise BaselineError(f"tolerance {text!r} is not PATTERN=PCT (e.g. '*.iops=25')")
    if pct.lower() == "none":
        return pattern.strip(), None
    try:
        value = float(pct)
    except ValueError:
        raise BaselineError(f"tolerance {text!r}: {pct!r} is not a percentage") from None
    if not math.isfinite(value) or value < 0:
        raise BaselineError(f"tolerance {text!r}: a percentage is a finite number >= 0")
    return pattern.strip(), value / 100


@dataclass(frozen=True)
class Subject:
    """What a set of baseline figures belongs to, within a platform: the check, the device
    (``vendor:device``, None for a host check) and the hot path that measured them."""

    check_id: str
    device: str | None
    hot_path: str | None

    @classmethod
    def of_record(cls, record: Mapping[str, Any]) -> Subject:
        """The subject of a result record (its ``check_id``, ``device``, ``hot_path``)."""
        device = record.get("device") or {}
        return cls(record["check_id"], device.get("vendor_device"), record.get("hot_path"))

    def text(self) -> str:
        """``PERF-001 on 1b36:0010 (compiled)``."""
        return f"{self.check_id} on {self.device or 'the host'} ({self.hot_path})"


@dataclass(frozen=True)
class Expected:
    """A figure as a baseline expects it: the median ``value`` of ``samples``, its unit and
    direction, and the ``tolerance`` (a fraction; None: not judged)."""

    name: str
    value: float
    unit: str
    higher_is_better: bool
    tolerance: float | None
    samples: tuple[float, ...]

    def regressed(self, measured: float) -> bool:
        """Whether ``measured`` is worse than expected by more than the tolerance (exactly
        at the tolerance is not a regression)."""
        if self.tolerance is None:
            return False
        if self.higher_is_better:
            return measured < self.value * (1 - self.tolerance)
        return measured > self.value * (1 + self.tolerance)

    def figure(self) -> Figure:
        """The expected value as a Figure."""
        return Figure(self.name, self.value, self.unit, self.higher_is_better)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (without the name, which keys it in its check)."""
        return {
            "value": self.value,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "tolerance": self.tolerance,
            "samples": list(self.samples),
        }

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Expected:
        """The inverse of :meth:`to_dict` (KeyError, TypeError or ValueError if malformed)."""
        tolerance = data["tolerance"]
        return cls(
            name,
            float(data["value"]),
            str(data["unit"]),
            bool(data["higher_is_better"]),
            None if tolerance is None else float(tolerance),
            tuple(float(s) for s in data["samples"]),
        )


@dataclass(frozen=True)
class CheckBaseline:
    """The expected figures of one subject on one platform, and the runs they came from."""

    subject: Subject
    runs: tuple[str, ...]
    figures: Mapping[str, Expected]


@dataclass(frozen=True)
class Regression:
    """A measured figure worse than its baseline by more than the tolerance."""

    measured: Figure
    expected: Expected
    platform_id: str
    runs: tuple[str, ...]

    def text(self) -> str:
        """``randread_4k_qd32.iops: measured 161234 IOPS, expected 330000 IOPS within 25%
        (baseline 1a2b3c4d5e6f from run 20261126-101500-1a2b)``."""
        runs = ("run " if len(self.runs) == 1 else "runs ") + ", ".join(self.runs)
        return (
            f"{self.measured.name}: measured {self.measured.quantity()}, expected "
            f"{self.expected.figure().quantity()} within {self.expected.tolerance * 100:g}% "
            f"(baseline {self.platform_id} from {runs})"
        )


def judged(figures: Iterable[Figure], baseline: CheckBaseline) -> list[tuple[Figure, Expected]]:
    """The measured figures the baseline judges, each with what it expects: figures the
    baseline does not know, or holds with no tolerance, are not judged. BaselineError when a
    figure's unit or direction differs from its baseline's (a changed measurement: comparing
    it would be meaningless)."""
    pairs = []
    for figure in figures:
        expected = baseline.figures.get(figure.name)
        if expected is None or expected.tolerance is None:
            continue
        if (figure.unit, figure.higher_is_better) != (expected.unit, expected.higher_is_better):
            raise BaselineError(
                f"{figure.name}: measured in {figure.unit} (higher is better: "
                f"{figure.higher_is_better}), its baseline in {expected.unit} (higher is "
                f"better: {expected.higher_is_better}); save the baseline again"
            )
        pairs.append((figure, expected))
    return pairs


def judge(figures: Iterable[Figure], baseline: CheckBaseline, platform_id: str) -> list[Regression]:
    """Every figure of ``figures`` worse than ``baseline`` expects by more than its
    tolerance (see :func:`judged` for which figures are judged)."""
    return [
        Regression(figure, expected, platform_id, baseline.runs)
        for figure, expected in judged(figures, baseline)
        if expected.regressed(figure.value)
    ]


@dataclass
class PlatformBaseline:
    """The baselines of one platform: what one ``<platform-id>.json`` holds."""

    platform_id: str
    platform: dict[str, Any]
    checks: list[CheckBaseline] = field(default_factory=list)

    def find(self, subject: Subject) -> CheckBaseline | None:
        """The baseline of ``subject``, or None."""
        return next((c for c in self.checks if c.subject == subject), None)

    def figure_count(self) -> int:
        """How many figures the file holds, over every subject."""
        return sum(len(c.figures) for c in self.checks)

    def check_ids(self) -> list[str]:
        """The checks the file holds figures of, sorted."""
        return sorted({c.subject.check_id for c in self.checks})

    def replaced_by(self, newer: PlatformBaseline) -> PlatformBaseline:
        """This baseline with every subject of the checks ``newer`` holds replaced by
        ``newer``'s (a check saved again is saved whole: devices or hot paths it no longer
        measures go too); the other checks are kept."""
        renewed = set(newer.check_ids())
        kept = [c for c in self.checks if c.subject.check_id not in renewed]
        return PlatformBaseline(self.platform_id, newer.platform, kept + newer.checks)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON form (see the module's docstring)."""
        checks = sorted(self.checks, key=lambda c: _subject_order(c.subject))
        return {
            "format": FORMAT,
            "platform_id": self.platform_id,
            "platform": self.platform,
            "checks": [
                {
                    "check_id": c.subject.check_id,
                    "device": c.subject.device,
                    "hot_path": c.subject.hot_path,
                    "runs": list(c.runs),
                    "figures": {n: e.to_dict() for n, e in sorted(c.figures.items())},
                }
                for c in checks
            ],
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> PlatformBaseline:
        """The inverse of :meth:`to_json`; BaselineError naming ``source`` if malformed."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise BaselineError(f"{source}: not a baseline of format {FORMAT} (found {found})")
        try:
            checks = [
                CheckBaseline(
                    Subject(str(c["check_id"]), c["device"], c["hot_path"]),
                    tuple(str(r) for r in c["runs"]),
                    {n: Expected.from_dict(n, e) for n, e in c["figures"].items()},
                )
                for c in data["checks"]
            ]
            return cls(str(data["platform_id"]), dict(data["platform"]), checks)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BaselineError(
                f"{source}: malformed baseline ({type(exc).__name__}: {exc})"
            ) from None


def _subject_order(subject: Subject) -> tuple[str, str, str]:
    return (subject.check_id, subject.device or "", subject.hot_path or "")


class BaselineStore:
    """A directory of baselines, one ``<platform-id>.json`` per platform."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, platform_id: str) -> Path:
        """Where the baseline of ``platform_id`` lives."""
        return self.directory / f"{platform_id}.json"

    def load(self, platform_id: str) -> PlatformBaseline | None:
        """The baseline of ``platform_id``, None when there is none."""
        path = self.path(platform_id)
        return self._read(path) if path.is_file() else None

    def all(self) -> list[tuple[Path, PlatformBaseline]]:
        """Every baseline of the directory (none when it does not exist), by file name."""
        if not self.directory.is_dir():
            return []
        return [(p, self._read(p)) for p in sorted(self.directory.glob("*.json"))]

    def save(self, baseline: PlatformBaseline) -> Path:
        """Write ``baseline`` atomically and return its path."""
        path = self.path(baseline.platform_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(baseline.to_json(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @staticmethod
    def _read(path: Path) -> PlatformBaseline:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BaselineError(f"{path}: cannot read the baseline ({exc})") from None
        return PlatformBaseline.from_json(data, str(path))


@dataclass(frozen=True)
class RunFigures:
    """The result records of one run folder."""

    run_id: str
    records: list[dict[str, Any]]


def read_run(path: Path) -> RunFigures:
    """The run at ``path`` (see :func:`vfio_hil.lab.report.read_results`); BaselineError when
    it is not there, is malformed or holds no figures."""
    try:
        data = read_results(path)
    except ResultsFileError as exc:
        raise BaselineError(str(exc)) from None
    run = RunFigures(str(data["run"]["id"]), data["results"])
    if not any(_figures_of(r) for r in run.records):
        raise BaselineError(f"run {run.run_id} ({path}) holds no figures to save")
    return run


def _figures_of(record: Mapping[str, Any]) -> list[Figure]:
    # An ERROR means the harness or the lab broke: its figures are not the platform's.
    if record.get("verdict") == "ERROR":
        return []
    return [Figure.from_dict(f) for f in record.get("figures") or []]


def baselines_from_runs(
    runs: Sequence[RunFigures], tolerances: Tolerances = DEFAULT_TOLERANCES
) -> list[PlatformBaseline]:
    """The baselines the runs' figures make, one per platform: per subject and figure, the
    median over every sample (normally one per run), with the tolerance ``tolerances`` give
    its name. BaselineError when a figure changed unit or direction between the runs."""
    platforms: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[Subject, dict[str, list[Figure]]]] = {}
    sources: dict[tuple[str, Subject], list[str]] = {}
    for run in runs:
        for record in run.records:
            figures = _figures_of(record)
            if not figures:
                continue
            platform_id, fields = platform_key(record.get("platform") or {})
            platforms[platform_id] = fields
            subject = Subject.of_record(record)
            by_name = samples.setdefault(platform_id, {}).setdefault(subject, {})
            for figure in figures:
                by_name.setdefault(figure.name, []).append(figure)
            run_ids = sources.setdefault((platform_id, subject), [])
            if run.run_id not in run_ids:
                run_ids.append(run.run_id)
    return [
        PlatformBaseline(
            platform_id,
            platforms[platform_id],
            [
                CheckBaseline(
                    subject,
                    tuple(sources[platform_id, subject]),
                    {n: _median(n, figs, tolerances) for n, figs in by_name.items()},
                )
                for subject, by_name in by_subject.items()
            ],
        )
        for platform_id, by_subject in samples.items()
    ]


def _median(name: str, figures: list[Figure], tolerances: Tolerances) -> Expected:
    kinds = {(f.unit, f.higher_is_better) for f in figures}
    if len(kinds) > 1:
        raise BaselineError(f"{name}: the runs measured it in different ways: {sorted(kinds)}")
    first = figures[0]
    values = tuple(f.value for f in figures)
    return Expected(
        name,
        statistics.median(values),
        first.unit,
        first.higher_is_better,
        tolerance_for(name, tolerances),
        values,
    )


@dataclass(frozen=True)
class Saved:
    """What saving did to one platform's file."""

    path: Path
    baseline: PlatformBaseline
    #: Checks whose previous figures the save replaced.
    replaced: tuple[str, ...]
    #: Checks of the previous file the save kept as they were.
    kept: tuple[str, ...]
    #: How many runs the figures came from.
    run_count: int

    def text(self) -> str:
        """``baselines/1a2b3c4d5e6f.json: 24 figures of PERF-001 (median of 3 runs); ...``."""
        new = [c for c in self.baseline.checks if c.subject.check_id not in self.kept]
        ids = sorted({c.subject.check_id for c in new})
        line = (
            f"{self.path}: {sum(len(c.figures) for c in new)} figures of {', '.join(ids)} "
            f"(median of {self.run_count} run{'s' if self.run_count != 1 else ''}; "
            f"platform {platform_text(self.baseline.platform)})"
        )
        if self.replaced:
            line += f"; replaced the previous figures of {', '.join(self.replaced)}"
        if self.kept:
            line += f"; kept {', '.join(self.kept)}"
        return line


def save_baselines(
    run_paths: Sequence[Path], store: BaselineStore, tolerances: Tolerances = DEFAULT_TOLERANCES
) -> list[Saved]:
    """Save the baselines of the runs at ``run_paths`` into ``store``: a platform's file
    already there keeps the checks the runs do not hold and has the others replaced."""
    runs = [read_run(p) for p in run_paths]
    saved = []
    for new in baselines_from_runs(runs, tolerances):
        old = store.load(new.platform_id)
        merged = old.replaced_by(new) if old else new
        replaced = sorted(set(old.check_ids()) & set(new.check_ids())) if old else []
        kept = sorted(set(old.check_ids()) - set(new.check_ids())) if old else []
        path = store.save(merged)
        run_count = len({r for c in new.checks for r in c.runs})
        saved.append(Saved(path, merged, tuple(replaced), tuple(kept), run_count))
    return saved
