"""The certification verdict, derived from records and the run's plan under a profile."""

from __future__ import annotations

import pytest
from cert_runs import EDU, IOPS, NVME, PLAN, document, passing, profile, rec

from vfio_hil.cert.verdict import CERTIFIED, INCOMPLETE, NOT_CERTIFIED, certify
from vfio_hil.lab.errors import CertError


def _replace(records: list[dict], check_id: str, bdf: str | None, new: list[dict]) -> list[dict]:
    """``records`` with those of ``check_id`` on ``bdf`` (None: the host) replaced by ``new``."""
    kept = [
        r for r in records
        if not (r["check_id"] == check_id and (r["device"] or {}).get("bdf") == bdf)
    ]  # fmt: skip
    return kept + new


def _device(cert, bdf):
    return next(d for d in cert.devices if d.bdf == bdf)


def _outcome(cert, bdf, check_id):
    return next(c for c in _device(cert, bdf).checks if c.check_id == check_id)


def test_every_applicable_check_holding_is_certified() -> None:
    cert = certify(document(passing()), profile())
    assert cert.verdict == CERTIFIED
    assert [d.verdict for d in cert.devices] == [CERTIFIED, CERTIFIED]
    edu, nvme = cert.devices
    assert not edu.reasons
    # PERF-001 applies only where the plan says: the NVMe device.
    assert "PERF-001" not in {c.check_id for c in edu.checks}
    assert _outcome(cert, NVME, "PERF-001").outcome == "pass"
    assert [f["name"] for f in nvme.figures] == ["randread_4k_qd1.iops"]
    assert _outcome(cert, EDU, "HP-001").outcome == "skip"
    assert _outcome(cert, EDU, "ISO-001").outcome == "pass"
    assert _outcome(cert, EDU, "ISO-001").verdicts == ["SKIP", "PASS"]  # iommufd, type1v2
    assert nvme.device["identity"]["serial"] == "hil6"
    assert nvme.device["dsn"] == "00-11-22-33-44-55-66-77"
    assert cert.platforms[0]["hosts"] == ["vdut0"]
    assert nvme.platform_id == cert.platforms[0]["platform_id"]
    assert cert.test_names()["failedTests"] == []
    assert f"vdut0/{NVME} PERF-001" in cert.test_names()["passedTests"]


def test_a_failed_must_host_check_fails_every_device_of_the_host() -> None:
    records = _replace(passing(), "PLAT-003", None, [
        rec("PLAT-003", "FAIL", reason="allow_unsafe_interrupts=Y on vdut0")])  # fmt: skip
    cert = certify(document(records), profile())
    assert cert.verdict == NOT_CERTIFIED
    for dev in cert.devices:
        assert dev.verdict == NOT_CERTIFIED
        assert dev.reasons == [
            f"PLAT-003 FAIL on vdut0/{dev.bdf}: allow_unsafe_interrupts=Y on vdut0"
        ]
    assert f"vdut0/{EDU} PLAT-003" in cert.test_names()["failedTests"]


def test_a_failed_must_device_check_fails_only_that_device() -> None:
    records = _replace(passing(), "ISO-001", EDU, [
        rec("ISO-001", "FAIL", bdf=EDU, backend="type1v2", reason="DMA landed outside"),
        rec("ISO-001", "PASS", bdf=EDU, backend="iommufd")])  # fmt: skip
    cert = certify(document(records), profile())
    assert (_device(cert, EDU).verdict, _device(cert, NVME).verdict) == (NOT_CERTIFIED, CERTIFIED)
    assert _device(cert, EDU).reasons == [
        f"ISO-001 FAIL on vdut0/{EDU}: [type1v2] DMA landed outside"
    ]
    assert cert.verdict == NOT_CERTIFIED


def test_a_failed_should_check_is_a_warning() -> None:
    records = _replace(passing(), "PLAT-006", None, [rec("PLAT-006", "FAIL")])
    cert = certify(document(records), profile())
    assert cert.verdict == CERTIFIED
    assert _outcome(cert, EDU, "PLAT-006").outcome == "warn"
    assert f"vdut0/{EDU} PLAT-006" in cert.test_names()["warnedTests"]


