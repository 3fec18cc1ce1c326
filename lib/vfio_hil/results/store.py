"""The results store: every run's records, per platform, in a database.

Embedded SQLite by default (``<reports>/results.db``); PostgreSQL for a lab shared by several
controllers, through a URL (``--store URL`` or ``$VFIO_HIL_STORE``; ``postgresql://`` URLs use
the psycopg 3 driver). Opening a store brings its schema to the newest Alembic revision.

Writers may run at once (two runs ending together, two imports): a run is added in one
transaction; SQLite runs in WAL mode with a busy timeout and a locked database is retried;
a platform row two writers add at once is inserted with ``ON CONFLICT DO NOTHING``.

::

    with ResultsStore.open(reports=Path("reports")) as store:
        store.add_run(Path("reports/latest"))
        for run in store.runs(platform_id):
            ...
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

from sqlalchemy import Engine, create_engine, event, exists, func, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, selectinload

from vfio_hil.core.perf import Figure
from vfio_hil.lab.baseline import platform_key, platform_text
from vfio_hil.lab.errors import ResultsFileError, StoreError, StoreUnreachable
from vfio_hil.lab.report import VERDICTS, read_results
from vfio_hil.results.models import Base, FigureRow, PlatformRow, ResultRow, RunRow

#: Environment variable naming the store's URL.
ENV_STORE = "VFIO_HIL_STORE"
#: The default store's file, in the reports folder.
DEFAULT_FILE = "results.db"
MIGRATIONS = Path(__file__).with_name("migrations")
#: How long a SQLite writer waits for another one's lock, in seconds.
SQLITE_BUSY_S = 30.0
#: How long to wait for a PostgreSQL server to answer a connection, in seconds.
CONNECT_TIMEOUT_S = 10
#: Attempts of a write that met a transient conflict (a locked SQLite file, a deadlock).
WRITE_ATTEMPTS = 8
#: PostgreSQL advisory lock serializing schema migrations between processes.
MIGRATION_LOCK = 0x7646494F

T = TypeVar("T")


def store_url(option: Optional[str], reports: Path) -> str:
    """The store's URL: ``option`` (``--store``), else ``$VFIO_HIL_STORE``, else SQLite in
    ``reports/results.db``."""
    return option or os.environ.get(ENV_STORE) or f"sqlite:///{reports.resolve() / DEFAULT_FILE}"


def engine_url(text_url: str) -> URL:
    """``text_url`` as a SQLAlchemy URL with the driver the store uses (``postgresql://`` and
    ``postgres://`` become ``postgresql+psycopg://``); StoreError when it is malformed, names
    another database or an SQLite store without a file."""
    try:
        url = make_url(text_url)
    except ArgumentError:
        raise StoreError(
            f"store URL {text_url!r} is malformed (expected sqlite:///FILE or "
            "postgresql://USER@HOST/DATABASE)"
        ) from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername not in ("sqlite", "sqlite+pysqlite"):
        raise StoreError(
            f"store URL {_shown(url)}: unsupported database {url.drivername!r} "
            "(sqlite or postgresql)"
        )
    if not url.database or url.database == ":memory:":
        raise StoreError(f"store URL {_shown(url)}: a SQLite store needs a file")
    return url


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class ResultKey:
    """What a result is about, the same across runs: the platform, the check, the host, the
    device by BDF (on one host, the same slot is the same device; None for a host check) and
    the variant: the check's parameters beyond host and device (``type1``, ``sysfs``; None
    when it has none)."""

    platform_id: str
    check_id: str
    host: str
    device_bdf: Optional[str] = None
    variant: Optional[str] = None

    def sort_key(self) -> tuple[str, ...]:
        """The key as strings, for sorting (None first)."""
        return tuple(v or "" for v in vars(self).values())

    def device_text(self) -> str:
        """``vdut0 0000:00:06.0 [sysfs]``: host, device and variant."""
        text = f"{self.host} {self.device_bdf or '-'}"
        return f"{text} [{self.variant}]" if self.variant else text


@dataclass(frozen=True)
class PlatformInfo:
    """A platform of the store: its id, canonical facts and a one-line label."""

    id: str
    facts: dict[str, Any]
    label: str


@dataclass(frozen=True)
class RunInfo:
    """A run of the store."""

    id: str
    started: dt.datetime
    finished: Optional[dt.datetime]
    exit_status: Optional[int]
    hosts: tuple[str, ...]
    vfio_hil_version: Optional[str]
    path: str
    platform_ids: tuple[str, ...]


@dataclass(frozen=True)
class StoredResult:
    """A result record of a run, as the store holds it."""

    run_id: str
    started: dt.datetime
    key: ResultKey
    title: str
    level: Optional[str]
    vendor_device: Optional[str]
    serial: Optional[str]
    backend: Optional[str]
    engine: Optional[str]
    hotplug_way: Optional[str]
    hot_path: Optional[str]
    nodeid: Optional[str]
    verdict: str
    reason: str
    duration_s: Optional[float]
    evidence: Optional[str]
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class FigurePoint:
    """One figure of one run: a point of a figure's history."""

    run_id: str
    started: dt.datetime
    figure: Figure


