"""Bundles: built from a run folder, signed, verified offline; every kind of tampering a
third party must catch makes verify fail, naming the problem."""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from cert_runs import EDU, passing, profile, rec, run_folder

from vfio_hil.cert import signing
from vfio_hil.cert.bundle import (
    ENVELOPE,
    MANIFEST,
    build,
    make_statement,
    manifest_text,
    verify,
)
from vfio_hil.cert.profile import canonical_json
from vfio_hil.cert.verdict import CERTIFIED, NOT_CERTIFIED, certify
from vfio_hil.lab.errors import BundleInvalid, CertError
from vfio_hil.lab.report import read_results


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    signing.keygen(d / "k.key", d / "k.pub")
    return d / "k.key", d / "k.pub"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]):
    """One bundle of a passing run, built once; tests tamper with copies of it."""
    run = run_folder(tmp_path_factory.mktemp("run"), passing())
    return build(run, profile(), signing.load_private(keys[0]))


@pytest.fixture
def bundle(built, tmp_path: Path) -> Path:
    """A copy of the module's bundle folder to tamper with."""
    copy = tmp_path / built.folder.name
    shutil.copytree(built.folder, copy)
    return copy


def _all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_bundle_holds_what_a_third_party_needs_and_verifies(built, keys) -> None:
    names = _all_files(built.folder)
    for name in ("report.html", "report.pdf", "results.json", "junit.xml", "inventory.yml",
                 "platform.json", "profile.json", "certification.json", MANIFEST, ENVELOPE):
        assert name in names  # fmt: skip
    assert any(n.startswith("evidence/") for n in names)
    facts = json.loads((built.folder / "platform.json").read_text())["hosts"]["vdut0"]
    assert facts["platform"]["kernel_release"] == "6.1.0-28-amd64"
    assert facts["platform"]["acpi_iommu_tables"]["DMAR"]["sha256"] == "ab" * 32
    assert facts["devices"]["0000:00:06.0"]["identity"]["serial"] == "hil6"
    # MANIFEST is sha256sum's format and lists every file but itself and the envelope.
    listed = [line.split("  ", 1)[1] for line in (built.folder / MANIFEST).read_text().splitlines()]
    assert listed == [n for n in names if n not in (MANIFEST, ENVELOPE)]
    statement = json.loads(
        __import__("base64").b64decode(json.loads((built.folder / ENVELOPE).read_text())["payload"])
    )
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1"
    assert statement["predicate"]["result"] == "PASSED"
    assert {s["name"] for s in statement["subject"]} == set(names) - {ENVELOPE}
    ok = verify(built.folder, keys[1])
    assert ok.certification["verdict"] == CERTIFIED
    assert ok.files == len(names) - 1
    assert verify(built.archive, keys[1]).certification == ok.certification


def test_the_archive_holds_the_folder(built) -> None:
    with tarfile.open(built.archive) as tar:
        inside = sorted(m.name.split("/", 1)[1] for m in tar.getmembers())
        assert {m.mtime for m in tar.getmembers()} == {0}
    assert inside == _all_files(built.folder)


def _every_file(built) -> list[str]:
    return _all_files(built.folder)


@pytest.mark.parametrize("victim", ["results.json", "report.pdf", "report.html", MANIFEST,
                                    "junit.xml", "inventory.yml", "platform.json",
                                    "profile.json", "certification.json", "evidence"])  # fmt: skip
def test_one_changed_byte_in_any_file_fails(bundle: Path, keys, victim: str) -> None:
    if victim == "evidence":
        victim = next(n for n in _all_files(bundle) if n.startswith("evidence/"))
    path = bundle / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleInvalid, match=f"^{re.escape(victim)} was changed after signing"):
        verify(bundle, keys[1])


