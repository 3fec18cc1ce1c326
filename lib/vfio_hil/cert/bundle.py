"""Certification bundles: build one from a run, verify one offline.

A bundle is a folder (and a ``.tar.gz`` of it) holding what a third party needs to check a
certification without re-running anything and without trusting its maker:

- ``report.html`` and ``report.pdf``: the verdict for people;
- ``results.json``, ``junit.xml``, ``evidence/``: the run as it was written;
- ``inventory.yml``: the inventory the run was made with;
- ``platform.json``: per host its platform facts (kernel, firmware, QEMU, the IOMMU, the
  digest of the ACPI DMAR/IVRS table) and its devices' IDs and serial numbers;
- ``profile.json``: the certification profile, as judged under;
- ``certification.json``: the verdict per device and platform with its reasons;
- ``MANIFEST``: the SHA-256 of every file above (``sha256sum -c MANIFEST`` reads it);
- ``statement.dsse.json``: an in-toto statement (test-result predicate) whose subjects are
  every file above and MANIFEST, in a DSSE envelope signed with Ed25519.

:func:`verify` checks the signature, re-hashes every file (missing, extra and changed files
fail), and derives the verdict again from results.json under profile.json.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfio_hil.cert import render
from vfio_hil.cert.profile import Profile, canonical_json, profile_from_data, published
from vfio_hil.cert.signing import key_id, load_public, open_envelope, sign
from vfio_hil.cert.verdict import TEST_RESULT, Certification, RunRecords, certify
from vfio_hil.lab.errors import BundleInvalid, CertError, ResultsFileError
from vfio_hil.lab.report import read_results

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://in-toto.io/attestation/test-result/v0.1"
ENVELOPE = "statement.dsse.json"
MANIFEST = "MANIFEST"
#: The files every bundle has (evidence/ aside, which holds what the run saved).
REQUIRED = (
    "report.html",
    "report.pdf",
    "results.json",
    "junit.xml",
    "inventory.yml",
    "platform.json",
    "profile.json",
    "certification.json",
    MANIFEST,
)


@dataclass(frozen=True)
class Built:
    """A bundle just written."""

    folder: Path
    archive: Path
    certification: Certification
    key_id: str


@dataclass(frozen=True)
class Verified:
    """A bundle that verified: what it certifies and with which key."""

    folder: Path
    certification: dict[str, Any]
    key_id: str
    files: int


def default_folder(run_dir: Path, profile: Profile) -> Path:
    """Where a run's bundle goes by default: ``<run folder>/cert-<profile>``."""
    return run_dir / f"cert-{profile.profile}"


def build(
    run_dir: Path,
    profile: Profile,
    key: Any,
    folder: Path | None = None,
    *,
    hosts: Collection[str] | None = None,
    replace: bool = False,
) -> Built:
    """Judge the run in ``run_dir`` under ``profile`` (the devices of ``hosts`` only, if
    given) and write its bundle, signed with the Ed25519 private ``key``, to ``folder``
    (default :func:`default_folder`) and ``<folder>.tar.gz``. The bundle is written aside
    and moved in place whole."""
    run_dir = run_dir.resolve()
    document = read_results(run_dir)
    certification = certify(document, profile, hosts)
    folder = (folder or default_folder(run_dir, profile)).resolve()
    archive = folder.with_name(folder.name + ".tar.gz")
    if (folder.exists() or archive.exists()) and not replace:
        raise CertError(f"{folder} exists (--force replaces the bundle)")
    junit = run_dir / "junit.xml"
    if not junit.is_file():
        raise CertError(f"run {run_dir.name} has no junit.xml")
    inventory = Path(document["run"].get("inventory") or "")
    if not inventory.is_file():
        raise CertError(f"the run's inventory {inventory} is not there to put in the bundle")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        shutil.copy2(run_dir / "results.json", work / "results.json")
        shutil.copy2(junit, work / "junit.xml")
        shutil.copyfile(inventory, work / "inventory.yml")
        evidence = run_dir / "evidence"
        if evidence.is_dir():
            shutil.copytree(evidence, work / "evidence", symlinks=False)
        facts = platform_facts(document, certification.scope)
        cert_data = certification.to_dict()
        _write_json(work / "platform.json", facts)
        _write_json(work / "profile.json", profile.canonical())
        _write_json(work / "certification.json", cert_data)
        html = render.render_html(cert_data, facts)
        (work / "report.html").write_text(html)
        render.write_pdf(html, work / "report.pdf", work)
        digests = {name: file_sha256(work / name) for name in _files(work)}
        (work / MANIFEST).write_text(manifest_text(digests))
        digests[MANIFEST] = file_sha256(work / MANIFEST)
        statement = make_statement(digests, certification, profile)
        _write_json(work / ENVELOPE, sign(canonical_json(statement), key))
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    finally:
        if work.exists():
            shutil.rmtree(work)
    write_archive(folder, archive)
    return Built(folder, archive, certification, key_id(key.public_key()))


