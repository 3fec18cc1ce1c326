"""Certification profiles: the versioned test plan a certification is judged under.

A profile (``profiles/<id>.yaml``, shipped with vfio-hil, or a file a lab writes) lists the
checks it takes, each with its requirement (``must``, ``should``, ``report``), the skip kinds
it may SKIP for and, for figure-reporting checks, which figures the report must show. See
``profiles/vfio-cert-1.yaml`` for the semantics. A profile is checked strictly when loaded
(pydantic): a typo in a requirement or a skip kind is an error, not a silently weaker plan.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vfio_hil.lab.errors import CertError
from vfio_hil.lab.report import SKIP_KINDS

#: The folder of the profiles vfio-hil ships.
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

Requirement = Literal["must", "should", "report"]


def _known_kinds(kinds: list[str]) -> list[str]:
    unknown = sorted(set(kinds) - set(SKIP_KINDS))
    if unknown:
        raise ValueError(f"unknown skip kind(s) {unknown} (known: {', '.join(SKIP_KINDS)})")
    return kinds


class CheckRule(BaseModel):
    """What the profile asks of one check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    require: Requirement
    #: The skip kinds this check may SKIP for (None: the profile's ``may_skip``).
    may_skip: list[str] | None = None
    #: fnmatch patterns of the figures the report must show (``report`` checks).
    figures: list[str] = Field(default_factory=list)

    @field_validator("may_skip")
    @classmethod
    def _kinds(cls, kinds: list[str] | None) -> list[str] | None:
        return kinds if kinds is None else _known_kinds(kinds)


class Profile(BaseModel):
    """A certification profile, as loaded and checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    version: int = Field(ge=1)
    title: str
    may_skip: list[str] = Field(default_factory=list)
    variant_may_skip: list[str] = Field(default_factory=list)
    checks: dict[str, CheckRule]

    @field_validator("may_skip", "variant_may_skip")
    @classmethod
    def _kinds(cls, kinds: list[str]) -> list[str]:
        return _known_kinds(kinds)

    @field_validator("checks")
    @classmethod
    def _check_ids(cls, checks: dict[str, CheckRule]) -> dict[str, CheckRule]:
        bad = [c for c in checks if not _is_check_id(c)]
        if bad:
            raise ValueError(f"not check IDs (AREA-NNN): {bad}")
        if not checks:
            raise ValueError("a profile must list at least one check")
        return checks

    def allowed_skips(self, check_id: str) -> frozenset[str]:
        """The skip kinds ``check_id`` may SKIP for under this profile."""
        own = self.checks[check_id].may_skip
        return frozenset(self.may_skip if own is None else own)

    def canonical(self) -> dict[str, Any]:
        """The profile as plain JSON data (what a bundle carries as ``profile.json``)."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the profile: its identity in a bundle."""
        return hashlib.sha256(canonical_json(self.canonical())).hexdigest()


def _is_check_id(text: str) -> bool:
    area, _, number = text.partition("-")
    return area.isalpha() and area.isupper() and 2 <= len(area) <= 5 and (
        len(number) == 3 and number.isdigit()
    )


def canonical_json(data: Any) -> bytes:
    """Sorted, compact JSON bytes: one text per value, for digests."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def shipped_profiles() -> list[str]:
    """The ids of the profiles vfio-hil ships."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_from_data(data: Any, where: str) -> Profile:
    """A Profile from parsed data; CertError naming ``where`` and the first problem."""
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise CertError(f"{where}: {loc}: {first['msg']}") from None


def load_profile(name: str) -> Profile:
    """The profile ``name``: a shipped profile's id (``vfio-cert-1``) or a YAML file's path."""
    path = Path(name)
    if not path.suffix:
        path = PROFILES_DIR / f"{name}.yaml"
        if not path.is_file():
            raise CertError(
                f"no certification profile {name!r} (shipped: {', '.join(shipped_profiles())}; "
                "or give a profile file's path)"
            )
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CertError(f"cannot read profile {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CertError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    return profile_from_data(data, str(path))


def published(profile: Profile) -> Profile | None:
    """The shipped profile of the same id and version, or None when vfio-hil ships none."""
    if profile.profile not in shipped_profiles():
        return None
    shipped = load_profile(profile.profile)
    return shipped if shipped.version == profile.version else None
