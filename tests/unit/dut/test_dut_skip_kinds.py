"""A DUT function whose check does not apply answers ``skipped(kind, reason)``: the kind is
one the controller knows (the DUT runs without the plugin, which checks it only when a check
SKIPs on a real run), and no answer SKIPs without one."""

from __future__ import annotations

import ast
from pathlib import Path

from vfio_hil.dut import common
from vfio_hil_pytest.checks import CHECK_SKIP_KINDS

DUT_DIR = Path(common.__file__).parent


def _modules() -> list[tuple[str, ast.AST]]:
    return [(p.name, ast.parse(p.read_text(), str(p))) for p in sorted(DUT_DIR.glob("*.py"))]


def test_every_skip_answer_names_a_known_kind() -> None:
    calls = [
        (name, node)
        for name, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "skipped"
    ]
    assert calls, "no skipped() call found: the scan is broken"
    wrong = [
        f"{name}:{node.lineno}: {ast.unparse(node.args[0])}"
        for name, node in calls
        if not (isinstance(node.args[0], ast.Constant) and node.args[0].value in CHECK_SKIP_KINDS)
    ]
    assert not wrong, f"skip kinds not among {CHECK_SKIP_KINDS}: " + ", ".join(wrong)


def test_no_skip_answer_without_its_kind() -> None:
    bare = [
        f"{name}:{node.lineno}"
        for name, tree in _modules()
        if name != "common.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        and any(isinstance(k, ast.Constant) and k.value == "skip" for k in node.keys)
    ]
    assert not bare, "a 'skip' answer without its kind (use common.skipped): " + ", ".join(bare)


def test_skipped_is_the_answer_a_check_reads() -> None:
    assert common.skipped("kernel", "no huge pages") == {
        "skip": "no huge pages",
        "skip_kind": "kernel",
    }