def platform_facts(document: Mapping[str, Any], hosts: Collection[str]) -> dict[str, Any]:
    """``platform.json`` of the certified ``hosts``: per host its platform id and facts, and
    its devices as the run's records name them (:meth:`RunRecords.facts`)."""
    return RunRecords(r for r in document["results"] if r.get("host") in hosts).facts()


def manifest_text(digests: Mapping[str, str]) -> str:
    """``MANIFEST``: ``<sha256>  <path>`` per file, sorted (the ``sha256sum`` format)."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def make_statement(
    digests: Mapping[str, str], certification: Certification, profile: Profile
) -> dict[str, Any]:
    """The in-toto statement: every file as a subject, and a test-result predicate whose
    result is the bundle's verdict and whose configuration is the profile."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": digests[n]}} for n in sorted(digests)],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "result": TEST_RESULT[certification.verdict],
            "configuration": [
                {
                    "name": f"{profile.profile} v{profile.version}",
                    "uri": "profile.json",
                    "digest": {"sha256": digests["profile.json"]},
                }
            ],
            **certification.test_names(),
        },
    }


def write_archive(folder: Path, archive: Path) -> None:
    """``<folder>.tar.gz``: the bundle's files under ``<folder name>/``, in a stable order,
    with no owner, mode or time of this machine in it (the same bundle, the same bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted([*_files(folder), MANIFEST, ENVELOPE]):
            data = (folder / name).read_bytes()
            info = tarfile.TarInfo(f"{folder.name}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp = archive.with_name(archive.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buf.getvalue())
    tmp.replace(archive)


def verify(bundle: Path, public_key: Path) -> Verified:
    """Verify the bundle at ``bundle`` (its folder or its ``.tar.gz``) with the Ed25519
    public key in ``public_key``. Returns what it certifies; BundleInvalid naming the first
    problem otherwise (CertError for a key or path that cannot be used)."""
    public = load_public(public_key)
    with _opened(bundle) as folder:
        statement = open_envelope(_read_json(folder / ENVELOPE), public)
        if statement.get("_type") != STATEMENT_TYPE:
            raise BundleInvalid(f"the signed statement is not an in-toto {STATEMENT_TYPE}")
        if statement.get("predicateType") != PREDICATE_TYPE:
            raise BundleInvalid(f"the statement's predicate is not {PREDICATE_TYPE}")
        signed = _subjects(statement)
        _check_files(folder, signed)
        _check_manifest(folder, signed)
        certification = _check_verdict(folder, statement)
        return Verified(bundle, certification, key_id(public), len(signed))


@contextmanager
def _opened(bundle: Path) -> Iterator[Path]:
    """The bundle's folder: itself, or its archive unpacked (safely) into a temporary one."""
    if bundle.is_dir():
        yield bundle
        return
    if not bundle.is_file():
        raise CertError(f"no bundle at {bundle}")
    with tempfile.TemporaryDirectory(prefix="vfio-hil-verify-") as tmp:
        yield _unpack(bundle, Path(tmp))