@pytest.mark.parametrize(
    ("new", "note"),
    [
        ([rec("CFG-001", "ERROR", bdf=EDU, reason="channel broke")], "ERROR: channel broke"),
        ([], "not run"),
        ([rec("CFG-001", "SKIP", bdf=EDU, skip_kind="lab", reason="no QMP")],
         "SKIP for a reason test-cert does not allow (lab): no QMP"),
        ([rec("CFG-001", "SKIP", bdf=EDU, skip_kind="unclassified", reason="?")],
         "(unclassified)"),
    ],
)  # fmt: skip
def test_a_check_that_did_not_run_leaves_the_device_incomplete(new: list, note: str) -> None:
    cert = certify(document(_replace(passing(), "CFG-001", EDU, new)), profile())
    assert _device(cert, EDU).verdict == INCOMPLETE
    assert _device(cert, NVME).verdict == CERTIFIED
    assert cert.verdict == INCOMPLETE
    assert note in _outcome(cert, EDU, "CFG-001").note
    assert _device(cert, EDU).reasons[0].startswith(f"CFG-001 incomplete on vdut0/{EDU}: ")


def test_a_fail_outweighs_an_incomplete() -> None:
    records = _replace(passing(), "CFG-001", EDU, [])
    records = _replace(records, "PLAT-001", None, [rec("PLAT-001", "FAIL")])
    dev = _device(certify(document(records), profile()), EDU)
    assert dev.verdict == NOT_CERTIFIED
    assert [r.split()[0] for r in dev.reasons] == ["PLAT-001", "CFG-001"]


def test_variant_skips_are_judged_by_the_variant_kinds() -> None:
    # The iommufd variant SKIPs for a kind only a sole SKIP may not have: still proven.
    ok = certify(document(passing()), profile(variant_may_skip=["backend"]))
    assert _outcome(ok, EDU, "ISO-001").outcome == "pass"
    # Without 'backend' among the variant kinds, the iommufd SKIP is not allowed.
    strict = certify(document(passing()), profile(variant_may_skip=[]))
    assert _outcome(strict, EDU, "ISO-001").outcome == "incomplete"
    assert "(backend)" in _outcome(strict, EDU, "ISO-001").note
    # Every variant SKIPped for 'backend' does not prove the check.
    records = _replace(passing(), "ISO-001", EDU, [
        rec("ISO-001", "SKIP", bdf=EDU, backend="type1v2", skip_kind="backend"),
        rec("ISO-001", "SKIP", bdf=EDU, backend="iommufd", skip_kind="backend")])  # fmt: skip
    assert _outcome(certify(document(records), profile()), EDU, "ISO-001").outcome == "incomplete"


def test_a_variant_that_skips_for_what_the_device_lacks_decides_the_check() -> None:
    """A device without a DMA engine SKIPs ISO-001 under type1v2 (capability); the iommufd
    variant the kernel does not offer (backend) adds nothing to find: the check SKIPs,
    allowed. Had no variant reached the device, the check would be unproven."""
    capability = rec(
        "ISO-001",
        "SKIP",
        bdf=EDU,
        backend="type1v2",
        skip_kind="capability",
        reason="no DMA engine",
    )
    backend = rec("ISO-001", "SKIP", bdf=EDU, backend="iommufd", skip_kind="backend")
    records = _replace(passing(), "ISO-001", EDU, [backend, capability])
    cert = certify(document(records), profile())
    outcome = _outcome(cert, EDU, "ISO-001")
    assert (outcome.outcome, outcome.note) == ("skip", "[type1v2] no DMA engine")
    assert _device(cert, EDU).verdict == CERTIFIED
    # A capability SKIP the profile does not allow for the check still leaves it unproven.
    strict = profile(checks={**profile().checks, "ISO-001": {"require": "must", "may_skip": []}})
    assert _outcome(certify(document(records), strict), EDU, "ISO-001").outcome == "incomplete"


def test_a_reported_figure_missing_leaves_the_device_incomplete() -> None:
    records = _replace(passing(), "PERF-001", NVME, [rec("PERF-001", bdf=NVME, figures=IOPS[1:])])
    cert = certify(document(records), profile())
    assert _outcome(cert, NVME, "PERF-001").outcome == "incomplete"
    assert _outcome(cert, NVME, "PERF-001").note == "no figure matching *.iops"


