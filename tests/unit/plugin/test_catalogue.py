"""The check catalogue is complete and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vfio_hil_pytest.catalogue import load_catalogue
from vfio_hil_pytest.checks import LEVELS

FIELDS = ("id", "title", "level", "area", "spec", "needs", "rationale")


def test_every_check_has_every_field() -> None:
    checks = load_catalogue()
    assert checks, "no checks found in conformance/"
    for c in checks:
        empty = [f for f in FIELDS if not c[f]]
        assert not empty, f"{c['id']} has empty {empty}"
        assert c["level"] in LEVELS
        assert c["id"].startswith(c["area"] + "-")


def test_cli_lists_the_catalogue_as_json() -> None:
    cli = str(Path(sys.executable).with_name("vfio-hil"))
    out = subprocess.run(
        [cli, "checks", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    listed = json.loads(out)
    assert [c["id"] for c in listed] == [c["id"] for c in load_catalogue()]
    table = subprocess.run(
        [cli, "checks", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert f"{len(listed)} checks" in table
