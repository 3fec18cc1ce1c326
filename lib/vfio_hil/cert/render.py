"""The human report of a certification bundle: ``report.html`` and ``report.pdf``.

:func:`render_html` makes the page from the bundle's ``certification.json`` and
``platform.json``: the bundle's verdict as a banner, a summary of the devices with a chart of
their checks' outcomes, a section per device with its reasons and checks (linking to their
evidence files, relative to the bundle folder), the platforms and their facts, and how to
verify the bundle. The page holds no script and loads nothing: its chart is SVG inside it, so
it opens from the bundle folder, offline, and prints the same. :func:`write_pdf` prints it to
PDF with WeasyPrint, which may read nothing but ``data:`` URLs and the bundle's own files.

The same input gives the same bytes: the report has no clock of its own (its dates are the
run's), and the PDF's creation date is the run's end, taken from the page's
``dcterms.created``. Any field of the input may be missing or null: it shows as "-".
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote, urlsplit, urlunsplit
from urllib.request import url2pathname

import vfio_hil
from vfio_hil.static_pages import svg_figure, template_env, utc_text

if TYPE_CHECKING:
    from weasyprint import Document
    from weasyprint.urls import URLFetcher, URLFetcherResponse

TEMPLATES = Path(__file__).with_name("templates")
#: A check's outcomes, in the order the chart stacks them, with their colours (background,
#: text). A verdict takes its outcome's colours: see VERDICT_OUTCOME.
OUTCOME_COLOURS = {
    "pass": ("#2e7d32", "#ffffff"),
    "skip": ("#9e9e9e", "#ffffff"),
    "warn": ("#f2d24b", "#222222"),
    "fail": ("#c62828", "#ffffff"),
    "incomplete": ("#f08c00", "#222222"),
}
OUTCOMES = tuple(OUTCOME_COLOURS)
#: The outcome whose colour a verdict is shown in: CERTIFIED green, NOT CERTIFIED red,
#: INCOMPLETE amber.
VERDICT_OUTCOME = {"CERTIFIED": "pass", "NOT CERTIFIED": "fail", "INCOMPLETE": "incomplete"}
MISSING = "-"


class ReportFetchError(RuntimeError):
    """The report asked for a resource the PDF may not load: anything but a ``data:`` URL or
    a file under the bundle folder (the network above all)."""


@dataclass(frozen=True)
class Link:
    """An evidence file of a check: ``href`` relative to the bundle folder, or None when its
    path is not one (then it shows as text only)."""

    href: Optional[str]
    text: str
    path: str


@dataclass(frozen=True)
class CheckRow:
    """A check of a device, as its table shows it."""

    check_id: str
    title: str
    requirement: str
    outcome: str
    verdicts: str
    note: str
    evidence: tuple[Link, ...]


@dataclass(frozen=True)
class FigureRow:
    """A figure measured by a check on a device."""

    check_id: str
    name: str
    value: str
    better: str


@dataclass(frozen=True)
class DeviceView:
    """A certified device: what identifies it, its verdict and reasons, and its checks."""

    anchor: str
    host: str
    bdf: str
    model: str
    vendor_device: str
    serial: str
    platform_id: str
    platform_anchor: Optional[str]
    identity: str
    verdict: str
    reasons: tuple[str, ...]
    counts: tuple[int, ...]
    checks: tuple[CheckRow, ...]
    figures: tuple[FigureRow, ...]


@dataclass(frozen=True)
class AcpiTable:
    """An ACPI table of the IOMMU (DMAR, IVRS, IORT...) as a host's facts recorded it."""

    name: str
    sha256: str
    length: str
    oem_id: str
    oem_table_id: str
    oem_revision: str


@dataclass(frozen=True)
class HostFacts:
    """A host's platform facts: ``(label, value)`` rows and its ACPI IOMMU tables."""

    host: str
    rows: tuple[tuple[str, str], ...]
    acpi_tables: tuple[AcpiTable, ...]


@dataclass(frozen=True)
class PlatformView:
    """A platform of the run: its description, its hosts and their facts."""

    anchor: str
    platform_id: str
    text: str
    hosts: str
    facts: tuple[HostFacts, ...]


@dataclass(frozen=True)
class Report:
    """Everything the report shows."""

    profile_id: str
    profile_version: str
    profile_title: str
    profile_sha256: str
    run_id: str
    started: str
    finished: str
    created: Optional[str]
    vfio_hil_version: str
    hosts: str
    #: The hosts whose devices the bundle certifies, when it names them.
    scope: Optional[str]
    verdict: str
    devices: tuple[DeviceView, ...]
    chart: str
    platforms: tuple[PlatformView, ...]