def test_a_profile_check_the_run_does_not_know_is_incomplete() -> None:
    checks = {**profile().checks, "ISO-009": {"require": "must"}}
    cert = certify(document(passing()), profile(checks=checks))
    assert cert.verdict == INCOMPLETE
    assert "not in the run's catalogue" in _outcome(cert, EDU, "ISO-009").note


def test_a_run_without_a_plan_is_refused() -> None:
    with pytest.raises(CertError, match="no check plan"):
        certify(document(passing(), plan=None), profile())


def test_a_run_without_devices_is_incomplete() -> None:
    cert = certify(document(passing(), plan={**PLAN, "devices": []}), profile())
    assert cert.verdict == INCOMPLETE
    assert cert.devices == []


def test_the_verdict_is_the_same_whatever_the_record_order() -> None:
    records = passing()
    a = certify(document(records), profile()).to_dict()
    b = certify(document(list(reversed(records))), profile()).to_dict()
    assert a == b


def test_the_scope_limits_the_devices_to_the_hosts_asked_for() -> None:
    doc = document(passing())
    assert certify(doc, profile()).scope == ["vdut0"]
    assert len(certify(doc, profile(), hosts=["vdut0"]).devices) == 2
    with pytest.raises(CertError, match=r"has no host vdut9 \(its hosts: vdut0\)"):
        certify(doc, profile(), hosts=["vdut9"])


def test_vfio_cert_1_over_the_default_labs_plan() -> None:
    """The shipped profile, the default virtual lab's real plan: every applicable check
    PASSing, with every figure the profile reports, is CERTIFIED; one MUST check SKIPped
    because the lab lacked something is INCOMPLETE."""
    from vfio_hil.cert.profile import load_profile
    from vfio_hil.lab.inventory import DEFAULT_INVENTORY, load_inventory
    from vfio_hil.lab.report import check_plan
    from vfio_hil_pytest.catalogue import load_catalogue

    plan = check_plan(load_inventory(DEFAULT_INVENTORY), load_catalogue())
    cert_1 = load_profile("vfio-cert-1")
    figures = [
        {"name": p.replace("*", "x"), "value": 1.0, "unit": "u",
         "higher_is_better": True}
        for rule in cert_1.checks.values() for p in rule.figures
    ]  # fmt: skip
    records = []
    for host in {d["host"] for d in plan["devices"]}:
        records += [rec(c, host=host) for c in plan["host_checks"]]
    for d in plan["devices"]:
        for c in d["checks"]:
            r = rec(c, bdf=None, host=d["host"], figures=figures if c.startswith("PERF") else ())
            r["device"] = {"bdf": d["bdf"], "model": d["model"]}
            records.append(r)
    cert = certify(document(records, plan), cert_1)
    assert cert.verdict == CERTIFIED, [d.reasons for d in cert.devices]
    assert len(cert.devices) == len(plan["devices"])
    usr = next(r for r in records if r["check_id"] == "USR-003")
    usr.update(verdict="SKIP", skip_kind="lab", reason="no second VFIO group on vdut0 to try")
    cert = certify(document(records, plan), cert_1)
    assert cert.verdict == INCOMPLETE
    assert all(d.reasons == [f"USR-003 incomplete on {d.host}/{d.bdf}: SKIP for a reason "
                             "vfio-cert-1 does not allow (lab): no second VFIO group on vdut0 "
                             "to try"] for d in cert.devices)  # fmt: skip


def test_the_note_of_a_check_no_variant_ran_names_what_the_lab_lacked() -> None:
    records = _replace(passing(), "ISO-001", EDU, [
        rec("ISO-001", "SKIP", bdf=EDU, backend="iommufd", skip_kind="backend"),
        rec("ISO-001", "SKIP", bdf=EDU, backend="type1v2", skip_kind="lab",
            reason="no second DMA-capable device")])  # fmt: skip
    outcome = _outcome(certify(document(records), profile()), EDU, "ISO-001")
    assert outcome.outcome == "incomplete"
    assert outcome.note.endswith("(lab): [type1v2] no second DMA-capable device")
