"""`vfio-hil cert`: each action as a user calls it, with its exit status and its one line on
bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from cert_runs import PROFILE, passing, rec, run_folder

from vfio_hil.lab.cli import main


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "test-cert.yaml"
    path.write_text(yaml.safe_dump(PROFILE))
    return path


def test_keygen_build_verify(tmp_path: Path, capsys, profile_file: Path) -> None:
    prefix = tmp_path / "vendor"
    code, out, _ = _cli(capsys, "cert", "keygen", "--out", str(prefix))
    assert code == 0 and "key id: " in out
    code, _, err = _cli(capsys, "cert", "keygen", "--out", str(prefix))
    assert code == 2 and err.strip() == f"vfio-hil: error: {prefix}.key exists: keygen does " \
        "not overwrite a key"  # fmt: skip
    run = run_folder(tmp_path, passing())
    code, out, err = _cli(capsys, "cert", "build", str(run), "--profile", str(profile_file),
                          "--key", f"{prefix}.key")  # fmt: skip
    assert code == 0, err
    assert "verdict: CERTIFIED\n" in out
    assert f"bundle:  {run / 'cert-test-cert'}\n" in out
    code, out, _ = _cli(capsys, "cert", "verify", str(run / "cert-test-cert.tar.gz"),
                        "--key", f"{prefix}.pub", "--require-certified")  # fmt: skip
    assert code == 0
    assert out.endswith("under test-cert v1: CERTIFIED\n")
    code, _, err = _cli(capsys, "cert", "build", str(run), "--profile", str(profile_file),
                        "--key", f"{prefix}.key")  # fmt: skip
    assert code == 2 and "exists (--force replaces the bundle)" in err
    code, _, err = _cli(capsys, "cert", "build", str(run), "--profile", str(profile_file),
                        "--key", f"{prefix}.key", "--force")  # fmt: skip
    assert code == 0, err


def test_a_not_certified_bundle_verifies_but_is_not_certified(
    tmp_path: Path, capsys, profile_file: Path
) -> None:
    _cli(capsys, "cert", "keygen", "--out", str(tmp_path / "k"))
    records = [r for r in passing() if r["check_id"] != "PLAT-001"]
    records.append(rec("PLAT-001", "FAIL", reason="no IOMMU group"))
    run = run_folder(tmp_path, records)
    code, out, _ = _cli(capsys, "cert", "build", str(run), "--profile", str(profile_file),
                        "--key", str(tmp_path / "k.key"))  # fmt: skip
    assert code == 0
    assert "verdict: NOT CERTIFIED\n" in out
    assert "      PLAT-001 FAIL on vdut0/0000:00:04.0: no IOMMU group\n" in out
    bundle = str(run / "cert-test-cert")
    code, out, _ = _cli(capsys, "cert", "verify", bundle, "--key", str(tmp_path / "k.pub"))
    assert code == 0 and out.endswith(": NOT CERTIFIED\n")
    code, _, err = _cli(capsys, "cert", "verify", bundle, "--key", str(tmp_path / "k.pub"),
                        "--require-certified")  # fmt: skip
    assert code == 1
    assert err == "vfio-hil: error: the bundle verifies, but its verdict is NOT CERTIFIED\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cert", "build", "{tmp}/nowhere", "--key", "{tmp}/k.key"], "no such run"),
        (["cert", "build", "{run}", "--key", "{tmp}/none.key"], "cannot read key"),
        (["cert", "build", "{run}", "--key", "{tmp}/k.pub"], "not a PEM private key"),
        (["cert", "build", "{run}", "--key", "{tmp}/k.key", "--profile", "nope"],
         "no certification profile 'nope'"),
        (["cert", "build", "{run}", "--key", "{tmp}/k.key", "--hosts", "vdut7"],
         "has no host vdut7"),
        (["cert", "build", "{run}"], "the following arguments are required: --key"),
        (["cert", "verify", "{tmp}/nothing", "--key", "{tmp}/k.pub"], "no bundle at"),
        (["cert", "verify", "{tmp}/k.pub", "--key", "{tmp}/k.pub"], "not a bundle archive"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2_or_1(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    _cli(capsys, "cert", "keygen", "--out", str(tmp_path / "k"))
    run = run_folder(tmp_path, passing())
    argv = [a.format(tmp=tmp_path, run=run) for a in args]
    code, _, err = _cli(capsys, *argv)
    assert code in (1, 2)
    assert err.startswith("vfio-hil: error: ") and message in err, err
    assert err.count("\n") == 1


def test_a_run_without_a_check_plan_is_refused(tmp_path: Path, capsys) -> None:
    import json

    _cli(capsys, "cert", "keygen", "--out", str(tmp_path / "k"))
    run = run_folder(tmp_path, passing())
    doc = json.loads((run / "results.json").read_text())
    del doc["run"]["plan"]
    (run / "results.json").write_text(json.dumps(doc))
    code, _, err = _cli(capsys, "cert", "build", str(run), "--key", str(tmp_path / "k.key"))
    assert code == 2
    assert "has no check plan" in err and err.count("\n") == 1
    assert not (run / "cert-vfio-cert-1").exists()


def test_profiles_lists_the_shipped_ones(capsys) -> None:
    code, out, _ = _cli(capsys, "cert", "profiles")
    assert code == 0 and out.startswith("vfio-cert-1  v1  70 checks  ")
