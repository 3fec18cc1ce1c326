"""``vfio-hil cert``: a thin layer over :mod:`vfio_hil.cert`.

    vfio-hil cert keygen [--out PREFIX]
    vfio-hil cert build RUN [--profile P] --key KEY [--out DIR] [--hosts H,...] [--force]
    vfio-hil cert verify BUNDLE --key PUB [--require-certified]
    vfio-hil cert profiles

``build`` exits 0 once the bundle is written, whatever its verdict (the verdict is data the
bundle carries); ``verify`` exits 0 only when the bundle is genuine, whole and its verdict
is what its results give (with ``--require-certified``, also only when it is CERTIFIED),
else 1 with one line naming the problem.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vfio_hil.cert.profile import load_profile, shipped_profiles
from vfio_hil.cert.verdict import CERTIFIED
from vfio_hil.lab.errors import BundleInvalid

DEFAULT_PROFILE = "vfio-cert-1"
DEFAULT_KEY = "vfio-hil-cert"


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``cert`` and its actions to the ``vfio-hil`` sub-commands."""
    cert = sub.add_parser("cert", help="signed certification bundles: keygen, build, verify")
    actions = cert.add_subparsers(dest="action", required=True, parser_class=parser_class)
    keygen = actions.add_parser("keygen", help="make an Ed25519 key pair to sign bundles")
    keygen.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_KEY),
        metavar="PREFIX",
        help=f"writes PREFIX.key (private, mode 0600) and PREFIX.pub (default: {DEFAULT_KEY})",
    )
    build = actions.add_parser("build", help="judge a run under a profile and sign its bundle")
    build.add_argument("run", type=Path, metavar="RUN", help="a run folder (reports/latest)")
    build.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help=f"a shipped profile's id or a profile file (default: {DEFAULT_PROFILE})",
    )
    build.add_argument("--key", type=Path, required=True, help="the Ed25519 private key (PEM)")
    build.add_argument("--out", type=Path, help="the bundle folder (default: RUN/cert-PROFILE)")
    build.add_argument(
        "--hosts", help="certify the devices of these hosts only (comma-separated)"
    )
    build.add_argument("--force", action="store_true", help="replace an existing bundle")
    verify = actions.add_parser("verify", help="verify a bundle offline")
    verify.add_argument("bundle", type=Path, metavar="BUNDLE", help="its folder or .tar.gz")
    verify.add_argument("--key", type=Path, required=True, help="the Ed25519 public key (PEM)")
    verify.add_argument(
        "--require-certified",
        action="store_true",
        help="exit 1 unless the verified verdict is CERTIFIED",
    )
    actions.add_parser("profiles", help="list the shipped certification profiles")


def command(args: argparse.Namespace) -> int:
    """Run ``vfio-hil cert <action>``."""
    from vfio_hil.cert import signing

    if args.action == "keygen":
        private, public = _key_paths(args.out)
        kid = signing.keygen(private, public)
        print(f"private key: {private} (keep it secret)\npublic key:  {public}\nkey id: {kid}")
        return 0
    if args.action == "profiles":
        for name in shipped_profiles():
            p = load_profile(name)
            print(f"{p.profile}  v{p.version}  {len(p.checks)} checks  {p.title}")
        return 0
    if args.action == "build":
        from vfio_hil.cert.bundle import build

        profile = load_profile(args.profile)
        key = signing.load_private(args.key)
        hosts = [h for h in (args.hosts or "").split(",") if h] or None
        built = build(args.run, profile, key, args.out, hosts=hosts, replace=args.force)
        cert = built.certification
        print(f"bundle:  {built.folder}\narchive: {built.archive}")
        print(f"profile: {profile.profile} v{profile.version}; signed by key {built.key_id}")
        print(f"verdict: {cert.verdict}")
        for dev in cert.devices:
            print(f"  {dev.host}/{dev.bdf}  {dev.device.get('model') or '-'}  {dev.verdict}")
            for reason in dev.reasons:
                print(f"      {reason}")
        return 0
    from vfio_hil.cert.bundle import verify

    verified = verify(args.bundle, args.key)
    data = verified.certification
    profile = data["profile"]
    print(
        f"{args.bundle}: verified: {verified.files} files signed by key {verified.key_id}; "
        f"run {data['run']['id']} under {profile['id']} v{profile['version']}: {data['verdict']}"
    )
    if args.require_certified and data["verdict"] != CERTIFIED:
        raise BundleInvalid(f"the bundle verifies, but its verdict is {data['verdict']}")
    return 0


def _key_paths(prefix: Path) -> tuple[Path, Path]:
    """``PREFIX.key`` and ``PREFIX.pub``."""
    return prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
