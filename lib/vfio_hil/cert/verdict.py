"""The certification verdict of a run under a profile, per device and platform.

Derived from ``results.json`` alone (its records and the run's check plan), so that whoever
holds a bundle derives it again and compares. For each device of the run's plan, the checks
of the profile that apply to it (its device checks, and its host's host checks) are judged
from their records:

- ``pass``: a record PASSed and none FAILed or ERRORed (other variants SKIPped for a kind
  the profile allows; of a check run in variants, a variant may SKIP for a kind of the
  profile's ``variant_may_skip`` once another variant decided: PASSed, or SKIPped for
  another kind);
- ``skip``: every record SKIPped, each for a kind the profile allows for the check;
- ``fail``: a ``must`` check FAILed: the device is NOT CERTIFIED;
- ``warn``: a ``should`` or ``report`` check FAILed: reported, the verdict stands;
- ``incomplete``: no record, an ERROR, a SKIP for a kind not allowed, or a reported figure
  missing: the device is INCOMPLETE (unless a ``fail`` makes it NOT CERTIFIED).
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from vfio_hil.cert.profile import CheckRule, Profile
from vfio_hil.lab.baseline import platform_key, platform_text
from vfio_hil.lab.errors import CertError

CERTIFIED = "CERTIFIED"
NOT_CERTIFIED = "NOT CERTIFIED"
INCOMPLETE = "INCOMPLETE"
#: Verdicts from best to worst.
VERDICTS = (CERTIFIED, INCOMPLETE, NOT_CERTIFIED)
#: The in-toto test-result ``result`` of each verdict.
TEST_RESULT = {CERTIFIED: "PASSED", INCOMPLETE: "WARNED", NOT_CERTIFIED: "FAILED"}

Record = Mapping[str, Any]


@dataclass(frozen=True)
class CheckOutcome:
    """How one check of the profile went on one device."""

    check_id: str
    title: str
    requirement: str
    #: pass, skip, fail, warn or incomplete (see the module's docstring).
    outcome: str
    #: The verdicts of its records, one per variant (backend, hotplug way).
    verdicts: list[str]
    #: The failure, ERROR or skip reason that decided the outcome ('' for a plain pass).
    note: str
    #: The records' evidence files, relative to the run (and bundle) folder.
    evidence: list[str]


@dataclass(frozen=True)
class DeviceCertification:
    """The verdict on one device of one host, with its reasons and every check's outcome."""

    host: str
    bdf: str
    platform_id: str
    device: dict[str, Any]
    verdict: str
    reasons: list[str]
    checks: list[CheckOutcome]
    figures: list[dict[str, Any]]


