"""Checks declared with IOMMU backends are collected once per backend and device; an
unknown backend is refused when the check is declared."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfio_hil_pytest import ALL_BACKENDS, check

CHECKS = '''
from vfio_hil_pytest import ALL_BACKENDS, check

@check("TST-010", "under every backend", level="MUST", spec="s", backends=ALL_BACKENDS)
def test_each_backend(dut_device, iommu_backend):
    """r"""

@check("TST-011", "device only", level="MUST", spec="s")
def test_default_backend(dut_device):
    """r"""
'''


def test_backends_parametrize_each_device(pytester: pytest.Pytester, tmp_path: Path) -> None:
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "all:\n  hosts:\n    r1: {vfio_devices: ['00:04.0', {bdf: '00:05.0', model: nvme}]}\n"
    )
    pytester.makepyfile(test_checks=CHECKS)
    result = pytester.runpytest(
        f"--vfio-inventory={inventory}",
        f"--vfio-reports={tmp_path / 'reports'}",
        "--collect-only",
        "-q",
    )
    ids = [line for line in result.outlines if "::test_" in line]
    each = sorted(i.split("[", 1)[1].rstrip("]") for i in ids if "test_each_backend" in i)
    assert each == sorted(
        f"r1/{dev}-{b}" for dev in ("0000:00:04.0", "0000:00:05.0") for b in ALL_BACKENDS
    )
    assert sum("test_default_backend" in i for i in ids) == 2


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown IOMMU backend"):
        check("TST-012", "t", level="MUST", spec="s", backends=("vfio-noiommu",))