def render_html(certification: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    """The report page of a bundle, from its ``certification.json`` and ``platform.json``.
    The same input gives the same string."""
    report = _report(certification, facts)
    return (
        template_env(TEMPLATES)
        .get_template("report.html.j2")
        .render(
            r=report,
            outcomes=OUTCOMES,
            colours=OUTCOME_COLOURS,
            verdict_outcome=VERDICT_OUTCOME,
            generator=f"vfio-hil {vfio_hil.__version__}",
        )
    )


def write_pdf(html: str, out: Path, base_dir: Path) -> Path:
    """Print the report page ``html`` to the PDF file ``out`` and return its path.
    ``base_dir`` is the folder the page's relative URLs are relative to (the bundle's); the
    PDF's links to its files are relative to the folder of ``out``, so they open wherever the
    bundle is copied. Nothing is fetched but ``data:`` URLs and files under ``base_dir``: an
    attempt at anything else raises :class:`ReportFetchError` and writes no PDF."""
    # Imported when printed: WeasyPrint costs most of a second and needs Pango.
    from weasyprint import HTML

    refused: list[str] = []
    fetcher = _offline_fetcher(base_dir, refused)
    log = logging.getLogger("weasyprint")
    log.addFilter(_svg_painting_noise)
    try:
        document = HTML(string=html, base_url=base_dir.resolve(), url_fetcher=fetcher).render()
    finally:
        log.removeFilter(_svg_painting_noise)
    if refused:
        raise ReportFetchError(
            f"{out.name} is made offline, from data: URLs and the files under {base_dir} "
            f"only; the page asked for: {', '.join(refused)}"
        )
    _relative_links(document, out.parent)
    document.write_pdf(out)
    return out


def _svg_painting_noise(record: logging.LogRecord) -> bool:
    """False for WeasyPrint's warning that the chart's ``fill`` and ``stroke`` properties are
    unknown: its HTML stylesheet does not know them, its SVG drawing reads them all the same.
    Every other message passes."""
    return not (
        str(record.msg).startswith("Ignored `")
        and isinstance(record.args, tuple)
        and len(record.args) > 1
        and str(record.args[0]).startswith(("fill", "stroke"))
        and str(record.args[-1]) == "unknown property"
    )


def _refusal(url: str, base_dir: Path) -> Optional[str]:
    """Why the report may not load ``url``, or None when it may (a ``data:`` URL, or a
    ``file:`` URL of a file under ``base_dir``)."""
    parts = urlsplit(url)
    if parts.scheme == "data":
        return None
    if parts.scheme != "file":
        return "not a data: or file: URL"
    if parts.netloc:  # urllib would look the host up
        return "a file on another host"
    path = Path(url2pathname(parts.path)).resolve()
    return None if path.is_relative_to(base_dir.resolve()) else "outside the bundle"


def _offline_fetcher(base_dir: Path, refused: list[str]) -> URLFetcher:
    """A WeasyPrint URL fetcher that fetches only what :func:`_refusal` allows; it adds the
    URLs it refuses to ``refused`` (WeasyPrint carries on without what it could not fetch, or
    even drops the error, as when an SVG image draws)."""
    from weasyprint.urls import URLFetcher

    class OfflineFetcher(URLFetcher):
        def fetch(
            self, url: str, headers: Optional[Mapping[str, str]] = None
        ) -> URLFetcherResponse:
            reason = _refusal(url, base_dir)
            if reason is not None:
                refused.append(url)
                raise ReportFetchError(f"refused {url}: {reason}")
            return super().fetch(url, headers)

    return OfflineFetcher()


def _relative_links(document: Document, folder: Path) -> None:
    """Make the document's links to files relative to ``folder`` (WeasyPrint made them
    absolute against the base URL): an absolute link would name the folder the PDF was made
    in, break when the bundle is copied, and make the PDF differ with where it was made."""
    for page in document.pages:
        page.links = [
            (kind, _relative_url(target, folder) if kind == "external" else target, *rest)
            for kind, target, *rest in page.links
        ]


def _relative_url(url: str, folder: Path) -> str:
    parts = urlsplit(url)
    if parts.scheme != "file":
        return url
    path = os.path.relpath(url2pathname(parts.path), folder.resolve())
    return urlunsplit(("", "", quote(Path(path).as_posix()), "", parts.fragment))


# The page's contents, from the bundle's data: every value may be missing, null or of an
# unexpected type, and shows as "-" then.


def _get(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...``, or None where a key is missing or a value on the way
    is not a mapping."""
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _text(value: Any) -> str:
    """A value as the report shows it: "-" when it is missing."""
    return MISSING if value is None or value == "" else str(value)


def _described(parts: Iterable[Any], detail: Any = None) -> str:
    """``SeaBIOS 1.16.2 (04/01/2014)``: the parts present, then the detail in brackets."""
    words = [str(part) for part in parts if part not in (None, "")]
    if detail not in (None, ""):
        words.append(f"({detail})")
    return " ".join(words) or MISSING


def _on_off(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else _text(value)


def _moment(value: Any) -> Optional[dt.datetime]:
    """An ISO 8601 time with its offset, or None."""
    try:
        stamp = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return stamp if stamp.tzinfo is not None else None


def _when(value: Any) -> str:
    stamp = _moment(value)
    return utc_text(stamp) if stamp is not None else _text(value)


def _number(value: Any) -> str:
    """``22,216`` or ``0.0123``: a figure's value, without a float's noise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _text(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.6g}"


def _report(certification: Mapping[str, Any], facts: Mapping[str, Any]) -> Report:
    profile = _get(certification, "profile")
    run = _get(certification, "run")
    platforms = _platforms(certification, facts)
    anchors = {p.platform_id: p.anchor for p in platforms}
    devices = tuple(
        _device(index, device, facts, anchors)
        for index, device in enumerate(_list(_get(certification, "devices")), 1)
    )
    ended = _moment(_get(run, "finished")) or _moment(_get(run, "started"))
    return Report(
        profile_id=_text(_get(profile, "id")),
        profile_version=_text(_get(profile, "version")),
        profile_title=_text(_get(profile, "title")),
        profile_sha256=_text(_get(profile, "sha256")),
        run_id=_text(_get(run, "id")),
        started=_when(_get(run, "started")),
        finished=_when(_get(run, "finished")),
        created=ended.astimezone(dt.timezone.utc).isoformat() if ended else None,
        vfio_hil_version=_text(_get(run, "vfio_hil_version")),
        hosts=", ".join(map(str, _list(_get(run, "hosts")))) or MISSING,
        scope=", ".join(map(str, _list(_get(certification, "scope")))) or None,
        verdict=_text(_get(certification, "verdict")),
        devices=devices,
        chart=_outcome_chart(devices) if devices else "",
        platforms=platforms,
    )


def _device(
    index: int, device: Any, facts: Mapping[str, Any], platform_anchors: Mapping[str, str]
) -> DeviceView:
    host, bdf = _get(device, "host"), _get(device, "bdf")
    # The device as the bundle's certification names it, else as its host's facts do.
    described = _get(device, "device")
    if not isinstance(described, Mapping) and isinstance(host, str) and isinstance(bdf, str):
        described = _get(facts, "hosts", host, "devices", bdf)
    identity = _get(described, "identity")
    checks = tuple(_check(check) for check in _list(_get(device, "checks")))
    platform_id = _text(_get(device, "platform_id"))
    return DeviceView(
        anchor=f"device-{index}",
        host=_text(host),
        bdf=_text(bdf),
        model=_text(_get(described, "model")),
        vendor_device=_text(_get(described, "vendor_device")),
        serial=_text(_get(identity, "serial") or _get(described, "dsn")),
        platform_id=platform_id,
        platform_anchor=platform_anchors.get(platform_id),
        identity="; ".join(
            f"{label} {_text(_get(described, *path))}"
            for label, path in (
                ("subsystem", ("subsystem_vendor_device",)),
                ("class", ("class_code",)),
                ("revision", ("revision",)),
                ("identity", ("identity", "model")),
                ("firmware", ("identity", "firmware")),
                ("DSN", ("dsn",)),
            )
        ),
        verdict=_text(_get(device, "verdict")),
        reasons=tuple(_text(reason) for reason in _list(_get(device, "reasons"))),
        counts=tuple(sum(check.outcome == outcome for check in checks) for outcome in OUTCOMES),
        checks=checks,
        figures=tuple(_figure(figure) for figure in _list(_get(device, "figures"))),
    )


def _check(check: Any) -> CheckRow:
    return CheckRow(
        check_id=_text(_get(check, "check_id")),
        title=_text(_get(check, "title")),
        requirement=_text(_get(check, "requirement")),
        outcome=_text(_get(check, "outcome")),
        verdicts=" ".join(map(str, _list(_get(check, "verdicts")))) or MISSING,
        note=_text(_get(check, "note")),
        evidence=tuple(_evidence(path) for path in _list(_get(check, "evidence"))),
    )


def _evidence(path: Any) -> Link:
    """A link to an evidence file: only a relative path inside the bundle is linked (an
    absolute path or a URL would point out of it)."""
    text = _text(path)
    try:
        parts = urlsplit(text)
    except ValueError:  # an invalid URL, such as a bad IPv6 address
        parts = None
    relative = (
        isinstance(path, str)
        and parts is not None
        and not (parts.scheme or parts.netloc or text.startswith(("/", "\\")))
    )
    return Link(quote(text) if relative else None, PurePosixPath(text).name or text, text)


def _figure(figure: Any) -> FigureRow:
    return FigureRow(
        check_id=_text(_get(figure, "check_id")),
        name=_text(_get(figure, "name")),
        value=_described([_number(_get(figure, "value")), _get(figure, "unit")]),
        better=_text(_get(figure, "better")),
    )


def _platforms(
    certification: Mapping[str, Any], facts: Mapping[str, Any]
) -> tuple[PlatformView, ...]:
    """The run's platforms, each with the facts of its hosts: those it names, then those
    whose facts name it."""
    hosts_facts = _get(facts, "hosts")
    if not isinstance(hosts_facts, Mapping):
        hosts_facts = {}
    views = []
    for index, platform in enumerate(_list(_get(certification, "platforms")), 1):
        platform_id = _get(platform, "platform_id")
        named = [str(host) for host in _list(_get(platform, "hosts"))]
        hosts = named + sorted(
            str(host)
            for host, host_facts in hosts_facts.items()
            if platform_id is not None
            and _get(host_facts, "platform_id") == platform_id
            and str(host) not in named
        )
        views.append(
            PlatformView(
                anchor=f"platform-{index}",
                platform_id=_text(platform_id),
                text=_text(_get(platform, "text")),
                hosts=", ".join(hosts) or MISSING,
                facts=tuple(_host_facts(host, hosts_facts.get(host)) for host in hosts),
            )
        )
    return tuple(views)


def _host_facts(host: str, host_facts: Any) -> HostFacts:
    platform = _get(host_facts, "platform")
    firmware = _get(platform, "firmware")
    rows = (
        ("Kernel", _text(_get(platform, "kernel_release"))),
        (
            "Firmware",
            _described(
                [_get(firmware, "vendor"), _get(firmware, "version")], _get(firmware, "date")
            ),
        ),
        ("QEMU", _described([_get(platform, "qemu_version")], _get(platform, "accel"))),
        ("IOMMU", _text(_get(platform, "iommu"))),
        ("IOMMU mode", _text(_get(platform, "iommu_mode"))),
        ("Interrupt remapping", _on_off(_get(platform, "interrupt_remapping"))),
        ("CPU", _text(_get(platform, "cpu_model"))),
        ("VM host CPU", _text(_get(platform, "vm_host_cpu_model"))),
    )
    tables = _get(platform, "acpi_iommu_tables")
    return HostFacts(
        host=host,
        rows=rows,
        acpi_tables=tuple(
            AcpiTable(
                name=str(name),
                sha256=_text(_get(table, "sha256")),
                length=_text(_get(table, "length")),
                oem_id=_text(_get(table, "oem_id")),
                oem_table_id=_text(_get(table, "oem_table_id")),
                oem_revision=_text(_get(table, "oem_revision")),
            )
            for name, table in sorted(tables.items() if isinstance(tables, Mapping) else ())
        ),
    )


def _outcome_chart(devices: Sequence[DeviceView]) -> str:
    """An SVG element to put in the page: a bar per device, its checks stacked by outcome."""
    from matplotlib.ticker import MaxNLocator

    svg = io.StringIO()
    with svg_figure(svg, (7.0, 0.9 + 0.42 * len(devices))) as ax:
        ys = range(len(devices))
        left = [0] * len(devices)
        for index, (outcome, (colour, text_colour)) in enumerate(OUTCOME_COLOURS.items()):
            widths = [device.counts[index] for device in devices]
            bars = ax.barh(ys, widths, left=left, height=0.6, color=colour, label=outcome)
            ax.bar_label(
                bars,
                labels=[str(width) if width else "" for width in widths],
                label_type="center",
                color=text_colour,
                fontsize=8,
            )
            left = [a + b for a, b in zip(left, widths)]
        ax.set_yticks(ys, [f"{d.host} {d.bdf}" for d in devices], parse_math=False, fontsize=8)
        ax.invert_yaxis()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("checks", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(
            ncols=len(OUTCOMES),
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            frameon=False,
            fontsize=8,
        )
    text = svg.getvalue()
    return text[text.index("<svg") :]