class ResultsStore:
    """A results store (see the module's docstring). Open one with :meth:`open`; close it
    (or use it as a context manager) to release its connections."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: Optional[str] = None, *, reports: Path = Path("reports")) -> ResultsStore:
        """Open the store at ``url`` (default: :func:`store_url`), creating an SQLite file and
        its folder when missing, and migrate its schema to the newest revision. StoreError for
        a bad URL or SQLite file, StoreUnreachable for a server that does not answer."""
        target = engine_url(url or store_url(None, reports))
        if target.get_backend_name() == "sqlite":
            folder = Path(target.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"store URL {_shown(target)}: cannot create {folder}: {exc.strerror}"
                ) from None
            engine = create_engine(target, connect_args={"timeout": SQLITE_BUSY_S})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(
                target, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
            )
        store = cls(engine)
        try:
            with store._reported():
                migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return store

    @property
    def url(self) -> str:
        """The store's URL, password hidden."""
        return _shown(self.engine.url)

    def close(self) -> None:
        """Release the store's connections."""
        self.engine.dispose()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Writing

    def add_run(self, run_dir: Path) -> bool:
        """Add the run at ``run_dir`` (a run folder or its results.json), all of it in one
        transaction. False when the store holds that run id already (nothing changes).
        StoreError when the folder has no valid results.json."""
        parsed = _ParsedRun.of(_read_document(run_dir), run_dir)
        with self._reported():
            return _retrying(lambda: self._insert(parsed))

    def _insert(self, parsed: _ParsedRun) -> bool:
        with Session(self.engine) as session, session.begin():
            if session.get(RunRow, parsed.run["id"]) is not None:
                return False
            _insert_new(session, PlatformRow, sorted(parsed.platforms.values(), key=_by_id))
            if not _insert_new(session, RunRow, [parsed.run]):
                return False  # another writer added it since the look above
            session.add_all(parsed.result_rows())
        return True

    @contextlib.contextmanager
    def _reported(self) -> Iterator[None]:
        """A database that cannot be used, reported as one line: StoreError for an SQLite
        file (a path or a file that is not a database: bad input), StoreUnreachable for a
        server."""
        try:
            yield
        except OperationalError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if self.engine.dialect.name == "sqlite":
                raise StoreError(f"results store {self.url}: {first}") from None
            raise StoreUnreachable(f"cannot use the results store {self.url}: {first}") from None

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        """A session to read in, its database errors reported as one line."""
        with self._reported(), Session(self.engine) as session:
            yield session

    # Reading

    def platforms(self) -> list[PlatformInfo]:
        """Every platform of the store, by id."""
        with self._session() as session:
            rows = session.scalars(select(PlatformRow).order_by(PlatformRow.id))
            return [PlatformInfo(r.id, dict(r.facts), r.label) for r in rows]

    def runs(
        self, platform_id: Optional[str] = None, *, until: Optional[str] = None
    ) -> list[RunInfo]:
        """The runs of the store (those with results on ``platform_id`` when given; up to and
        including run ``until`` when given), oldest first."""
        with self._session() as session:
            query = select(RunRow).order_by(RunRow.started, RunRow.id)
            if platform_id is not None:
                query = query.where(_has_platform(platform_id))
            if until is not None:
                query = query.where(_not_after(session, until))
            runs = list(session.scalars(query))
            selected = query.with_only_columns(RunRow.id).order_by(None)
            pairs = session.execute(
                select(ResultRow.run_id, ResultRow.platform_id)
                .where(ResultRow.run_id.in_(selected))
                .distinct()
            )
            platforms: dict[str, set[str]] = {}
            for run_id, pid in pairs:
                platforms.setdefault(run_id, set()).add(pid)
            return [_run_info(r, platforms.get(r.id, set())) for r in runs]

    def run(self, run_id: str) -> RunInfo:
        """The run ``run_id``; StoreError when the store does not hold it."""
        with self._session() as session:
            row = _run_row(session, run_id)
            pids = session.scalars(
                select(ResultRow.platform_id).where(ResultRow.run_id == run_id).distinct()
            )
            return _run_info(row, set(pids))

    def document(self, run_id: str) -> dict[str, Any]:
        """The whole results.json of run ``run_id`` as it was added."""
        with self._session() as session:
            return dict(_run_row(session, run_id).document)

    def results(self, run_id: str, platform_id: Optional[str] = None) -> list[StoredResult]:
        """The records of run ``run_id`` (on ``platform_id`` only, when given)."""
        self.run(run_id)
        query = _results_query().where(ResultRow.run_id == run_id)
        if platform_id is not None:
            query = query.where(ResultRow.platform_id == platform_id)
        return self._stored(query)

    def history(
        self,
        platform_id: str,
        *,
        key: Optional[ResultKey] = None,
        until: Optional[str] = None,
        last: Optional[int] = None,
    ) -> list[StoredResult]:
        """The records of ``platform_id`` over its runs, oldest run first: of one ``key`` only
        when given, up to and including run ``until``, of the platform's ``last`` runs."""
        query = _results_query().where(ResultRow.platform_id == platform_id)
        if key is not None:
            query = query.where(*_key_filter(key))
        if until is not None or last is not None:
            with self._session() as session:
                window = select(RunRow.id).where(_has_platform(platform_id))
                if until is not None:
                    window = window.where(_not_after(session, until))
                if last is not None:
                    window = window.order_by(RunRow.started.desc(), RunRow.id.desc()).limit(last)
                run_ids = list(session.scalars(window))
            query = query.where(ResultRow.run_id.in_(run_ids))
        return self._stored(query)

    def latest_verdicts(self, platform_id: str) -> list[StoredResult]:
        """Per check, host, device and variant of ``platform_id``, its record in the latest
        run that ran it."""
        subject = (ResultRow.check_id, ResultRow.host, ResultRow.device_bdf, ResultRow.variant)
        ranked = (
            select(
                ResultRow.id,
                func.row_number()
                .over(partition_by=subject, order_by=(RunRow.started.desc(), RunRow.id.desc()))
                .label("rank"),
            )
            .join(RunRow, ResultRow.run_id == RunRow.id)
            .where(ResultRow.platform_id == platform_id)
            .subquery()
        )
        latest = select(ranked.c.id).where(ranked.c.rank == 1)
        results = self._stored(_results_query().where(ResultRow.id.in_(latest)))
        return sorted(results, key=lambda r: r.key.sort_key())

    def figure_history(
        self,
        key: ResultKey,
        name: Optional[str] = None,
        *,
        until: Optional[str] = None,
        last: Optional[int] = None,
    ) -> list[FigurePoint]:
        """The figures of ``key`` (named ``name`` only, when given) over the platform's runs,
        oldest first (``until`` and ``last`` as in :meth:`history`)."""
        return [
            FigurePoint(r.run_id, r.started, f)
            for r in self.history(key.platform_id, key=key, until=until, last=last)
            for f in r.figures
            if name is None or f.name == name
        ]

    def _stored(self, query: Any) -> list[StoredResult]:
        with self._session() as session:
            return [_stored(row, started) for row, started in session.execute(query)]


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the newest revision. Processes opening a new store at once
    are serialized: PostgreSQL by an advisory lock, SQLite by the write lock of a ``BEGIN
    IMMEDIATE`` transaction; the second finds the schema made."""
    # Alembic is imported here, not with the module: it costs every vfio-hil command (the CLI
    # imports this module) half a second, and only opening a store needs it.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_S * 1000)}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _retrying(write: Callable[[], T]) -> T:
    """``write()``, again after a short wait when it met a transient conflict."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            return write()
        except OperationalError as exc:
            if attempt == WRITE_ATTEMPTS - 1 or not _transient(exc):
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def _transient(exc: OperationalError) -> bool:
    """Whether a failed write may succeed when tried again: a locked or busy SQLite file, a
    PostgreSQL deadlock or serialization failure (SQLSTATE class 40)."""
    message = str(exc.orig).lower()
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return "locked" in message or "busy" in message or sqlstate.startswith("40")


