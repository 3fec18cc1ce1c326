"""The certification report: its HTML read as a tree (and as Chromium renders it), its PDF
looked at through poppler (the first page as pixels, every page as text), its sameness from one
build to the next, and its refusal to reach for the network."""

from __future__ import annotations

import base64
import io
import re
import shutil
import socket
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cert_samples
import numpy
import pytest
from browser import Element, parse_html, rendered_dom, screenshot
from PIL import Image

from vfio_hil.cert.render import (
    OUTCOME_COLOURS,
    VERDICT_OUTCOME,
    ReportFetchError,
    render_html,
    write_pdf,
)

#: How far (the largest difference of a channel) a pixel may be from a colour to count as it:
#: anti-aliasing and the PNG's rounding move the edges, not the insides of a banner.
NEAR = 40


def _poppler(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: `make test` installs poppler-utils")
    return path


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _banner_colour(verdict: str) -> tuple[int, int, int]:
    return _rgb(OUTCOME_COLOURS[VERDICT_OUTCOME[verdict]][0])


@pytest.fixture(scope="module")
def not_certified(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The NOT CERTIFIED sample's bundle folder with its report.html and report.pdf."""
    return _bundle(tmp_path_factory.mktemp("not-certified"), *cert_samples.not_certified())


@pytest.fixture(scope="module")
def certified(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The CERTIFIED sample's bundle folder with its report.html and report.pdf."""
    return _bundle(tmp_path_factory.mktemp("certified"), *cert_samples.certified())


def _bundle(folder: Path, certification: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    html = render_html(certification, facts)
    (folder / "report.html").write_text(html)
    pdf = write_pdf(html, folder / "report.pdf", folder)
    return {
        "folder": folder,
        "certification": certification,
        "html": html,
        "tree": parse_html(html),
        "pdf": pdf,
    }


def _first_page(pdf: Path) -> Image.Image:
    """The first page of ``pdf`` as poppler draws it at 50 dpi (about 413 x 585 pixels)."""
    prefix = pdf.with_name(f"{pdf.stem}-page")
    subprocess.run(
        [_poppler("pdftoppm"), "-png", "-r", "50", "-f", "1", "-l", "1", "-singlefile",
         str(pdf), str(prefix)],
        check=True, capture_output=True,
    )  # fmt: skip
    with Image.open(prefix.with_suffix(".png")) as image:
        return image.convert("RGB")


def _pdf_text(pdf: Path) -> str:
    return subprocess.run(
        [_poppler("pdftotext"), "-layout", str(pdf), "-"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def _near(image: Image.Image, colour: tuple[int, int, int]) -> numpy.ndarray:
    """Per pixel of ``image`` (rows, columns): whether it has ``colour``."""
    pixels = numpy.asarray(image, dtype=int)
    return numpy.abs(pixels - numpy.array(colour)).max(axis=2) <= NEAR


def _count_near(image: Image.Image, colour: tuple[int, int, int]) -> int:
    return int(_near(image, colour).sum())


def _banner_rows(image: Image.Image, colour: tuple[int, int, int]) -> int:
    """How many rows of ``image`` are more than half ``colour``: a banner across the page."""
    return int((_near(image, colour).mean(axis=1) > 0.5).sum())


def _by_id(tree: Element, element_id: str) -> Element:
    found = tree.find_all(id=element_id)
    assert len(found) == 1, f"{len(found)} elements with id {element_id}"
    return found[0]


def _words(element: Element) -> str:
    return " ".join(element.all_text().split())


# The HTML.


def test_the_html_holds_no_script_and_loads_nothing(not_certified: dict[str, Any]) -> None:
    html, tree = not_certified["html"], not_certified["tree"]
    assert not tree.find_all("script")
    assert "<script" not in html.lower()
    assert not tree.find_all("img") and not tree.find_all("link")
    # The chart is an SVG inside the page, not a file beside it.
    assert len(tree.find_all("svg")) == 1
    assert not list(not_certified["folder"].glob("*.svg"))
    urls = [
        value
        for element in tree.find_all()
        for name, value in element.attrs.items()
        if name in ("src", "href", "xlink:href", "action")
    ]
    urls += re.findall(r"url\(\s*['\"]?([^'\")]*)", html)
    assert urls  # the evidence links, the summary's anchors, the chart's clip paths
    for url in urls:
        assert not urlsplit(url).scheme and not url.startswith("//"), url
    assert "@import" not in html


def test_the_html_shows_every_device_verdict_and_reason(not_certified: dict[str, Any]) -> None:
    tree, certification = not_certified["tree"], not_certified["certification"]
    assert _words(_by_id(tree, "verdict")).startswith("NOT CERTIFIED")
    assert _by_id(tree, "verdict").attrs["class"].split() == ["banner", "o-fail"]
    for device in certification["devices"]:
        section = tree.find_all("section", class_="device", data_bdf=device["bdf"])
        assert len(section) == 1
        text = _words(section[0])
        assert device["bdf"] in text and device["verdict"] in text
        reasons = [_words(li) for li in section[0].find_all("li")]
        assert reasons == device["reasons"]
        rows = section[0].find_all("tr", data_check="PLAT-003")
        assert [_words(td) for td in rows[0].find_all("td")][3] == "fail"
        summary = tree.find_all("tr", data_bdf=device["bdf"])[0]
        assert device["verdict"] in _words(summary)
    assert cert_samples.PLAT_003_REASON in tree.all_text()
    assert cert_samples.ISO_002_REASON in tree.all_text()


def test_the_summary_counts_each_devices_outcomes(not_certified: dict[str, Any]) -> None:
    summary = _by_id(not_certified["tree"], "summary")
    heads = [_words(th) for th in summary.find_all("th")]
    nvme = [
        _words(td) for td in summary.find_all("tr", data_bdf=cert_samples.NVME)[0].find_all("td")
    ]
    edu = [_words(td) for td in summary.find_all("tr", data_bdf=cert_samples.EDU)[0].find_all("td")]
    assert heads[-5:] == ["pass", "skip", "warn", "fail", "incomplete"]
    assert nvme[:5] == ["vdut0", cert_samples.NVME, "nvme", "1b36:0010", cert_samples.NVME_SERIAL]
    assert nvme[-5:] == ["4", "0", "1", "2", "1"]
    # No serial in the edu device's identity: its DSN stands in.
    assert edu[4] == cert_samples.EDU_DSN
    assert edu[-5:] == ["4", "2", "0", "1", "0"]


def test_the_checks_link_their_evidence_relative_to_the_bundle(
    not_certified: dict[str, Any],
) -> None:
    section = not_certified["tree"].find_all("section", data_bdf=cert_samples.NVME)[0]
    row = section.find_all("tr", data_check="ISO-002")[0]
    cells = [_words(td) for td in row.find_all("td")]
    assert cells[4] == "FAIL PASS"
    assert cells[5] == "iommufd: the write reached memory"
    links = [a.attrs["href"] for a in row.find_all("a")]
    assert links == ["evidence/iso-002_vdut0_0000_00_06.0.json"]


def test_the_title_block_names_the_profile_and_the_run(not_certified: dict[str, Any]) -> None:
    tree = not_certified["tree"]
    title = _by_id(tree, "title")
    assert _words(title.find_all("h1")[0]) == "vfio-hil certification report"
    assert _words(title.find_all("p")[0]) == (
        "Profile vfio-cert-1 version 1: VFIO passthrough certification, profile 1"
    )
    rows = {
        _words(tr.find_all("th")[0]): _words(tr.find_all("td")[0]) for tr in title.find_all("tr")
    }
    assert rows["Run"] == "20261127-101500-ab12"
    assert rows["Started"] == "2026-11-27 10:15:00 UTC"
    assert rows["Finished"] == "2026-11-27 10:42:31 UTC"
    assert rows["vfio-hil"] == "0.1.0"
    assert rows["Hosts"] == "vdut0, vdut1" and rows["Certified hosts"] == "vdut0"
    assert rows["Profile sha256"] == not_certified["certification"]["profile"]["sha256"]


def test_the_platform_facts_are_shown_per_host(not_certified: dict[str, Any]) -> None:
    tree = not_certified["tree"]
    facts = {
        _words(tr.find_all("th")[0]): _words(tr.find_all("td")[0])
        for tr in tree.find_all("table", class_="facts", data_host="vdut0")[0].find_all("tr")
        if tr.find_all("td")
    }
    assert facts == {
        "Kernel": "6.1.0-28-amd64",
        "Firmware": "SeaBIOS 1.16.2 (04/01/2014)",
        "QEMU": "7.2.22 (tcg)",
        "IOMMU": "intel",
        "IOMMU mode": "DMA-FQ",
        "Interrupt remapping": "off",
        "CPU": "QEMU TCG CPU version 2.5+",
        "VM host CPU": "Intel(R) Xeon(R) Processor",
    }
    dmar = cert_samples.PLATFORM["acpi_iommu_tables"]["DMAR"]
    acpi = tree.find_all("table", class_="acpi", data_host="vdut0")[0].find_all("tbody")[0]
    assert [_words(td) for td in acpi.find_all("td")] == [
        "DMAR",
        dmar["sha256"],
        "176",
        "BOCHS",
        "BXPC",
        "1",
    ]
    assert _words(_by_id(tree, "verify")) == (
        "Verify with: vfio-hil cert verify <bundle> --key <public key> "
        "(or the stand-alone script in README)"
    )


def test_the_same_bundle_renders_the_same_html() -> None:
    assert render_html(*cert_samples.not_certified()) == render_html(*cert_samples.not_certified())
    assert render_html(*cert_samples.certified()) == render_html(*cert_samples.certified())


def test_the_bundle_data_is_escaped_and_only_bundle_paths_are_linked() -> None:
    certification, facts = cert_samples.not_certified()
    nvme = certification["devices"][0]
    nvme["reasons"].append("<script>alert(1)</script> & more")
    nvme["checks"][0]["evidence"] += ["https://example.com/x.json", "/etc/passwd"]
    html = render_html(certification, facts)
    assert "<script" not in html
    tree = parse_html(html)
    assert "<script>alert(1)</script> & more" in [_words(li) for li in tree.find_all("li")]
    row = tree.find_all("section", data_bdf=cert_samples.NVME)[0].find_all("tr")[1]
    assert [a.attrs["href"] for a in row.find_all("a")] == [
        "evidence/plat-003_vdut0_0000_00_06.0.json"
    ]
    assert "x.json" in _words(row) and "passwd" in _words(row)


def test_missing_and_null_fields_show_as_dashes() -> None:
    """The device's description comes from the host's facts when the certification has none;
    whatever neither has is '-'."""
    certification = {
        "profile": None,
        "verdict": "INCOMPLETE",
        "devices": [
            {"host": "vdut0", "bdf": cert_samples.NVME, "verdict": None, "checks": [{}],
             "figures": [{"name": "x.iops", "value": None}]},
            {"host": "vdut1", "bdf": "0000:00:07.0", "device": None, "reasons": None},
        ],
        "platforms": [{"platform_id": "p1", "hosts": ["vdut0", "vdut1", "gone"]}, "junk"],
    }  # fmt: skip
    facts = {
        "hosts": {
            "vdut0": {"platform_id": "p1", "platform": {"firmware": None, "accel": "kvm"},
                      "devices": {cert_samples.NVME: {"model": "nvme", "identity": None,
                                                      "dsn": "00-aa"}}},
            "vdut1": {"platform": {"acpi_iommu_tables": {"IVRS": None}}},
        }
    }  # fmt: skip
    tree = parse_html(render_html(certification, facts))
    assert _words(_by_id(tree, "verdict")).startswith("INCOMPLETE")
    summary = _by_id(tree, "summary")
    nvme = [
        _words(td) for td in summary.find_all("tr", data_bdf=cert_samples.NVME)[0].find_all("td")
    ]
    assert nvme[:7] == ["vdut0", cert_samples.NVME, "nvme", "-", "00-aa", "-", "-"]
    other = [_words(td) for td in summary.find_all("tr", data_bdf="0000:00:07.0")[0].find_all("td")]
    assert other[2:7] == ["-"] * 5
    facts_rows = {
        _words(tr.find_all("th")[0]): _words(tr.find_all("td")[0])
        for tr in tree.find_all("table", class_="facts", data_host="vdut0")[0].find_all("tr")
        if tr.find_all("td")
    }
    assert facts_rows["QEMU"] == "(kvm)" and facts_rows["Firmware"] == "-"
    assert facts_rows["Kernel"] == "-" and facts_rows["Interrupt remapping"] == "-"
    ivrs = tree.find_all("table", class_="acpi", data_host="vdut1")[0].find_all("tbody")[0]
    assert [_words(td) for td in ivrs.find_all("td")] == ["IVRS"] + ["-"] * 5
    assert tree.find_all("table", class_="facts", data_host="gone")


def test_chromium_shows_the_banner_in_its_colour(
    not_certified: dict[str, Any], tmp_path: Path
) -> None:
    page = not_certified["folder"] / "report.html"
    dom = rendered_dom(page)
    assert _words(_by_id(dom, "verdict")).startswith("NOT CERTIFIED")
    assert len(dom.find_all("svg")) == 1
    with Image.open(screenshot(page, tmp_path / "report.png", 1200, 900)) as png:
        image = png.convert("RGB")
    assert _banner_rows(image, _banner_colour("NOT CERTIFIED")) >= 20


# The PDF.


def test_the_pdfs_first_page_shows_the_red_banner_and_the_findings(
    not_certified: dict[str, Any],
) -> None:
    page = _first_page(not_certified["pdf"])
    white = _count_near(page, (255, 255, 255))
    assert 1 - white / (page.width * page.height) > 0.02, "the first page is blank"
    red = _banner_colour("NOT CERTIFIED")
    assert _count_near(page, red) > 0.02 * page.width * page.height
    assert _banner_rows(page, red) >= 10, "no red banner across the first page"
    text = _pdf_text(not_certified["pdf"])
    first = text.split("\f")[0]
    for expected in ("NOT CERTIFIED", "vfio-cert-1", cert_samples.NVME,
                     cert_samples.NVME_SERIAL, "page 1 of"):  # fmt: skip
        assert expected in first, expected
    pages = text.count("\f")
    assert f"page 1 of {pages}" in first and f"page {pages} of {pages}" in text
    for expected in ("PLAT-003", "ISO-002", "allow_unsafe_interrupts=Y", "Verify with:"):
        assert expected in text, expected


def test_a_certified_pdf_is_green_without_red(certified: dict[str, Any]) -> None:
    page = _first_page(certified["pdf"])
    assert _banner_rows(page, _banner_colour("CERTIFIED")) >= 10
    # Red only in the legend and the summary's heading: no banner, no failed check.
    assert _banner_rows(page, _banner_colour("NOT CERTIFIED")) == 0
    assert _count_near(page, _banner_colour("NOT CERTIFIED")) < 0.002 * page.width * page.height
    first = _pdf_text(certified["pdf"]).split("\f")[0]
    assert "CERTIFIED" in first and "NOT CERTIFIED" not in first
    assert "22,216 IOPS" in first


def test_the_pdf_is_the_same_wherever_it_is_made(
    not_certified: dict[str, Any], tmp_path: Path
) -> None:
    """No clock and no folder in the PDF: its date is the run's end, and its links to the
    evidence are relative to the PDF, as the page's are."""
    elsewhere = tmp_path / "another" / "bundle"
    elsewhere.mkdir(parents=True)
    again = write_pdf(not_certified["html"], elsewhere / "report.pdf", elsewhere)
    data = again.read_bytes()
    assert data == not_certified["pdf"].read_bytes()
    objects = b"".join(_inflated(data))
    uris = set(re.findall(rb"/URI \(([^)]*)\)", objects))
    assert b"evidence/iso-002_vdut0_0000_00_06.0.json" in uris
    assert all(not urlsplit(uri.decode()).scheme for uri in uris), uris
    info = subprocess.run(
        [_poppler("pdfinfo"), "-isodates", str(again)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert re.search(r"CreationDate:\s+2026-11-27T10:42:31", info)


def _inflated(pdf: bytes) -> Iterator[bytes]:
    """The PDF's compressed streams (object streams too), decompressed."""
    for stream in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            yield zlib.decompress(stream.group(1))
        except zlib.error:
            continue


# The PDF loads nothing from the network.


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every attempt at a name lookup or a connection, refused and recorded."""
    attempts: list[tuple[str, Any]] = []

    def refuse(kind: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append((kind, args))
            raise OSError(f"the test allows no {kind}")

        return refused

    for lookup in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        monkeypatch.setattr(socket, lookup, refuse("name lookup"))
    monkeypatch.setattr(socket, "create_connection", refuse("connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connection"))
    return attempts


def _page_with(src: str) -> str:
    return f'<!DOCTYPE html><html><body><p>x</p><img src="{src}" alt="i"></body></html>'


@pytest.mark.parametrize(
    "src",
    ["http://example.com/logo.png", "https://example.com/logo.png", "ftp://example.com/a.png",
     "//example.com/logo.png", "file:///etc/hostname", "../outside.png"],
)  # fmt: skip
def test_write_pdf_refuses_all_but_the_bundles_files(
    src: str, tmp_path: Path, no_network: list[tuple[str, Any]]
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    Image.new("RGB", (4, 4), "blue").save(tmp_path / "outside.png")
    with pytest.raises(ReportFetchError, match="made offline") as refused:
        write_pdf(_page_with(src), bundle / "report.pdf", bundle)
    assert src.lstrip("./") in str(refused.value)
    assert not (bundle / "report.pdf").exists()
    assert no_network == []


def test_write_pdf_draws_data_urls_and_the_bundles_files(
    tmp_path: Path, no_network: list[tuple[str, Any]]
) -> None:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 40), (0, 0, 255)).save(tmp_path / "img" / "blue.png")
    red = io.BytesIO()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(red, format="PNG")
    data = f"data:image/png;base64,{base64.b64encode(red.getvalue()).decode()}"
    html = (
        '<!DOCTYPE html><html><body><img src="img/blue.png" style="width: 8cm">'
        f'<img src="{data}" style="width: 8cm; display: block"></body></html>'
    )
    page = _first_page(write_pdf(html, tmp_path / "out.pdf", tmp_path))
    assert _count_near(page, (0, 0, 255)) > 1000
    assert _count_near(page, (255, 0, 0)) > 1000
    assert no_network == []
