"""The Allure HTML report of runs: one report per platform, each with its platform's history.

``vfio-hil report allure [RUN ...]`` reads a run's ``allure-results/`` (written by
allure-pytest during the run) and writes::

    <run>/allure-report/index.html                the run's platforms, each linking to:
    <run>/allure-report/<platform-id>/index.html  one self-contained Allure 3 report
    <reports>/allure-history/<platform-id>.jsonl  the platform's history, a line per report

Why a report per platform: Allure 3 keeps a report's history in one JSONL file (its config's
``historyPath``) and follows a test through it by ``historyId`` (the test and its parameters,
here the host and device). A host re-provisioned with another kernel keeps its historyIds, so a
history shared by platforms would compare a check's verdict on one kernel with another's
(flaky and new-failure markers, trends). One history file per platform (:func:`platform_key`,
the id baselines use) compares like with like, and successive runs of a platform build it up.

A result's platform comes from its labels: the pytest plugin labels every check's result with
``platform_id`` and the readable platform as ``parentSuite`` as soon as the check's host
session is known, the check's area as ``suite`` and its host as ``subSuite`` and ``dut``. A
result the plugin could not label (its host was lost before the check began) takes the
platform of its host's other results in the run; one without a host is put under
``unknown``.

The generator is npm's ``allure`` package (3.x), pinned in ``tools/allure/package.json`` and
its lock, installed by ``npm ci`` into ``tools/allure/node_modules`` (``make deps`` does it
when Node.js 20 or newer is there; :func:`install_allure` otherwise, on first use). It puts a
Google Analytics beacon into every page it writes; :func:`strip_beacon` removes it, and a
report where any trace of it is left is refused.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfio_hil.lab import CHECKOUT
from vfio_hil.lab.errors import HilError, ToolError, UsageError

#: The npm project pinning the Allure 3 report generator (package.json, package-lock.json).
TOOL_DIR = CHECKOUT / "tools" / "allure"
#: Allure 3 runs on Node.js 20 or newer.
MIN_NODE_MAJOR = 20
NODE_HINT = (
    f"install Node.js {MIN_NODE_MAJOR} or newer (nodejs.org, NodeSource or nvm; Debian 12's "
    "nodejs is 18), then run `make deps`"
)
#: Reports a platform's history keeps (Allure trims the file to them): about three months of
#: nightly runs. The results store is the long-term record; this is the report's trend.
HISTORY_LIMIT = 100
#: The allure label naming a result's platform (the id of ``baseline.platform_key``).
PLATFORM_LABEL = "platform_id"
#: The allure label naming the DUT host a result's check ran on.
HOST_LABEL = "dut"
#: Where a result whose platform nobody knows is reported.
UNKNOWN_PLATFORM = "unknown"
#: What Allure's analytics beacon looks like; no generated file may contain any of these.
BEACON_MARKERS = (b"googletagmanager", b"gtag(", b"dataLayer")
_BEACON_SCRIPTS = (
    # The loader: <script async src="https://www.googletagmanager.com/gtag/js?id=G-..."></script>
    re.compile(
        r"<script[^>]*\bsrc=\"https://www\.googletagmanager\.com/[^\"]*\"[^>]*>\s*</script>"
    ),
    # Its configuration: an inline <script> that sets up dataLayer and calls gtag(...).
    re.compile(r"<script>(?:(?!</script>).)*?\bgtag\((?:(?!</script>).)*?</script>", re.S),
)
_EMBEDDED_CODE = re.compile(rb"data:text/(?:javascript|css);base64,([A-Za-z0-9+/=]+)")

Log = Callable[[str], None]


@dataclass(frozen=True)
class AllureTool:
    """The installed report generator: the Node.js binary and Allure's CLI script."""

    node: str
    cli: Path
    version: str

    def command(self, *args: str) -> list[str]:
        """The command line running Allure's CLI with ``args``."""
        return [self.node, str(self.cli), *args]


@dataclass(frozen=True)
class PlatformReport:
    """One platform's report of a run."""

    platform_id: str
    platform: str
    index: Path
    history: Path
    #: Allure statuses (passed, failed, broken, skipped) and how many results have each.
    statuses: dict[str, int]

    def counts(self) -> str:
        """``333 passed, 140 skipped``."""
        return ", ".join(f"{n} {status}" for status, n in sorted(self.statuses.items()))

    def text(self) -> str:
        """One line for a human."""
        return f"{self.index} ({self.platform_id}: {self.platform}; {self.counts()})"