def _insert_new(session: Session, model: type[Base], rows: Sequence[dict[str, Any]]) -> int:
    """Insert the rows of ``model`` whose primary key is not there yet (a row another writer
    is adding waits for its transaction); how many were inserted. Counted from RETURNING:
    the driver's rowcount of an ``ON CONFLICT DO NOTHING`` is not reliable on every back
    end."""
    if not rows:
        return 0
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    table = model.__table__
    statement = dialect.insert(table).values(list(rows)).on_conflict_do_nothing()
    return len(session.execute(statement.returning(*table.primary_key.columns)).all())


def _by_id(row: dict[str, Any]) -> str:
    return row["id"]


def _read_document(run_dir: Path) -> dict[str, Any]:
    """The results.json document of ``run_dir``, as StoreError when it is missing or
    malformed (the store's error, so that one ``except`` covers every store problem)."""
    try:
        return read_results(run_dir)
    except ResultsFileError as exc:
        raise StoreError(str(exc)) from None


def run_folders(path: Path) -> list[Path]:
    """The run folders at ``path``: itself when it holds a results.json, else its
    sub-folders that do (by name; the ``latest`` link is skipped: it is one of them).
    StoreError when there is none."""
    if (path / "results.json").is_file() or path.is_file():
        return [path]
    if not path.is_dir():
        raise StoreError(f"no such run folder: {path}")
    found = sorted(
        p for p in path.iterdir() if not p.is_symlink() and (p / "results.json").is_file()
    )
    if not found:
        raise StoreError(f"{path}: no results.json there nor in its sub-folders")
    return found


