"""A real browser for the tests: Debian's headless Chromium renders a page from disk; the tests
read the DOM it rendered and look at its screenshot."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Optional

#: Chromium as root, headless, with nothing that reaches for the network by itself.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> Optional[str]:
    """The path of Debian's Chromium, or None when it is not installed."""
    return shutil.which("chromium")


def _chromium(args: list[str]) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    if binary is None:
        raise AssertionError("chromium is not installed (make test installs it)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


@dataclass
class Element:
    """An element of a rendered page: its tag, attributes, text and children."""

    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def all_text(self) -> str:
        """The element's text with its descendants', as one string."""
        return self.text + "".join(c.all_text() for c in self.children)

    def find_all(self, tag: Optional[str] = None, **attrs: str) -> list[Element]:
        """Every descendant with ``tag`` (any when None) whose attributes include ``attrs``
        (``class_`` matches one class of the element)."""
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and _matches(child, attrs):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found


def _matches(element: Element, attrs: dict[str, str]) -> bool:
    for name, value in attrs.items():
        if name == "class_":
            if value not in element.attrs.get("class", "").split():
                return False
        elif element.attrs.get(name.replace("_", "-")) != value:
            return False
    return True


VOID = {"meta", "link", "img", "br", "hr", "input", "source", "col", "area", "base", "wbr"}


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Element("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(Element("#text", {}, text=data))


def parse_html(html: str) -> Element:
    """The tree of the HTML text ``html`` (as written, no script run)."""
    tree = _Tree()
    tree.feed(html)
    tree.close()
    return tree.root


def rendered_dom(page: Path) -> Element:
    """The DOM Chromium rendered from ``page`` (after any script ran), as a tree."""
    return parse_html(_chromium(["--dump-dom", page.resolve().as_uri()]).stdout)


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 1000) -> Path:
    """A screenshot of ``page`` as Chromium renders it, written to ``png``."""
    _chromium([f"--screenshot={png}", f"--window-size={width},{height}", page.resolve().as_uri()])
    return png
