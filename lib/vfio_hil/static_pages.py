"""Static HTML pages and their charts, shared by the results dashboard
(:mod:`vfio_hil.results.dashboard`) and the certification report (:mod:`vfio_hil.cert.render`):
the Jinja environment of a templates folder, the way a page writes a moment, and a matplotlib
figure drawn as SVG. Nothing here reaches for the network, and the same input draws the same
bytes."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Union

import jinja2

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: The SVG metadata matplotlib writes by default, left out: a date would make every drawing
#: differ, and the creator is a URL.
NO_SVG_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}


def template_env(folder: Path) -> jinja2.Environment:
    """The Jinja environment of the templates in ``folder``: everything escaped, an undefined
    name an error, and block tags leave no blank lines."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def utc_text(stamp: dt.datetime) -> str:
    """``2026-11-27 10:15:00 UTC``: a moment as the pages show it."""
    return stamp.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@contextlib.contextmanager
def svg_figure(target: Union[Path, IO[str]], size: tuple[float, float]) -> Iterator[Axes]:
    """The axes of a matplotlib figure of ``size`` inches, to draw on in the block. When the
    block ends the figure is laid out tight and written to ``target`` (a path or a text file)
    as SVG, without metadata and with its element ids salted the same every time: the same
    drawing gives the same bytes."""
    # Imported when drawn: matplotlib costs half a second; Agg draws to files only.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    with matplotlib.rc_context({"svg.hashsalt": "vfio-hil"}):
        fig, ax = pyplot.subplots(figsize=size)
        try:
            yield ax
            fig.tight_layout()
            fig.savefig(target, format="svg", metadata=NO_SVG_METADATA)
        finally:
            pyplot.close(fig)