@dataclass
class _ParsedRun:
    """A results.json document as the rows the store adds for it."""

    run: dict[str, Any]
    platforms: dict[str, dict[str, Any]]
    records: list[tuple[str, dict[str, Any]]]

    @classmethod
    def of(cls, document: dict[str, Any], path: Path) -> _ParsedRun:
        """The rows of ``document`` (read from ``path``); StoreError naming the first
        problem."""
        run = document["run"]
        where = f"run {run['id']} ({path})"
        started = _timestamp(run.get("started"), f"{where}: started")
        if started is None:
            raise StoreError(f"{where}: results.json has no start time")
        platforms: dict[str, dict[str, Any]] = {}
        records = []
        # A record can lack its platform (a check skipped or a host lost before the host's
        # facts were read): it is its host's, as the run's other records of the host say.
        host_platform: dict[str, dict[str, Any]] = {}
        for record in document["results"]:
            if isinstance(record, dict) and record.get("platform"):
                host_platform.setdefault(str(record.get("host")), record["platform"])
        for index, record in enumerate(document["results"]):
            if not isinstance(record, dict) or not record.get("check_id"):
                raise StoreError(f"{where}: result {index} has no check_id")
            if record.get("verdict") not in VERDICTS:
                raise StoreError(
                    f"{where}: result {index} ({record['check_id']}) has verdict "
                    f"{record.get('verdict')!r}, not one of {', '.join(VERDICTS)}"
                )
            platform_id, facts = platform_key(
                record.get("platform") or host_platform.get(str(record.get("host"))) or {}
            )
            platforms[platform_id] = {
                "id": platform_id,
                "facts": facts,
                "label": platform_text(facts),
            }
            records.append((platform_id, record))
        return cls(
            {
                "id": str(run["id"]),
                "started": started,
                "finished": _timestamp(run.get("finished"), f"{where}: finished"),
                "exit_status": run.get("exit_status"),
                "hosts": list(run.get("hosts") or []),
                "controller": run.get("controller"),
                "vfio_hil_version": run.get("vfio_hil_version"),
                "path": str(path.resolve()),
                "document": document,
                "imported": dt.datetime.now(dt.timezone.utc),
            },
            platforms,
            records,
        )

    def result_rows(self) -> Iterator[ResultRow]:
        """The result rows (with their figures) of the run."""
        for platform_id, record in self.records:
            device = record.get("device") or {}
            yield ResultRow(
                run_id=self.run["id"],
                platform_id=platform_id,
                host=record.get("host") or "",
                check_id=record["check_id"],
                title=record.get("title") or "",
                level=record.get("level"),
                device_bdf=device.get("bdf") or "",
                device_vendor_device=device.get("vendor_device"),
                device_serial=(device.get("identity") or {}).get("serial"),
                variant=_variant(record),
                backend=record.get("backend") or "",
                engine=record.get("engine") or "",
                hotplug_way=record.get("hotplug_way") or "",
                hot_path=record.get("hot_path"),
                nodeid=record.get("nodeid"),
                verdict=record["verdict"],
                reason=record.get("reason") or "",
                duration_s=record.get("duration_s"),
                evidence=record.get("evidence"),
                figures=[
                    FigureRow(
                        name=f.name, value=f.value, unit=f.unit, higher_is_better=f.higher_is_better
                    )
                    for f in (Figure.from_dict(d) for d in record.get("figures") or [])
                ],
            )


