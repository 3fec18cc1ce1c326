"""vfio_hil_deploy writes the inline file atomically, creating its directory, and leaves an
identical file alone."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from types import ModuleType


def test_creates_directory_and_file(deploy_mod: ModuleType, tmp_path: Path) -> None:
    dest = tmp_path / "var/lib/vfio-hil/vfio_hil_dut.zip"

    data = b"PK\x03\x04 zip bytes"

    result = deploy_mod.deploy(str(dest), data)

    assert result == {"changed": True, "sha256": hashlib.sha256(data).hexdigest()}
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert stat.S_IMODE(dest.parent.stat().st_mode) == 0o755
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary left


def test_identical_file_is_left_alone(deploy_mod: ModuleType, tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    deploy_mod.deploy(str(dest), b"same")
    before = dest.stat().st_ino

    assert deploy_mod.deploy(str(dest), b"same")["changed"] is False
    assert dest.stat().st_ino == before


def test_new_content_or_mode_replaces_the_file(deploy_mod: ModuleType, tmp_path: Path) -> None:
    dest = tmp_path / "pkg.zip"
    deploy_mod.deploy(str(dest), b"old")

    assert deploy_mod.deploy(str(dest), b"new")["changed"] is True
    assert dest.read_bytes() == b"new"
    assert deploy_mod.deploy(str(dest), b"new", 0o600)["changed"] is True
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