def _unpack(archive: Path, into: Path) -> Path:
    """Unpack ``archive`` into ``into``; BundleInvalid for anything but regular files under
    one top folder."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            for m in members:
                if not m.isfile() or m.name.startswith("/") or ".." in m.name.split("/"):
                    raise BundleInvalid(f"{archive.name}: {m.name} is not a plain bundle file")
            if len(tops) != 1:
                raise BundleInvalid(f"{archive.name}: not one bundle folder ({sorted(tops)})")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleInvalid(f"{archive.name}: not a bundle archive ({exc})") from None
    return into / tops.pop()


def _subjects(statement: Mapping[str, Any]) -> dict[str, str]:
    """The statement's subjects as ``{path: sha256}``."""
    try:
        return {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    except (KeyError, TypeError):
        raise BundleInvalid("the statement's subjects are malformed") from None


def _check_files(folder: Path, signed: Mapping[str, str]) -> None:
    """Every signed file is there with its digest, and no other file is."""
    present = set(_files(folder, links_are_errors=True)) | (
        {MANIFEST} if (folder / MANIFEST).is_file() else set()
    )
    for name in sorted(signed):
        if name not in present:
            raise BundleInvalid(f"{name} is missing from the bundle")
    extra = sorted(present - set(signed))
    if extra:
        raise BundleInvalid(f"{extra[0]} is in the bundle but not in the signed statement")
    for name in sorted(signed):
        if file_sha256(folder / name) != signed[name]:
            raise BundleInvalid(f"{name} was changed after signing (its SHA-256 differs)")
    for name in REQUIRED:
        if name not in signed:
            raise BundleInvalid(f"the signed statement does not cover {name}")


def _check_manifest(folder: Path, signed: Mapping[str, str]) -> None:
    listed = {k: v for k, v in signed.items() if k != MANIFEST}
    if (folder / MANIFEST).read_text() != manifest_text(listed):
        raise BundleInvalid("MANIFEST does not list the signed files with their digests")


def _check_verdict(folder: Path, statement: Mapping[str, Any]) -> dict[str, Any]:
    """Derive the verdict again from results.json under profile.json; it must equal
    certification.json and the statement's predicate."""
    profile = profile_from_data(_read_json(folder / "profile.json"), "profile.json")
    shipped = published(profile)
    if shipped is not None and shipped.canonical() != profile.canonical():
        raise BundleInvalid(
            f"profile.json is not the published {profile.profile} v{profile.version}"
        )
    try:
        document = read_results(folder / "results.json")
    except ResultsFileError as exc:
        raise BundleInvalid(str(exc)) from None
    claimed = _read_json(folder / "certification.json")
    scope = claimed.get("scope") if isinstance(claimed, dict) else None
    if not isinstance(scope, list) or not all(isinstance(h, str) for h in scope):
        raise BundleInvalid("certification.json names no scope (the hosts it certifies)")
    try:
        derived = certify(document, profile, scope)
    except CertError as exc:
        raise BundleInvalid(str(exc)) from None
    expected = derived.to_dict()
    if claimed != expected:
        where = _first_difference(claimed, expected)
        raise BundleInvalid(
            f"certification.json is not what results.json gives under {profile.profile} "
            f"(at {where}: {derived.verdict} derived, {claimed.get('verdict')} claimed)"
        )
    predicate = statement.get("predicate") or {}
    want = {"result": TEST_RESULT[derived.verdict], **derived.test_names()}
    for key, value in want.items():
        if predicate.get(key) != value:
            raise BundleInvalid(
                f"the statement's {key} is not what results.json gives under {profile.profile}"
                f" ({TEST_RESULT[derived.verdict]} derived)"
            )
    return copy.deepcopy(claimed)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """Where two JSON values first differ, as ``devices[0].checks[3].outcome``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return path or "(top)"


def _files(folder: Path, *, links_are_errors: bool = False) -> list[str]:
    """The bundle's files, as sorted paths relative to ``folder``, without MANIFEST and the
    envelope."""
    names = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            if links_are_errors:
                raise BundleInvalid(f"{rel} is a symbolic link: a bundle holds only files")
            continue
        if path.is_file() and rel not in (MANIFEST, ENVELOPE):
            names.append(rel)
    return names


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleInvalid(f"{path.name} is missing from the bundle") from None
    except (OSError, ValueError) as exc:
        raise BundleInvalid(f"{path.name} is not JSON ({exc})") from None