@dataclass(frozen=True)
class Certification:
    """A run judged under a profile: ``certification.json`` of a bundle."""

    profile: dict[str, Any]
    run: dict[str, Any]
    #: The hosts whose devices are certified (every host of the run unless limited).
    scope: list[str]
    verdict: str
    devices: list[DeviceCertification]
    platforms: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, in a stable order."""
        return asdict(self)

    def test_names(self) -> dict[str, list[str]]:
        """The in-toto test-result lists: ``host/bdf CHECK-ID`` per device check, as
        ``passedTests`` (pass, skip), ``warnedTests`` (warn, incomplete) and
        ``failedTests`` (fail)."""
        lists: dict[str, list[str]] = {"passedTests": [], "warnedTests": [], "failedTests": []}
        which = {
            "pass": "passedTests",
            "skip": "passedTests",
            "warn": "warnedTests",
            "incomplete": "warnedTests",
            "fail": "failedTests",
        }
        for dev in self.devices:
            for c in dev.checks:
                lists[which[c.outcome]].append(f"{dev.host}/{dev.bdf} {c.check_id}")
        return lists


def certify(
    document: Mapping[str, Any], profile: Profile, hosts: Collection[str] | None = None
) -> Certification:
    """Judge the run ``document`` (results.json's ``{"run", "results"}``) under ``profile``,
    the devices of ``hosts`` only if given. CertError when the run has no check plan (made by
    a vfio-hil before certification) or lacks one of ``hosts``."""
    run = document["run"]
    plan = run.get("plan")
    if not isinstance(plan, Mapping) or "devices" not in plan:
        raise CertError(
            f"run {run.get('id')} has no check plan (results.json made by a vfio-hil "
            "without certification): run the suite again"
        )
    run_hosts = sorted(run.get("hosts", []))
    unknown = sorted(set(hosts or ()) - set(run_hosts))
    if unknown:
        raise CertError(
            f"run {run['id']} has no host {', '.join(unknown)} (its hosts: {', '.join(run_hosts)})"
        )
    scope = sorted(hosts) if hosts else run_hosts
    records = RunRecords(r for r in document["results"] if r.get("host") in scope)
    host_checks = set(plan.get("host_checks", []))
    known = host_checks | set(plan.get("device_checks", []))
    devices = []
    planned = [d for d in plan["devices"] if d["host"] in scope]
    for entry in sorted(planned, key=lambda d: (d["host"], d["bdf"])):
        applicable = host_checks | set(entry["checks"])
        devices.append(_certify_device(entry, profile, records, applicable, known))
    verdict = max((d.verdict for d in devices), key=VERDICTS.index, default=INCOMPLETE)
    return Certification(
        profile={
            "id": profile.profile,
            "version": profile.version,
            "title": profile.title,
            "sha256": profile.digest(),
        },
        run={
            "id": run["id"],
            "started": run.get("started"),
            "finished": run.get("finished"),
            "vfio_hil_version": run.get("vfio_hil_version"),
            "hosts": run_hosts,
        },
        scope=scope,
        verdict=verdict,
        devices=devices,
        platforms=records.platforms(),
    )


class RunRecords:
    """A run's records, indexed by host, device and check, with each host's platform and
    each device's identity as the records name them."""

    def __init__(self, results: Iterable[Record]) -> None:
        self.device: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
        self.host: dict[tuple[str, str], list[Record]] = defaultdict(list)
        self.platform: dict[str, Mapping[str, Any]] = {}
        self.identity: dict[tuple[str, str], dict[str, Any]] = {}
        for r in results:
            host = r.get("host") or ""
            if r.get("platform") and host not in self.platform:
                self.platform[host] = r["platform"]
            dev = r.get("device")
            if dev:
                self.device[(host, dev["bdf"], r["check_id"])].append(r)
                known = self.identity.setdefault((host, dev["bdf"]), {})
                known.update({k: v for k, v in dev.items() if v is not None})
            else:
                self.host[(host, r["check_id"])].append(r)

    def of(self, host: str, bdf: str, check_id: str, host_check: bool) -> list[Record]:
        """The records of ``check_id`` on the device (or, for a host check, on its host)."""
        found = (
            self.host.get((host, check_id), [])
            if host_check
            else self.device.get((host, bdf, check_id), [])
        )
        return sorted(found, key=_variant_order)

    def platform_id(self, host: str) -> str:
        """The platform id of ``host`` (``unknown`` when no record of it has its platform)."""
        summary = self.platform.get(host)
        return platform_key(summary)[0] if summary else "unknown"

    def facts(self) -> dict[str, Any]:
        """``platform.json``: per host its platform id and facts (the records' platform), and
        its devices as the records name them (IDs, class, revision, serial numbers)."""
        hosts: dict[str, dict[str, Any]] = {}
        for host in sorted({h for h, _ in self.identity} | set(self.platform)):
            if not host:
                continue
            hosts[host] = {
                "platform_id": self.platform_id(host),
                "platform": dict(self.platform.get(host, {})),
                "devices": {
                    bdf: dict(ident)
                    for (h, bdf), ident in sorted(self.identity.items())
                    if h == host
                },
            }
        return {"hosts": hosts}

    def platforms(self) -> list[dict[str, Any]]:
        """Each platform of the run: its id, its one-line text and its hosts."""
        found: dict[str, dict[str, Any]] = {}
        for host in sorted(self.platform):
            pid, fields = platform_key(self.platform[host])
            entry = found.setdefault(
                pid, {"platform_id": pid, "text": platform_text(fields), "hosts": []}
            )
            entry["hosts"].append(host)
        return [found[k] for k in sorted(found)]


def _certify_device(
    entry: Mapping[str, Any],
    profile: Profile,
    records: RunRecords,
    applicable: set[str],
    known: set[str],
) -> DeviceCertification:
    host, bdf = entry["host"], entry["bdf"]
    host_checks = applicable - set(entry["checks"])
    outcomes: list[CheckOutcome] = []
    figures: list[dict[str, Any]] = []
    for check_id in sorted(profile.checks, key=check_order):
        rule = profile.checks[check_id]
        if known and check_id not in known:
            outcomes.append(
                CheckOutcome(check_id, "", rule.require, "incomplete", [], "not in the run's "
                             "catalogue (a vfio-hil without this check)", [])
            )  # fmt: skip
            continue
        if check_id not in applicable:
            continue
        found = records.of(host, bdf, check_id, check_id in host_checks)
        outcome, note = judge(rule, profile, check_id, found)
        shown = _figures(rule, found)
        if outcome in ("pass", "warn"):
            missing = [p for p in rule.figures if not any(
                fnmatch.fnmatchcase(f["name"], p) for f in shown)]  # fmt: skip
            if missing:
                outcome, note = "incomplete", f"no figure matching {', '.join(missing)}"
        figures += shown
        outcomes.append(
            CheckOutcome(
                check_id=check_id,
                title=found[0].get("title", "") if found else "",
                requirement=rule.require,
                outcome=outcome,
                verdicts=[r["verdict"] for r in found],
                note=note,
                evidence=sorted({r["evidence"] for r in found if r.get("evidence")}),
            )
        )
    fails = [o for o in outcomes if o.outcome == "fail"]
    gaps = [o for o in outcomes if o.outcome == "incomplete"]
    where = f"{host}/{bdf}"
    reasons = [f"{o.check_id} FAIL on {where}: {o.note}" for o in fails]
    reasons += [f"{o.check_id} incomplete on {where}: {o.note}" for o in gaps]
    verdict = NOT_CERTIFIED if fails else INCOMPLETE if gaps else CERTIFIED
    device = {"bdf": bdf, "model": entry.get("model")}
    device.update(records.identity.get((host, bdf), {}))
    return DeviceCertification(
        host=host,
        bdf=bdf,
        platform_id=records.platform_id(host),
        device=device,
        verdict=verdict,
        reasons=reasons,
        checks=outcomes,
        figures=figures,
    )


def check_order(check_id: str) -> tuple[str, int]:
    """Catalogue order: by area, then by number (``DMA-002`` before ``DMA-010``)."""
    area, _, number = check_id.partition("-")
    return area, int(number)


def _variant_order(record: Record) -> tuple[str, str, str]:
    return (record.get("backend") or "", record.get("hotplug_way") or "", record["nodeid"])


def judge(
    rule: CheckRule, profile: Profile, check_id: str, records: list[Record]
) -> tuple[str, str]:
    """The outcome of one check on one device from its records, and the note that says why."""
    if not records:
        return "incomplete", "not run"
    variants = len(records) > 1
    by = defaultdict(list)
    for r in records:
        by[r["verdict"]].append(r)
    if by["FAIL"]:
        return ("fail" if rule.require == "must" else "warn"), _why(by["FAIL"][0], variants)
    if by["ERROR"]:
        return "incomplete", f"ERROR: {_why(by['ERROR'][0], variants)}"
    allowed = profile.allowed_skips(check_id)
    # The variants that decide: those that ran as far as the device let them (a PASS, or a
    # SKIP for what the device lacks), not those the kernel or the lab left out. Once one
    # decides, the others may be left out.
    variant_kinds = set(profile.variant_may_skip)
    deciding = [
        r for r in records if r["verdict"] == "PASS" or r.get("skip_kind") not in variant_kinds
    ]
    if variants and deciding:
        allowed = allowed | variant_kinds
    refused = [r for r in by["SKIP"] if r.get("skip_kind") not in allowed]
    if refused:
        # The telling one: a backend the kernel lacks says less about why the check could not
        # run than what its other variants lacked.
        r = min(refused, key=lambda s: s.get("skip_kind") == "backend")
        return "incomplete", (
            f"SKIP for a reason {profile.profile} does not allow "
            f"({r.get('skip_kind') or 'no kind'}): {_why(r, variants)}"
        )
    if by["PASS"]:
        return "pass", ""
    return "skip", _why((deciding or by["SKIP"])[0], variants)


def _why(record: Record, variants: bool) -> str:
    """The record's reason; with ``variants``, prefixed by the variant it ran in."""
    reason = record.get("reason") or "(no reason given)"
    variant = record.get("hotplug_way") or record.get("backend")
    return f"[{variant}] {reason}" if variants and variant else reason


def _figures(rule: CheckRule, records: list[Record]) -> list[dict[str, Any]]:
    """The figures of ``records`` the profile asks the report to show."""
    shown = []
    for r in records:
        for f in r.get("figures") or []:
            if any(fnmatch.fnmatchcase(f["name"], p) for p in rule.figures):
                better = "higher" if f.get("higher_is_better", True) else "lower"
                shown.append(
                    {
                        "check_id": r["check_id"],
                        "name": f["name"],
                        "value": f["value"],
                        "unit": f["unit"],
                        "better": better,
                    }
                )
    return shown