_XDIST_GROUP = re.compile(r"\]@[^\[\]]*$")


def _variant(record: dict[str, Any]) -> str:
    """The parameters of a record's check beyond its host and device: its pytest parameter id
    (``vdut0/0000:00:04.0-sysfs``) less the host and device (``sysfs``). A SKIPped check's
    record may not name its backend or hotplug way; its parameter id always does."""
    # Under pytest-xdist's loadgroup a node id ends with its group: ``...[vdut0/...]@vdut0``.
    nodeid = _XDIST_GROUP.sub("]", record.get("nodeid") or "")
    params = nodeid[nodeid.find("[") + 1 : -1] if nodeid.endswith("]") else ""
    device = (record.get("device") or {}).get("bdf")
    for prefix in (f"{record.get('host')}/{device}", str(record.get("host"))):
        if params.startswith(prefix):
            params = params[len(prefix) :]
            break
    return params.lstrip("-")


def _timestamp(value: Any, what: str) -> Optional[dt.datetime]:
    """An ISO 8601 time of results.json as an aware datetime (UTC when it names no zone)."""
    if value is None:
        return None
    try:
        stamp = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise StoreError(f"{what}: {value!r} is not an ISO 8601 time") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def _aware(stamp: dt.datetime) -> dt.datetime:
    # SQLite gives back naive datetimes; the store writes UTC.
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def _has_platform(platform_id: str) -> Any:
    return exists().where(ResultRow.run_id == RunRow.id, ResultRow.platform_id == platform_id)


def _not_after(session: Session, run_id: str) -> Any:
    """Runs that started no later than run ``run_id`` (StoreError if it is unknown)."""
    row = _run_row(session, run_id)
    return tuple_(RunRow.started, RunRow.id) <= tuple_(row.started, row.id)


def _run_row(session: Session, run_id: str) -> RunRow:
    row = session.get(RunRow, run_id)
    if row is None:
        raise StoreError(f"no run {run_id!r} in the results store {_shown(session.get_bind().url)}")
    return row


def _results_query() -> Any:
    return (
        select(ResultRow, RunRow.started)
        .join(RunRow, ResultRow.run_id == RunRow.id)
        .options(selectinload(ResultRow.figures))
        .order_by(RunRow.started, RunRow.id, ResultRow.id)
    )


def _key_filter(key: ResultKey) -> list[Any]:
    return [
        ResultRow.check_id == key.check_id,
        ResultRow.host == key.host,
        ResultRow.device_bdf == (key.device_bdf or ""),
        ResultRow.variant == (key.variant or ""),
    ]


def _run_info(row: RunRow, platform_ids: set[str]) -> RunInfo:
    return RunInfo(
        row.id,
        _aware(row.started),
        _aware(row.finished) if row.finished else None,
        row.exit_status,
        tuple(row.hosts),
        row.vfio_hil_version,
        row.path,
        tuple(sorted(platform_ids)),
    )


def _stored(row: ResultRow, started: dt.datetime) -> StoredResult:
    key = ResultKey(
        row.platform_id,
        row.check_id,
        row.host,
        row.device_bdf or None,
        row.variant or None,
    )
    return StoredResult(
        run_id=row.run_id,
        started=_aware(started),
        key=key,
        title=row.title,
        level=row.level,
        vendor_device=row.device_vendor_device,
        serial=row.device_serial,
        backend=row.backend or None,
        engine=row.engine or None,
        hotplug_way=row.hotplug_way or None,
        hot_path=row.hot_path,
        nodeid=row.nodeid,
        verdict=row.verdict,
        reason=row.reason,
        duration_s=row.duration_s,
        evidence=row.evidence,
        figures=tuple(Figure(f.name, f.value, f.unit, f.higher_is_better) for f in row.figures),
    )
