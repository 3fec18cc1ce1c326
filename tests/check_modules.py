"""The conformance check modules, imported as the catalogue imports them, for the unit tests
that judge checks with their DUT calls faked."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"


def load_checks(filename: str, name: str) -> ModuleType:
    """``conformance/<filename>``, imported under ``name`` (not into a test module: pytest
    would collect its checks there)."""
    spec = importlib.util.spec_from_file_location(name, CONFORMANCE / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
