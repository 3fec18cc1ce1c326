"""Certification on the e2e rack: the suite run judged under vfio-cert-1. Every conformant
platform's devices are CERTIFIED; every broken platform's are NOT CERTIFIED, naming exactly the
MUST checks that FAILed there; and a signed bundle built with the CLI, as a vendor would,
verifies offline, its PDF saying the verdict."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from rackutil import cli
from test_discrimination import BROKEN, CONFORMANT

from vfio_hil.cert.profile import load_profile
from vfio_hil.cert.verdict import CERTIFIED, INCOMPLETE, NOT_CERTIFIED, certify

pytestmark = pytest.mark.e2e

PROFILE = "vfio-cert-1"


def _judged(suite_run: dict[str, Any], host: str):
    return certify(suite_run["run"].results, load_profile(PROFILE), [host])


#: What a conformant platform with a single device under test cannot prove: isolation from a
#: second container's device (ISO-006) and refusal of a second group's node (USR-003) need a
#: second device, so vfio-cert-1 leaves such a platform INCOMPLETE, naming those checks.
NEEDS_A_SECOND_DEVICE = {"ISO-006", "USR-003"}


@pytest.mark.parametrize("host", CONFORMANT)
def test_conformant_platform_is_certified(suite_run: dict[str, Any], host: str) -> None:
    cert = _judged(suite_run, host)
    assert cert.devices, f"no device of {host} in the run's plan"
    if len(cert.devices) > 1:
        assert cert.verdict == CERTIFIED, {d.bdf: d.reasons for d in cert.devices}
        return
    (device,) = cert.devices
    assert cert.verdict == INCOMPLETE
    gaps = {c.check_id: c.note for c in device.checks if c.outcome != "pass"
            and c.outcome != "skip"}  # fmt: skip
    assert set(gaps) == NEEDS_A_SECOND_DEVICE, gaps
    assert "no second DMA-capable device" in gaps["ISO-006"]
    assert "no second VFIO group" in gaps["USR-003"]


@pytest.mark.parametrize("host", sorted(BROKEN))
def test_broken_platform_is_not_certified_naming_its_failed_must_checks(
    suite_run: dict[str, Any], host: str
) -> None:
    cert = _judged(suite_run, host)
    must = {c for c, rule in load_profile(PROFILE).checks.items() if rule.require == "must"}
    expected = set(BROKEN[host]["FAIL"]) & must
    assert expected, f"{host}: its broken guarantee is covered by no MUST check"
    assert cert.verdict == NOT_CERTIFIED
    for dev in cert.devices:
        assert dev.verdict == NOT_CERTIFIED
        failed = {o.check_id for o in dev.checks if o.outcome == "fail"}
        assert failed == expected, (dev.bdf, failed)
        named = {r.split()[0] for r in dev.reasons if " FAIL on " in r}
        assert named == expected, dev.reasons


def test_a_vendor_bundle_builds_and_verifies_offline(
    suite_run: dict[str, Any], tmp_path: Path
) -> None:
    made = cli(["cert", "keygen", "--out", str(tmp_path / "vendor")])
    assert made.returncode == 0, made.stderr
    key, pub = tmp_path / "vendor.key", tmp_path / "vendor.pub"
    run_dir = suite_run["run"].reports / "latest"
    for host, verdict in (("e2e-unsafe", NOT_CERTIFIED), ("e2e-intel", CERTIFIED)):
        out = tmp_path / f"cert-{host}"
        built = cli(["cert", "build", str(run_dir), "--profile", PROFILE, "--key", str(key),
                     "--hosts", host, "--out", str(out)])  # fmt: skip
        assert built.returncode == 0, built.stderr
        assert f"verdict: {verdict}\n" in built.stdout
        for bundle in (out, out.with_name(out.name + ".tar.gz")):
            checked = cli(["cert", "verify", str(bundle), "--key", str(pub)])
            assert checked.returncode == 0, checked.stderr
            assert checked.stdout.rstrip().endswith(f"under {PROFILE} v1: {verdict}")
        strict = cli(["cert", "verify", str(out), "--key", str(pub), "--require-certified"])
        assert strict.returncode == (0 if verdict == CERTIFIED else 1), strict.stderr
        text = subprocess.run(["pdftotext", "-layout", str(out / "report.pdf"), "-"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert verdict in text and host in text
        if verdict == NOT_CERTIFIED:
            for check_id in BROKEN[host]["FAIL"]:
                assert f"{check_id} FAIL on {host}/" in built.stdout
                assert check_id in text
        # One changed byte in the results the bundle carries: verify names the file.
        results = out / "results.json"
        results.write_bytes(results.read_bytes().replace(b'"FAIL"', b'"PASS"', 1)
                            .replace(b'"SKIP"', b'"PASS"', 1))  # fmt: skip
        tampered = cli(["cert", "verify", str(out), "--key", str(pub)])
        assert tampered.returncode == 1
        assert tampered.stderr.strip() == (
            "vfio-hil: error: results.json was changed after signing (its SHA-256 differs)"
        )
