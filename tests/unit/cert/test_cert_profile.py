"""Certification profiles: the shipped one against the catalogue, and strict loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from cert_runs import PROFILE, profile

from vfio_hil.cert.profile import load_profile, shipped_profiles
from vfio_hil.lab.errors import CertError
from vfio_hil_pytest.catalogue import load_catalogue

LEVEL = {"MUST": "must", "SHOULD": "should", "INFO": "report"}


def test_vfio_cert_1_takes_every_catalogue_check_at_its_level() -> None:
    cert = load_profile("vfio-cert-1")
    catalogue = {c["id"]: c for c in load_catalogue()}
    assert set(cert.checks) == set(catalogue), "vfio-cert-1 and the catalogue list other checks"
    wrong = {
        cid: (catalogue[cid]["level"], rule.require)
        for cid, rule in cert.checks.items()
        if LEVEL[catalogue[cid]["level"]] != rule.require
    }
    assert not wrong
    assert "vfio-cert-1" in shipped_profiles()


def test_vfio_cert_1_reports_perf_figures() -> None:
    cert = load_profile("vfio-cert-1")
    assert cert.checks["PERF-001"].figures
    assert cert.allowed_skips("HP-001") == {"capability"}
    assert cert.allowed_skips("PLAT-005") == {"platform"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checks": {"CFG-001": {"require": "mandatory"}}}, "checks.CFG-001.require"),
        ({"checks": {"CFG-001": {"require": "must", "may_skip": ["whim"]}}}, "unknown skip kind"),
        ({"may_skip": ["whim"]}, "unknown skip kind"),
        ({"checks": {"cfg1": {"require": "must"}}}, "not check IDs"),
        ({"checks": {}}, "at least one check"),
        ({"colour": "red"}, "colour"),
        ({"version": 0}, "version"),
    ],
)
def test_a_malformed_profile_is_one_line_naming_the_problem(
    change: dict, message: str
) -> None:
    with pytest.raises(CertError, match=message) as err:
        profile(**change)
    assert "\n" not in str(err.value)


def test_unknown_profile_names_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(CertError, match=r"no certification profile 'nope'.*vfio-cert-1"):
        load_profile("nope")
    bad = tmp_path / "p.yaml"
    bad.write_text("profile: [unclosed\n")
    with pytest.raises(CertError, match="not YAML"):
        load_profile(str(bad))


def test_a_profile_file_loads_and_its_digest_follows_its_content(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(PROFILE))
    mine = load_profile(str(path))
    assert mine == profile()
    assert mine.digest() == profile().digest()
    assert profile(title="other").digest() != mine.digest()
