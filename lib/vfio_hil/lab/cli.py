"""The ``vfio-hil`` command: a thin layer over the lab library.

    vfio-hil run [--inventory FILE] [--reports DIR] [--keep-rack] [--lock-wait S] [-- PYTEST ARGS]
    vfio-hil restore [--inventory FILE] [--lock-wait S] [HOST ...]
    vfio-hil rack up|down|status [--inventory FILE] [HOST ...]
    vfio-hil checks list [--json]
    vfio-hil baseline save RUN [RUN ...] [--baselines DIR] [--tolerance PATTERN=PCT ...]
    vfio-hil baseline show [--baselines DIR]
    vfio-hil report allure [RUN ...] [--reports DIR] [--out DIR]
    vfio-hil results import DIR [DIR ...] [--store URL] [--reports DIR]
    vfio-hil results compare RUN_A RUN_B [--store URL] [--reports DIR] [--baselines DIR]
    vfio-hil results export --kcidb [--out FILE] [RUN ...] [--store URL] [--reports DIR]
    vfio-hil dashboard [--out DIR] [--store URL] [--reports DIR] [--baselines DIR] [--last N]
    vfio-hil cert keygen|build|verify|profiles  (see vfio_hil.cert.cli)

Exit status: 0 all checks PASS or SKIP; 1 a check FAILed or ERRORed; 2 bad input (inventory,
options, a device that is not there); 3 the lab broke (rack boot, provisioning, a host lost
during the run, a host another run held past --lock-wait, a results store that cannot be
reached); 130 Ctrl-C. `cert verify`: 1 when the bundle does not verify.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vfio_hil.cert import cli as cert_cli
from vfio_hil.lab import CHECKOUT
from vfio_hil.lab.allure_report import check_run_folders, install_allure, report_runs
from vfio_hil.lab.baseline import (
    DEFAULT_TOLERANCES,
    BaselineStore,
    default_dir,
    parse_tolerance,
    platform_text,
    save_baselines,
)
from vfio_hil.lab.errors import HilError, ProvisioningError, UsageError
from vfio_hil.lab.inventory import DEFAULT_INVENTORY, Inventory, load_inventory
from vfio_hil.lab.ownership import DEFAULT_WAIT_S
from vfio_hil.lab.rack import VirtualRack
from vfio_hil.lab.report import new_run_id, prepare_run_dir
from vfio_hil.lab.session import Lab
from vfio_hil.results.compare import (
    DEFAULT_FLIPS,
    DEFAULT_WINDOW,
    compare_runs,
    comparison_table,
)
from vfio_hil.results.dashboard import DEFAULT_LAST, build_dashboard
from vfio_hil.results.store import (
    DEFAULT_FILE,
    ENV_STORE,
    ResultsStore,
    engine_url,
    run_folders,
    store_url,
)

CONFORMANCE_DIR = CHECKOUT / "conformance"
# pytest exit codes after which the checks' own teardown ran (0 passed, 1 some failed).
PYTEST_COMPLETED = (0, 1)


def log(msg: str) -> None:
    """Progress for a human, on stderr."""
    print(f"[vfio-hil] {msg}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vfio-hil", description="VFIO hardware-in-the-loop conformance suite")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run the conformance checks against an inventory")
    run.add_argument("--inventory", type=Path, default=DEFAULT_INVENTORY)
    run.add_argument("--reports", type=Path, default=Path("reports"))
    run.add_argument("--keep-rack", action="store_true", help="leave booted VMs running")
    run.add_argument("--limit", help="only these hosts (comma-separated)")
    run.add_argument("--baselines", type=Path, help=BASELINES_HELP)
    run.add_argument("--lock-wait", type=_seconds, default=DEFAULT_WAIT_S, help=LOCK_WAIT_HELP)
    run.add_argument("--store", help=STORE_HELP)
    run.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest")
    rack = sub.add_parser("rack", help="boot, stop or show the virtual rack")
    rack.add_argument("action", choices=("up", "down", "status"))
    rack.add_argument("--inventory", type=Path, default=DEFAULT_INVENTORY)
    rack.add_argument("hosts", nargs="*", help="limit to these hosts")
    restore = sub.add_parser(
        "restore", help="give every device of the hosts back to its original driver"
    )
    restore.add_argument("--inventory", type=Path, default=DEFAULT_INVENTORY)
    restore.add_argument("--reports", type=Path, default=Path("reports"))
    restore.add_argument("--lock-wait", type=_seconds, default=DEFAULT_WAIT_S, help=LOCK_WAIT_HELP)
    restore.add_argument("hosts", nargs="*", help="limit to these hosts")
    checks = sub.add_parser("checks", help="the check catalogue")
    checks.add_argument("action", choices=("list",))
    checks.add_argument("--json", action="store_true", help="one JSON object per check")
    baseline = sub.add_parser("baseline", help="save or show the per-platform baselines")
    actions = baseline.add_subparsers(dest="action", required=True, parser_class=_Parser)
    save = actions.add_parser("save", help="save the median figures of runs as baselines")
    save.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="a run folder")
    save.add_argument("--baselines", type=Path, help=BASELINES_HELP)
    save.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="PATTERN=PCT",
        help="tolerance of the figures matching PATTERN, in percent or 'none' (repeatable; "
        "before the default table, first match wins)",
    )
    show = actions.add_parser("show", help="list the saved baselines")
    show.add_argument("--baselines", type=Path, help=BASELINES_HELP)
    report = sub.add_parser("report", help="build the reports of runs")
    kinds = report.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    allure_report = kinds.add_parser(
        "allure", help="the Allure HTML report of runs, one per platform, with its history"
    )
    allure_report.add_argument(
        "runs", nargs="*", type=Path, metavar="RUN", help="a run folder (default: REPORTS/latest)"
    )
    allure_report.add_argument(
        "--reports",
        type=Path,
        default=Path("reports"),
        help="the reports folder: its latest run and allure-history/ (default: ./reports)",
    )
    allure_report.add_argument(
        "--out", type=Path, help="where the report goes (default: RUN/allure-report)"
    )
    store_options = _Parser(add_help=False)
    store_options.add_argument("--store", help=STORE_HELP)
    store_options.add_argument("--reports", type=Path, default=Path("reports"))
    _results_parser(sub, store_options)
    dashboard = sub.add_parser(
        "dashboard", parents=[store_options], help="the static HTML dashboard of the store"
    )
    dashboard.add_argument(
        "--out", type=Path, help="the site's folder (default: REPORTS/dashboard)"
    )
    dashboard.add_argument("--baselines", type=Path, help=BASELINES_HELP)
    dashboard.add_argument(
        "--last", type=_count, default=DEFAULT_LAST, help=f"runs per platform ({DEFAULT_LAST})"
    )
    cert_cli.add_parser(sub, _Parser)
    return p


def _results_parser(sub: Any, store_options: argparse.ArgumentParser) -> None:
    """``vfio-hil results import|compare|export``."""
    results = sub.add_parser("results", help="the results store: import, compare, export")
    actions = results.add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = actions.add_parser(
        "import", parents=[store_options], help="add run folders (or reports folders) to the store"
    )
    add.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    compare = actions.add_parser(
        "compare", parents=[store_options], help="what changed from one run to another"
    )
    compare.add_argument("run_a", metavar="RUN_A")
    compare.add_argument("run_b", metavar="RUN_B")
    compare.add_argument("--baselines", type=Path, help=BASELINES_HELP)
    compare.add_argument("--window", type=_count, default=DEFAULT_WINDOW, help=WINDOW_HELP)
    compare.add_argument("--flips", type=_count, default=DEFAULT_FLIPS, help=FLIPS_HELP)
    export = actions.add_parser("export", parents=[store_options], help="export runs")
    export.add_argument("--kcidb", action="store_true", required=True, help="as KCIDB v5 JSON")
    export.add_argument("--out", type=Path, help="write to FILE (default: standard output)")
    export.add_argument("runs", nargs="*", metavar="RUN", help="run ids (default: every run)")


BASELINES_HELP = "baselines directory (default: $VFIO_HIL_BASELINES, else ./baselines)"
STORE_HELP = (
    f"results store URL: sqlite:///FILE or postgresql://USER@HOST/DB (default: ${ENV_STORE}, "
    f"else sqlite in the reports folder's {DEFAULT_FILE})"
)
WINDOW_HELP = f"runs of a platform the flaky and median judgements look at ({DEFAULT_WINDOW})"
FLIPS_HELP = f"outcome flips within the window that make a result flaky ({DEFAULT_FLIPS})"
LOCK_WAIT_HELP = (
    "seconds to wait for a host another run holds, then exit 3 naming the holder "
    f"(default {DEFAULT_WAIT_S:.0f})"
)


def _seconds(text: str) -> float:
    """A non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def _count(text: str) -> int:
    """A positive whole number."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line. ``rack``'s hosts may come before or after its options
    (``rack up --inventory FILE HOST``): argparse fills a ``nargs='*'`` positional once, so
    the hosts after an option come back unrecognised and are added to it here."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "rack":
        args.hosts = [*(args.hosts or []), *(a for a in extra if not a.startswith("-"))]
        extra = [a for a in extra if a.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vfio-hil`` console script."""
    try:
        args = _parse(argv)
        if args.command == "rack":
            return rack_command(args.action, load_inventory(args.inventory), args.hosts or None)
        if args.command == "checks":
            return checks_command(args.json)
        if args.command == "baseline":
            return baseline_command(args)
        if args.command == "restore":
            return restore_command(args)
        if args.command == "report":
            return allure_report_command(args)
        if args.command == "results":
            return results_command(args)
        if args.command == "dashboard":
            return dashboard_command(args)
        if args.command == "cert":
            return cert_cli.command(args)
        return run_command(args)
    except HilError as exc:
        print(f"vfio-hil: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vfio-hil: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("VFIO_HIL_DEBUG"):
            raise
        print(
            f"vfio-hil: internal error: {type(exc).__name__}: {exc} "
            "(VFIO_HIL_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 3


def rack_command(action: str, inventory: Inventory, hosts: list[str] | None) -> int:
    """``vfio-hil rack up|down|status``."""
    rack = VirtualRack(inventory, log=log)
    if action == "up":
        rack.up(hosts, persist=True)
    elif action == "down":
        rack.down(hosts)
    rows = [("HOST", "STATE", "PID", "SSH", "ACCEL", "CONSOLE")]
    for host in rack.virtual_hosts(hosts):
        st = rack.status(host)
        state = ("stale" if st.stale else "up") if st.running else "down"
        port = f"127.0.0.1:{st.ssh_port}" if st.ssh_port else "-"
        rows.append((st.host, state, str(st.pid or "-"), port, st.accel or "-", str(st.console)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def checks_command(as_json: bool) -> int:
    """``vfio-hil checks list [--json]``."""
    from vfio_hil_pytest.catalogue import catalogue_table, load_catalogue

    checks = load_catalogue()
    print(json.dumps(checks, indent=2) if as_json else catalogue_table(checks))
    return 0


def baseline_command(args: argparse.Namespace) -> int:
    """``vfio-hil baseline save|show``: one line per platform's file."""
    store = BaselineStore(args.baselines or default_dir())
    if args.action == "save":
        overrides = [parse_tolerance(t) for t in args.tolerance]
        for saved in save_baselines(args.runs, store, [*overrides, *DEFAULT_TOLERANCES]):
            print(saved.text())
        return 0
    baselines = store.all()
    if not baselines:
        print(f"no baselines in {store.directory}")
    for path, baseline in baselines:
        print(
            f"{path}: {baseline.figure_count()} figures of {', '.join(baseline.check_ids())} "
            f"({platform_text(baseline.platform)})"
        )
    return 0


def allure_report_command(args: argparse.Namespace) -> int:
    """``vfio-hil report allure``: per run, its index page and a line per platform report."""
    runs = args.runs or [args.reports / "latest"]
    check_run_folders(runs)
    tool = install_allure(log=log)
    built = report_runs(runs, args.reports / "allure-history", tool, out=args.out, log=log)
    for run in built:
        print(f"{run.run_id}: {run.index}")
        for report in run.platforms:
            print(f"  {report.text()}")
    return 0


def results_command(args: argparse.Namespace) -> int:
    """``vfio-hil results import|compare|export``."""
    with ResultsStore.open(store_url(args.store, args.reports)) as store:
        if args.action == "import":
            for run_dir in [d for arg in args.dirs for d in run_folders(arg)]:
                added = store.add_run(run_dir)
                print(f"{run_dir}: {'added' if added else 'already in the store'}")
        elif args.action == "compare":
            baselines = BaselineStore(args.baselines or default_dir())
            comparison = compare_runs(
                store,
                args.run_a,
                args.run_b,
                baselines=baselines,
                window=args.window,
                flips=args.flips,
            )
            print(comparison_table(comparison))
        else:
            # Imported here: its schema library costs every other command a quarter second.
            from vfio_hil.results.kcidb import kcidb_document

            text = json.dumps(kcidb_document(store, args.runs), indent=2) + "\n"
            if args.out is None:
                sys.stdout.write(text)
            else:
                _write_file(args.out, text)
                log(f"KCIDB export: {args.out}")
    return 0


def dashboard_command(args: argparse.Namespace) -> int:
    """``vfio-hil dashboard``: write the static site, print where its index is."""
    out = args.out or args.reports / "dashboard"
    with ResultsStore.open(store_url(args.store, args.reports)) as store:
        try:
            index = build_dashboard(
                store, out, baselines=BaselineStore(args.baselines or default_dir()), last=args.last
            )
        except OSError as exc:
            reason = exc.strerror or exc
            raise UsageError(f"cannot write the dashboard to {out}: {reason}") from None
    print(f"dashboard: {index}")
    return 0


def _write_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; UsageError naming the path when it cannot."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def record_run(run_dir: Path, store: str | None, reports: Path) -> bool:
    """Add the run at ``run_dir`` to the results store, with one line saying where; False
    (after one error line) when the store could not take it."""
    try:
        with ResultsStore.open(store_url(store, reports)) as results:
            results.add_run(run_dir)
            log(f"recorded in {results.url}")
            return True
    except HilError as exc:
        print(f"vfio-hil: error: run not recorded: {exc}", file=sys.stderr)
        return False


def _run_pytest(cmd: list[str]) -> int:
    """Run pytest as a child and return its exit status.

    Ctrl-C reaches the child with the rest of the process group; pytest then runs its
    finalizers, which give every device back. SIGTERM (a CI timeout, `kill`) is passed on as
    SIGINT for the same clean-up; the child is never left running without us.
    """
    child = subprocess.Popen(cmd)

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
    }
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_command(args: argparse.Namespace) -> int:
    """``vfio-hil run``: boot what is needed, own the hosts, preflight real hosts, run pytest,
    restore, report."""
    limit = args.limit.split(",") if args.limit else None
    inventory = load_inventory(args.inventory).limited(limit)
    pytest_args = [a for a in args.pytest_args if a != "--"]
    if limit:
        pytest_args += ["--vfio-limit", args.limit]
    rack = VirtualRack(inventory, log=log)
    virtual = [h.name for h in rack.virtual_hosts()]
    engine_url(store_url(args.store, args.reports))  # a malformed URL is bad input: say it now
    run_id = new_run_id()
    run_dir = prepare_run_dir(args.reports.resolve(), run_id)
    hosts = list(inventory.hosts.values())
    # Owns the hosts for the whole run; pytest's own Lab joins (same run id).
    lab = Lab(inventory, run_dir, rack=rack, log=log, run_id=run_id, lock_wait=args.lock_wait)
    with rack.use(virtual, keep=args.keep_rack), contextlib.closing(lab):
        # A virtual host's devices are made from its inventory entry and it has just answered
        # over SSH: only real hosts can be missing a listed device (bad input). Setup checks
        # every host's devices again before it changes anything. Preflight only reads: it
        # runs before this run owns the hosts, so that bad input ends it without waiting.
        real = [h for h in hosts if h.vm is None]
        if real:
            log(f"preflight of {', '.join(h.name for h in real)}")
            try:
                lab.provisioner.preflight(real)
            except ProvisioningError as exc:
                # A missing device or an unreachable host is bad input; nothing changed yet.
                raise UsageError(str(exc)) from None
        _own_all(lab, [h.name for h in hosts])
        cmd = [
            sys.executable, "-m", "pytest", str(CONFORMANCE_DIR),
            "-p", "no:cacheprovider", "-o", "addopts=", "-o", "testpaths=",
            "--rootdir", str(CONFORMANCE_DIR),
            "--vfio-inventory", str(args.inventory.resolve()),
            "--vfio-reports", str(args.reports.resolve()),
            "--vfio-run-id", run_id,
            "--vfio-lock-wait", str(args.lock_wait),
            "--vfio-baselines", str((args.baselines or default_dir()).resolve()),
            # Explicit, so that pytest-xdist workers write them too.
            "--alluredir", str(run_dir / "allure-results"),
            "--junitxml", str(run_dir / "junit.xml"),
            *pytest_args,
        ]  # fmt: skip
        rc = _run_pytest(cmd)
        lost = _lost_hosts(run_dir)
        if rc not in PYTEST_COMPLETED:
            log(f"pytest ended abnormally (status {rc}): restoring every host")
            lab.provisioner.teardown([h for h in hosts if h.name not in lost])
        log(f"report: {run_dir}")
    for reason in lost.values():
        print(f"vfio-hil: error: {reason}", file=sys.stderr)
    recorded = (
        record_run(run_dir, args.store, args.reports)
        if (run_dir / "results.json").is_file()
        else True
    )
    return run_status(rc, bool(lost), recorded)


def run_status(pytest_status: int, hosts_lost: bool, recorded: bool) -> int:
    """The exit status of ``vfio-hil run`` from pytest's, whether a host was lost and whether
    the results store took the run (a store that could not is lab trouble: 3, unless the run
    already ended non-zero)."""
    if hosts_lost and pytest_status in PYTEST_COMPLETED:
        return 3
    # pytest: 2 interrupted, 3 internal error, 4 usage error; a signal shows as negative.
    status = {2: 130, -signal.SIGINT: 130, 3: 3, 4: 2}.get(
        pytest_status, 3 if pytest_status < 0 else pytest_status
    )
    return status if status or recorded else 3


def _own_all(lab: Lab, names: list[str]) -> None:
    """Own every host, all at once (each waits on its own DUT's lock)."""
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        for future in [pool.submit(lab.own, name) for name in names]:
            future.result()


def _lost_hosts(run_dir: Path) -> dict[str, str]:
    """The hosts the run's results say were lost, with their reasons."""
    try:
        return dict(json.loads((run_dir / "results.json").read_text())["run"]["lost_hosts"])
    except (OSError, ValueError, KeyError):
        return {}


def restore_command(args: argparse.Namespace) -> int:
    """``vfio-hil restore``: own each host, end what a dead run left holding its devices and
    give every device back to its original driver from the DUT's journal; no checks run."""
    inventory = load_inventory(args.inventory).limited(args.hosts or None)
    rack = VirtualRack(inventory, log=log)
    hosts = []
    for host in inventory.hosts.values():
        if host.virtual and not rack.status(host).running:
            # A virtual host's root is RAM: once stopped, it keeps no binding to restore.
            print(f"{host.name}: not running, nothing to restore")
        else:
            hosts.append(host)
    if not hosts:
        return 0
    run_id = new_run_id()
    work_dir = args.reports.resolve() / "restore" / run_id
    with contextlib.closing(
        Lab(inventory, work_dir, rack=rack, log=log, run_id=run_id, lock_wait=args.lock_wait)
    ) as lab:
        _own_all(lab, [h.name for h in hosts])
        try:
            restored = lab.provisioner.teardown(hosts)
        except ProvisioningError as exc:
            raise ProvisioningError(f"restore failed: {exc}") from None
    for name, result in restored.items():
        for proc in result.get("released", []):
            print(f"{name}: ended pid {proc['pid']} ({proc['cmdline']}) holding {proc['node']}")
        devices = result.get("restored", {})
        for bdf, state in sorted(devices.items()):
            print(f"{name}: {bdf} back on {state['driver'] or 'no driver'}")
        if not devices:
            print(f"{name}: nothing to restore (no journal)")
    log(f"restore logs: {work_dir}")
    return 0
