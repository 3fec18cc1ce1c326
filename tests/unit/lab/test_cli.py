"""The CLI's bad-input paths: one line naming the problem, exit 2, nothing booted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

VFIO_HIL = str(Path(sys.executable).with_name("vfio-hil"))


def cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VFIO_HIL, *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "VFIO_HIL_HOME": str(home)},
        cwd=home,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("inventory", "problem"),
    [
        (None, "no such file"),
        ("all:\n  hosts:\n    h: [1, 2\n", "not valid YAML"),
        ("all:\n  hosts:\n    h: {vm_iommu: sparc}\n", "vm_iommu: 'sparc' is not one of"),
    ],
)
def test_bad_inventory_exits_2_with_one_line_and_boots_nothing(
    tmp_path: Path, inventory: str | None, problem: str
) -> None:
    path = tmp_path / "inv.yml"
    if inventory is not None:
        path.write_text(inventory)
    for args in (["run", "--inventory", str(path)], ["rack", "up", "--inventory", str(path)]):
        proc = cli(args, tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("vfio-hil: error: inventory ")
        assert str(path) in lines[0] and problem in lines[0]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "racks").exists()
    assert not (tmp_path / "reports").exists()


def test_bad_option_exits_2(tmp_path: Path) -> None:
    proc = cli(["rack", "explode"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("vfio-hil: error: argument action: invalid choice")