def test_a_changed_byte_in_the_envelope_fails(bundle: Path, keys) -> None:
    envelope = json.loads((bundle / ENVELOPE).read_text())
    sig = bytearray(__import__("base64").b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    envelope["signatures"][0]["sig"] = __import__("base64").b64encode(bytes(sig)).decode()
    (bundle / ENVELOPE).write_text(json.dumps(envelope))
    with pytest.raises(BundleInvalid, match="signature does not verify"):
        verify(bundle, keys[1])


@pytest.mark.parametrize("victim", ["results.json", "report.pdf", "certification.json",
                                    "evidence", ENVELOPE])  # fmt: skip
def test_a_removed_file_fails(bundle: Path, keys, victim: str) -> None:
    if victim == "evidence":
        victim = next(n for n in _all_files(bundle) if n.startswith("evidence/"))
    (bundle / victim).unlink()
    with pytest.raises(BundleInvalid, match=f"^{re.escape(victim)} is missing from the bundle"):
        verify(bundle, keys[1])


@pytest.mark.parametrize("extra", ["notes.txt", "evidence/extra.json"])
def test_an_added_file_fails(bundle: Path, keys, extra: str) -> None:
    (bundle / extra).write_text("{}")
    message = f"^{re.escape(extra)} is in the bundle but not in the signed statement"
    with pytest.raises(BundleInvalid, match=message):
        verify(bundle, keys[1])


def test_a_symbolic_link_fails(bundle: Path, keys) -> None:
    os.symlink("results.json", bundle / "link.json")
    with pytest.raises(BundleInvalid, match=r"link.json is a symbolic link"):
        verify(bundle, keys[1])


def test_an_edited_verdict_in_results_fails(bundle: Path, keys) -> None:
    doc = json.loads((bundle / "results.json").read_text())
    plat = next(r for r in doc["results"] if r["check_id"] == "PLAT-003")
    plat["verdict"] = "FAIL"
    (bundle / "results.json").write_text(json.dumps(doc, indent=2))
    with pytest.raises(BundleInvalid, match=r"^results.json was changed after signing"):
        verify(bundle, keys[1])


def _resign(bundle: Path, key_path: Path) -> None:
    """Sign the bundle's files again as they now are, certification.json left as it is (what
    a maker with the key who edits results.json by hand would produce)."""
    names = [n for n in _all_files(bundle) if n not in (MANIFEST, ENVELOPE)]
    from vfio_hil.cert.bundle import file_sha256

    digests = {n: file_sha256(bundle / n) for n in names}
    (bundle / MANIFEST).write_text(manifest_text(digests))
    digests[MANIFEST] = file_sha256(bundle / MANIFEST)
    cert = certify(read_results(bundle / "results.json"), profile())
    statement = make_statement(digests, cert, profile())
    key = signing.load_private(key_path)
    (bundle / ENVELOPE).write_text(json.dumps(signing.sign(canonical_json(statement), key)))


def test_a_resigned_bundle_whose_verdict_its_results_do_not_give_fails(bundle: Path, keys) -> None:
    # Signed by the right key, every digest right: but the results say NOT CERTIFIED.
    doc = json.loads((bundle / "results.json").read_text())
    for r in doc["results"]:
        if r["check_id"] == "ISO-001" and r["device"]["bdf"] == EDU and r["verdict"] == "PASS":
            r["verdict"], r["reason"] = "FAIL", "DMA landed outside its mapping"
    (bundle / "results.json").write_text(json.dumps(doc, indent=2))
    _resign(bundle, keys[0])
    with pytest.raises(BundleInvalid, match=r"certification.json is not what results.json gives "
                       r"under test-cert \(at devices\[0\]\.checks.*NOT CERTIFIED derived, "
                       r"CERTIFIED claimed\)"):  # fmt: skip
        verify(bundle, keys[1])


def test_another_key_fails(bundle: Path, tmp_path: Path) -> None:
    signing.keygen(tmp_path / "other.key", tmp_path / "other.pub")
    with pytest.raises(BundleInvalid, match="signature does not verify with this public key"):
        verify(bundle, tmp_path / "other.pub")


def test_a_tampered_archive_fails(built, keys, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(built.archive) as src, tarfile.open(evil, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith("/junit.xml"):
                data = data.replace(b"vfio-hil", b"vfio-hiL")
            m.size = len(data)
            dst.addfile(m, __import__("io").BytesIO(data))
    with pytest.raises(BundleInvalid, match=r"junit.xml was changed after signing"):
        verify(evil, keys[1])


def test_an_archive_with_a_path_outside_its_folder_is_refused(keys, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside")
        tar.addfile(info, __import__("io").BytesIO(b""))
    with pytest.raises(BundleInvalid, match="not a plain bundle file"):
        verify(evil, keys[1])
    assert not (tmp_path.parent / "outside").exists()


def test_a_failing_run_builds_a_not_certified_bundle_that_verifies(keys, tmp_path: Path) -> None:
    records = [r for r in passing() if r["check_id"] != "PLAT-003"]
    records.append(rec("PLAT-003", "FAIL", reason="allow_unsafe_interrupts=Y"))
    run = run_folder(tmp_path, records)
    out = build(run, profile(), signing.load_private(keys[0]))
    assert out.certification.verdict == NOT_CERTIFIED
    assert verify(out.folder, keys[1]).certification["verdict"] == NOT_CERTIFIED


def test_build_refuses_to_overwrite_without_replace(built, keys) -> None:
    run = built.folder.parent
    with pytest.raises(CertError, match="exists"):
        build(run, profile(), signing.load_private(keys[0]))


def test_keys(tmp_path: Path) -> None:
    kid = signing.keygen(tmp_path / "a.key", tmp_path / "a.pub")
    assert len(kid) == 64
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(CertError, match="exists"):
        signing.keygen(tmp_path / "a.key", tmp_path / "b.pub")
    with pytest.raises(CertError, match="not a PEM private key"):
        signing.load_private(tmp_path / "a.pub")
    with pytest.raises(CertError, match="not a PEM public key"):
        signing.load_public(tmp_path / "a.key")
    with pytest.raises(CertError, match="cannot read key"):
        signing.load_public(tmp_path / "none.pub")


def _readme_script(tmp_path: Path) -> Path:
    """The stand-alone verification script, as the README shows it."""
    import re

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    code = re.search(r"```python\n(# verify_bundle\.py.*?)```", readme, re.S)
    assert code, "the README lost its stand-alone verification script"
    script = tmp_path / "verify_bundle.py"
    script.write_text(code.group(1))
    return script


def _run_script(script: Path, bundle: Path, pub: Path):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(script), str(bundle), str(pub)],
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_the_readme_script_verifies_without_vfio_hil(bundle: Path, keys, tmp_path: Path) -> None:
    script = _readme_script(tmp_path)
    ok = _run_script(script, bundle, keys[1])
    assert ok.returncode == 0, ok.stderr
    assert "signed and whole" in ok.stdout and "PASSED: CERTIFIED" in ok.stdout
    (bundle / "junit.xml").write_text("<testsuites/>")
    (bundle / "evidence" / "new.json").write_text("{}")
    (bundle / "report.pdf").unlink()
    bad = _run_script(script, bundle, keys[1])
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "missing: report.pdf; not signed: evidence/new.json; changed: junit.xml"
    )
    signing.keygen(tmp_path / "o.key", tmp_path / "o.pub")
    other = _run_script(script, bundle, tmp_path / "o.pub")
    assert other.stderr.strip() == "the signature does not verify with this key"


def test_platform_facts_hold_only_the_certified_hosts() -> None:
    from cert_runs import NVME, PLATFORM, document

    from vfio_hil.cert.bundle import platform_facts
    from vfio_hil.lab.baseline import platform_key

    records = [*passing(), rec("PLAT-001", host="vdut1"), rec("CFG-001", bdf=NVME, host="vdut1")]
    facts = platform_facts(document(records), ["vdut0"])
    assert list(facts["hosts"]) == ["vdut0"]
    vdut0 = facts["hosts"]["vdut0"]
    assert vdut0["platform"] == PLATFORM
    assert vdut0["platform_id"] == platform_key(PLATFORM)[0]
    assert sorted(vdut0["devices"]) == [EDU, NVME]
    assert vdut0["devices"][NVME]["dsn"] == "00-11-22-33-44-55-66-77"
    assert list(platform_facts(document(records), ["vdut0", "vdut1"])["hosts"]) == [
        "vdut0", "vdut1"]  # fmt: skip
