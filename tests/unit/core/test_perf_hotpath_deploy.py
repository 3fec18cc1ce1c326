"""The compiled hot path travels in the DUT zip and loads there without a compiler; a zip
without it falls back to the Python loops, saying why."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from vfio_hil.lab.provision import build_dut_zip

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from vfio_hil.core.perf import hotpath
module, why = hotpath.load()
print(json.dumps({"file": getattr(module, "__file__", None), "why": why,
                  "index": module.lib.vh_hist_index(1000) if module else None}))
"""


def _load_from(zip_path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(zip_path)], capture_output=True, text=True, check=True,
        cwd=zip_path.parent,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_loads_from_the_dut_zip(tmp_path: Path) -> None:
    dut_zip = build_dut_zip(tmp_path / "state" / "vfio_hil_dut.zip")
    assert any("_hotpath" in n and n.endswith(".so") for n in zipfile.ZipFile(dut_zip).namelist())
    first = _load_from(dut_zip)
    assert first["why"] == "" and first["index"] == 317
    # Written once beside the zip, named by its content; a second DUT process reuses it.
    assert Path(first["file"]).parent == tmp_path / "state" / "native"
    assert _load_from(dut_zip)["file"] == first["file"]


def test_a_zip_without_it_says_why(tmp_path: Path) -> None:
    full = build_dut_zip(tmp_path / "full.zip")
    bare = tmp_path / "bare" / "vfio_hil_dut.zip"
    bare.parent.mkdir()
    with zipfile.ZipFile(full) as src, zipfile.ZipFile(bare, "w") as dst:
        for name in src.namelist():
            if "_hotpath" not in name:
                dst.writestr(name, src.read(name))
    got = _load_from(bare)
    assert got["file"] is None and "no compiled hot path in" in got["why"]