@dataclass(frozen=True)
class RunReport:
    """The Allure reports of one run: its index page and its platforms' reports."""

    run_id: str
    index: Path
    platforms: list[PlatformReport]


def find_node() -> str:
    """The ``node`` on PATH; ToolError (one line saying what to install) when there is none
    or it is older than Node.js 20."""
    node = shutil.which("node")
    if node is None:
        raise ToolError(f"the Allure report needs Node.js and no `node` is on PATH: {NODE_HINT}")
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"{node} --version failed ({exc}): {NODE_HINT}") from None
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major.group(1)) < MIN_NODE_MAJOR:
        raise ToolError(
            f"the Allure report needs Node.js {MIN_NODE_MAJOR} or newer, {node} is "
            f"{version or 'of an unknown version'}: {NODE_HINT}"
        )
    return node


def pinned_version(tool_dir: Path = TOOL_DIR) -> str:
    """The ``allure`` version ``tool_dir/package.json`` pins."""
    return str(json.loads((tool_dir / "package.json").read_text())["dependencies"]["allure"])


def install_allure(tool_dir: Path = TOOL_DIR, log: Log | None = None) -> AllureTool:
    """The pinned Allure, installed with ``npm ci`` unless ``tool_dir/node_modules`` already
    holds what the lock file says (its stamp carries the lock's SHA-256). ToolError when
    Node.js is missing or too old, or npm fails."""
    node = find_node()
    lock = tool_dir / "package-lock.json"
    stamp = tool_dir / "node_modules" / ".installed"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text().strip() != digest:
        # The npm that came with this node, else the first on PATH.
        npm = shutil.which("npm", path=f"{Path(node).parent}{os.pathsep}{os.environ['PATH']}")
        if npm is None:
            raise ToolError(f"no `npm` beside {node} or on PATH: {NODE_HINT}")
        if log is not None:
            log(f"installing allure {pinned_version(tool_dir)} with npm ci in {tool_dir}")
        done = subprocess.run(
            # No package of the lock has install scripts; none may start running any.
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=tool_dir,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ToolError(f"npm ci in {tool_dir} failed: {_last_line(done.stderr)}")
    stamp.write_text(digest + "\n")  # also freshens it for make, whose rule is by date
    package = tool_dir / "node_modules" / "allure"
    meta = json.loads((package / "package.json").read_text())
    cli = meta["bin"] if isinstance(meta["bin"], str) else meta["bin"]["allure"]
    return AllureTool(node=node, cli=package / cli, version=str(meta["version"]))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def check_run_folders(runs: Sequence[Path]) -> None:
    """UsageError naming the first of ``runs`` that holds no ``allure-results/``."""
    for run in runs:
        if not (run / "allure-results").is_dir():
            raise UsageError(f"{run}: not a run folder (no allure-results/)")


def report_runs(
    runs: Sequence[Path],
    history_dir: Path,
    tool: AllureTool,
    out: Path | None = None,
    log: Log | None = None,
) -> list[RunReport]:
    """The Allure reports of ``runs``, oldest run first so that each platform's history grows
    in run order. A run's reports go to ``<run>/allure-report``, or to ``out`` (one run) or
    ``out/<run-id>`` (several)."""
    check_run_folders(runs)
    ordered = sorted({run.resolve() for run in runs}, key=lambda run: run.name)
    built = []
    for run in ordered:
        if out is None:
            target = run / "allure-report"
        else:
            target = out / run.name if len(ordered) > 1 else out
        built.append(report_run(run, target, history_dir, tool, log))
    return built


def report_run(
    run_dir: Path, out: Path, history_dir: Path, tool: AllureTool, log: Log | None = None
) -> RunReport:
    """Write ``out/<platform-id>/index.html`` per platform of the run and ``out/index.html``
    listing them; each report appends to ``history_dir/<platform-id>.jsonl``."""
    source = run_dir / "allure-results"
    results = _read_json(source, "result")
    if not results:
        raise UsageError(f"{run_dir}: {source} holds no allure result")
    containers = _read_json(source, "container")
    name = f"vfio-hil run {run_dir.name}"
    reports = []
    for platform_id, members in sorted(group_by_platform(list(results.values())).items()):
        target = out / platform_id
        history = history_dir / f"{platform_id}.jsonl"
        if log is not None:
            log(f"allure report of {run_dir.name}, platform {platform_id}: {target}")
        _generate(tool, source, members, containers, target, history, name)
        reports.append(
            PlatformReport(
                platform_id=platform_id,
                platform=label_value(members[0], "parentSuite") or UNKNOWN_PLATFORM,
                index=target / "index.html",
                history=history,
                statuses=dict(Counter(str(r.get("status")) for r in members)),
            )
        )
    index = out / "index.html"
    index.write_text(index_page(run_dir.name, reports, out))
    return RunReport(run_id=run_dir.name, index=index, platforms=reports)


def _read_json(folder: Path, kind: str) -> dict[str, dict[str, Any]]:
    """The ``*-<kind>.json`` files of an allure-results folder, by file name; UsageError
    naming a file that is not JSON (a run killed as it wrote it)."""
    found = {}
    for path in sorted(folder.glob(f"*-{kind}.json")):
        try:
            found[path.name] = json.loads(path.read_text())
        except ValueError as exc:
            raise UsageError(f"{path}: not an allure {kind} ({exc})") from None
    return found


def label_value(result: dict[str, Any], name: str) -> str | None:
    """The value of a result's first label called ``name``."""
    return next((lb["value"] for lb in result.get("labels", []) if lb["name"] == name), None)


def group_by_platform(results: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Results by platform id. A result without a platform label is given (in place) the
    platform labels of its host's other results, else ``unknown``."""
    results = list(results)
    by_host: dict[str, list[dict[str, str]]] = {}
    for result in results:
        host = label_value(result, HOST_LABEL)
        if host is not None and label_value(result, PLATFORM_LABEL) is not None:
            by_host.setdefault(host, _platform_labels(result))
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if label_value(result, PLATFORM_LABEL) is None:
            labels = by_host.get(label_value(result, HOST_LABEL) or "") or _unknown_labels()
            result["labels"] = [
                *(lb for lb in result.get("labels", []) if lb["name"] != "parentSuite"),
                *labels,
            ]
        groups.setdefault(str(label_value(result, PLATFORM_LABEL)), []).append(result)
    return groups


def _platform_labels(result: dict[str, Any]) -> list[dict[str, str]]:
    return [lb for lb in result["labels"] if lb["name"] in (PLATFORM_LABEL, "parentSuite")]


def _unknown_labels() -> list[dict[str, str]]:
    return [
        {"name": PLATFORM_LABEL, "value": UNKNOWN_PLATFORM},
        {"name": "parentSuite", "value": "platform not recorded"},
    ]


def _generate(
    tool: AllureTool,
    source: Path,
    members: list[dict[str, Any]],
    containers: dict[str, dict[str, Any]],
    target: Path,
    history: Path,
    name: str,
) -> None:
    """Stage the results of one platform (with their fixtures' containers and every
    attachment they name) and run ``allure generate`` on them."""
    uuids = {r["uuid"] for r in members}
    chosen = [c for c in containers.values() if uuids & set(c.get("children", []))]
    with tempfile.TemporaryDirectory(prefix="vfio-hil-allure-") as tmp:
        staged = Path(tmp) / "allure-results"
        staged.mkdir()
        for result in members:
            (staged / f"{result['uuid']}-result.json").write_text(json.dumps(result))
        for container in chosen:
            (staged / f"{container['uuid']}-container.json").write_text(json.dumps(container))
        for attachment in sorted(attachment_sources([*members, *chosen])):
            if (source / attachment).is_file():
                shutil.copyfile(source / attachment, staged / attachment)
        config = Path(tmp) / "allurerc.json"
        config.write_text(json.dumps(allure_config(name, target, history), indent=2))
        history.parent.mkdir(parents=True, exist_ok=True)
        drop_history_entry(history, name)
        shutil.rmtree(target, ignore_errors=True)
        done = subprocess.run(
            tool.command("generate", "--config", str(config), str(staged)),
            cwd=tmp,
            capture_output=True,
            text=True,
        )
    if done.returncode != 0 or not (target / "index.html").is_file():
        raise HilError(
            f"allure generate failed (status {done.returncode}): "
            f"{_last_line(done.stderr or done.stdout)}"
        )
    strip_beacon(target)


def allure_config(name: str, output: Path, history: Path) -> dict[str, Any]:
    """The Allure 3 configuration (``allurerc.json``) of one platform's report: the awesome
    report as one self-contained ``index.html`` (it opens from a file, no server needed),
    grouped by platform, area and host, with the platform's history file (its last
    :data:`HISTORY_LIMIT` reports)."""
    return {
        "name": name,
        "output": str(output),
        "historyPath": str(history),
        "historyLimit": HISTORY_LIMIT,
        "plugins": {
            "awesome": {
                "options": {
                    "reportName": name,
                    "singleFile": True,
                    "groupBy": ["parentSuite", "suite", "subSuite"],
                }
            }
        },
    }


def attachment_sources(objects: Iterable[Any]) -> set[str]:
    """The attachment files named anywhere in allure results or containers (the test's own,
    its steps', its fixtures')."""
    found: set[str] = set()
    stack = list(objects)
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.update(a["source"] for a in item.get("attachments", []) if "source" in a)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def drop_history_entry(history: Path, name: str) -> None:
    """Remove the entries of report ``name`` from a history file: a run reported again
    replaces its entry instead of counting twice."""
    if not history.is_file():
        return
    lines = history.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("name") != name]
    if len(kept) != len(lines):
        history.write_text("".join(f"{line}\n" for line in kept))


def strip_beacon(report_dir: Path) -> None:
    """Remove Allure's analytics beacon (a Google Tag Manager script and the inline script
    configuring it) from every HTML and JavaScript file of a report; HilError when a file
    still shows a trace of it (a new Allure injecting it another way must not go out)."""
    for path in sorted(p for p in report_dir.rglob("*") if p.is_file()):
        if path.suffix in (".html", ".js"):
            text = path.read_text(encoding="utf-8")
            stripped = text
            for script in _BEACON_SCRIPTS:
                stripped = script.sub("", stripped)
            if stripped != text:
                path.write_text(stripped, encoding="utf-8")
        left = beacon_traces(path.read_bytes())
        if left:
            raise HilError(f"{path}: Allure's analytics beacon is still there ({left[0]})")


def beacon_traces(content: bytes) -> list[str]:
    """The beacon markers found in a file's content, or in the scripts and styles it embeds
    as base64 ``data:`` URLs (the single-file report's whole application is one)."""
    embedded = [base64.b64decode(m) for m in _EMBEDDED_CODE.findall(content)]
    return [m.decode() for m in BEACON_MARKERS if any(m in c for c in [content, *embedded])]


def index_page(run_id: str, reports: Sequence[PlatformReport], out: Path) -> str:
    """The run's page listing its platform reports (plain HTML, nothing loaded from
    elsewhere)."""
    rows = "\n".join(_index_row(report, out) for report in reports)
    title = html.escape(f"vfio-hil run {run_id}: Allure reports per platform")
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em 1em;text-align:left}}</style>
</head>
<body>
<h1>{title}</h1>
<table>
<tr><th>Platform</th><th>Id</th><th>Results</th><th>History</th></tr>
{rows}
</table>
</body>
</html>
"""


def _index_row(report: PlatformReport, out: Path) -> str:
    cells = [
        f'<a href="{html.escape(report.index.relative_to(out).as_posix())}">'
        f"{html.escape(report.platform)}</a>",
        f"<code>{html.escape(report.platform_id)}</code>",
        html.escape(report.counts()),
        f"<code>{html.escape(str(report.history))}</code>",
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def main() -> int:
    """``python -m vfio_hil.lab.allure_report`` (``make deps``): install the pinned Allure
    when Node.js 20 or newer is there, else say what to install without failing the build (only
    ``vfio-hil report allure`` needs it). Exit 2 when Node.js is there but npm fails."""
    try:
        find_node()
    except ToolError as exc:
        print(f"allure report generator not installed: {exc}", file=sys.stderr)
        return 0
    try:
        tool = install_allure(log=lambda msg: print(msg, file=sys.stderr))
    except ToolError as exc:
        print(f"allure report generator: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"allure {tool.version} ready ({tool.node})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
