"""The kernel option table and the PLAT judgements drawn from what a DUT measured, on the
kernel log lines and registers the rack's kernels really print (Debian 6.1 under QEMU 7.2's
intel-iommu and amd-iommu, 2026-11-26)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfio_hil.dut.iommu_state import DeviceIrqChips, IommuState, IommuUnit, VfioDomain, log_topics
from vfio_hil.lab import iommu_options as opts

INTEL_LOG = [
    "Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)",
    "[    0.337792] DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap d2008c22260286 ecap f00f4a",
    "[    0.345890] DMAR-IR: Enabled IRQ remapping in xapic mode",
    "[    1.795129] iommu: Default domain type: Passthrough (set via kernel command line)",
    "[    2.122759] DMAR: IOMMU batching disallowed due to virtualization",
]
AMD_LOG = [
    "Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)",
    "[    1.544334] iommu: Default domain type: Passthrough (set via kernel command line)",
    "[    1.731303] AMD-Vi: Using strict mode due to virtualization",
    "[    1.745861] AMD-Vi: Extended features (0x29d3, 0x0): PreF PPR GT IA GA HE",
    "[    1.745976] AMD-Vi: Interrupt remapping enabled",
]
CFI_WARNING = (
    "[    0.4] Compatibility-format IRQs enabled despite intr remapping;"
    " you are vulnerable to IRQ injection."
)
INTEL_CAP, INTEL_ECAP = 0xD2008C22260286, 0xF00F4A  # QEMU 7.2 intel-iommu: no PI, no EIM
AMD_EFR = 0x29D3  # QEMU 7.2 amd-iommu: GA but no GAM vAPIC


def intel(cmdline: str = "intel_iommu=on", log: list[str] | None = None, cap: int = INTEL_CAP):
    return IommuState(
        cmdline,
        [IommuUnit("dmar0", {"cap": cap, "ecap": INTEL_ECAP})],
        log_topics(INTEL_LOG if log is None else log),
        True,
    )


def amd(cmdline: str = "", log: list[str] | None = None, efr: int = AMD_EFR) -> IommuState:
    return IommuState(
        cmdline,
        [IommuUnit("ivhd0", {"efr": efr})],
        log_topics(AMD_LOG if log is None else log),
        True,
    )


# -- the command line -----------------------------------------------------------------------


def test_kernel_options_split_lists_and_normalise_module_parameters() -> None:
    cmdline = (
        "console=ttyS0 quiet intel_iommu=on,sm_on iommu=pt intremap=nosid,nopost "
        "vfio-iommu-type1.allow-unsafe-interrupts=Y iommu.strict=off "
        "pci=noats,disable_acs_redir=0000:00:1c.0 pcie_acs_override=downstream,multifunction "
        "vfio_pci.ids=1b36:0010 nox2apic"
    )
    assert opts.kernel_options(cmdline) == [
        ("intel_iommu", "on"),
        ("intel_iommu", "sm_on"),
        ("iommu", "pt"),
        ("intremap", "nosid"),
        ("intremap", "nopost"),
        ("vfio_iommu_type1.allow_unsafe_interrupts", "1"),
        ("iommu.strict", "0"),
        ("pci", "disable_acs_redir"),
        ("pcie_acs_override", "downstream,multifunction"),
        ("vfio_pci.ids", "1b36:0010"),
        ("nox2apic", None),
    ]


@pytest.mark.parametrize(
    ("cmdline", "kind", "effect", "check"),
    [
        ("iommu=pt", "intel", opts.KEEPS, None),
        ("iommu.passthrough=1", "amd", opts.KEEPS, None),
        ("iommu.strict=0", "intel", opts.KEEPS, None),
        ("intremap=nosid", "intel", opts.WEAKENS, "PLAT-007"),
        ("intremap=nosid", "amd", opts.IRRELEVANT, None),
        ("intremap=off", "amd", opts.BREAKS, "PLAT-002"),
        ("intel_iommu=off", "intel", opts.BREAKS, "PLAT-001"),
        ("intel_iommu=off", "amd", opts.IRRELEVANT, None),
        ("amd_iommu_intr=legacy", "amd", opts.KEEPS, None),
        ("vfio_iommu_type1.allow_unsafe_interrupts=1", "intel", opts.WEAKENS, "PLAT-003"),
        ("vfio.enable_unsafe_noiommu_mode=1", "intel", opts.BREAKS, "PLAT-003"),
        ("vfio_iommu_type1.allow_unsafe_interrupts=0", "intel", opts.KEEPS, None),
        ("pcie_acs_override=downstream", "intel", opts.WEAKENS, "PLAT-004"),
        ("intel_iommu=sm_on", "intel", opts.KEEPS, None),
        ("intremap=bogus", "intel", "unclassified", None),
    ],
)
def test_classify(cmdline: str, kind: str, effect: str, check: str | None) -> None:
    (finding,) = opts.classify(cmdline, kind)
    assert finding.effect == effect
    assert (finding.rule.check if finding.rule else None) == check
    assert finding.to_dict()["option"] == cmdline


def test_every_rule_is_classified_and_unsafe_ones_name_their_check() -> None:
    for rule in opts.OPTIONS:
        assert rule.effect in opts.EFFECTS, rule
        assert rule.why, rule
        assert (rule.check is not None) == (rule.effect in (opts.WEAKENS, opts.BREAKS)), rule


# -- interrupt isolation --------------------------------------------------------------------


def test_intel_remapping_with_source_ids_verified_isolates() -> None:
    isolation = opts.interrupt_isolation(intel(), "intel")
    assert isolation.weakens == []
    assert isolation.mode == "xapic"
    assert isolation.source_validation.startswith("on")
    assert isolation.compatibility_format == "blocked"
    assert isolation.units == {"dmar0": {"interrupt_remapping": True, "x2apic_capable": False}}


def test_nosid_weakens_intel_remapping_and_is_named() -> None:
    isolation = opts.interrupt_isolation(intel("intel_iommu=on intremap=nosid,nopost"), "intel")
    assert isolation.source_validation == "off (intremap=nosid)"
    assert len(isolation.weakens) == 1
    assert isolation.weakens[0].startswith("intremap=nosid: source-id verification off")


def test_compatibility_format_interrupts_weaken_remapping() -> None:
    isolation = opts.interrupt_isolation(intel(log=[*INTEL_LOG, CFI_WARNING]), "intel")
    assert isolation.compatibility_format == "ENABLED"
    assert any("bypass remapping" in w for w in isolation.weakens)


def test_nosid_is_not_read_on_amd() -> None:
    isolation = opts.interrupt_isolation(amd("iommu.passthrough=1 intremap=nosid"), "amd")
    assert isolation.weakens == []
    assert isolation.mode == "xapic"
    assert "per-device" in isolation.source_validation


def test_x2apic_mode_is_reported() -> None:
    log = [line.replace("xapic mode", "x2apic mode") for line in INTEL_LOG]
    assert opts.interrupt_isolation(intel(log=log), "intel").mode == "x2apic"
    amd_log = [*AMD_LOG, "[    1.8] AMD-Vi: X2APIC enabled"]
    assert opts.interrupt_isolation(amd(log=amd_log), "amd").mode == "x2apic"


# -- interrupt posting ----------------------------------------------------------------------


def test_intel_posting_follows_cap_pi_and_nopost() -> None:
    pi = INTEL_CAP | 1 << opts.INTEL_CAP_PI
    absent = opts.interrupt_posting(intel(), "intel", remapping=True)
    assert (absent.offered, absent.used) == (False, False)
    assert "CAP.PI is clear on dmar0" in absent.why
    used = opts.interrupt_posting(intel(cap=pi), "intel", remapping=True)
    assert (used.offered, used.used) == (True, True)
    off = opts.interrupt_posting(intel("intremap=nopost", cap=pi), "intel", remapping=True)
    assert (off.offered, off.used, off.why) == (True, False, "intremap=nopost turns it off")
    no_ir = opts.interrupt_posting(intel(cap=pi), "intel", remapping=False)
    assert (no_ir.offered, no_ir.used) == (True, False)


def test_amd_posting_needs_ga_with_vapic() -> None:
    qemu = opts.interrupt_posting(amd(), "amd", remapping=True)
    assert (qemu.offered, qemu.used) == (False, False)
    vapic = AMD_EFR | 1 << opts.AMD_EFR_GAM_VAPIC
    log = [*AMD_LOG, "[    1.9] AMD-Vi: Virtual APIC enabled"]
    assert opts.interrupt_posting(amd(log=log, efr=vapic), "amd", True).used is True
    legacy = opts.interrupt_posting(amd("amd_iommu_intr=legacy", efr=vapic), "amd", True)
    assert (legacy.offered, legacy.used) == (True, False)
    assert "legacy" in legacy.why


# -- host default domains and VFIO's own ------------------------------------------------------


def test_identity_defaults_are_noted_with_the_kernels_reason() -> None:
    state = intel("intel_iommu=on iommu=pt")
    findings = opts.classify(state.cmdline, "intel")
    (note,) = opts.host_default_notes({"identity": 5}, state, findings)
    assert note.startswith("5 group(s): host drivers' DMA is not translated")
    assert "Passthrough (set via kernel command line)" in note
    assert note.endswith("command line: iommu=pt)")
    assert opts.host_default_notes({"DMA": 5}, state, findings) == []


def test_lazy_defaults_are_noted() -> None:
    log = ["iommu: DMA domain TLB invalidation policy: lazy mode"]
    (note,) = opts.host_default_notes({"DMA-FQ": 2}, intel(log=log), [])
    assert "lazily" in note and "lazy mode" in note


def _domain(**kw: object) -> VfioDomain:
    base = {"bdf": "0000:00:06.0", "group": 3, "host_default": "identity"}
    return VfioDomain(**{**base, **kw})  # type: ignore[arg-type]


def test_a_mapped_vfio_domain_translates_whatever_the_host_default() -> None:
    domain = _domain(
        backend="type1v2",
        attached=True,
        mapped=True,
        page_sizes=0x40201000,
        iova_ranges=[(0, 0xFEDFFFFF)],
    )
    assert opts.domain_problem(domain) is None
    assert opts.domain_refusal(domain) is None
    assert opts.describe_domain(domain) == (
        "0000:00:06.0: group 3 in a type1v2 paging domain, pages from 4 KiB, 1 IOVA range(s), "
        "a page mapped and unmapped"
    )


def test_what_keeps_vfio_from_translating() -> None:
    assert "no IOMMU group" in opts.domain_problem(_domain(group=None))
    unmapped = _domain(backend="type1v2", attached=True, mapped=False)
    assert "took no mapping" in opts.domain_problem(unmapped)
    noiommu = _domain(refusal={"noiommu": True, "message": "group 3 is a no-IOMMU group"})
    assert "no-IOMMU" in opts.domain_problem(noiommu)
    assert opts.domain_refusal(noiommu) is None


def test_an_attach_refused_for_remapping_is_not_a_translation_problem() -> None:
    refused = _domain(refusal={"ioctl": "VFIO_SET_IOMMU", "errno": 1, "message": "[Errno 1] EPERM"})
    assert opts.domain_problem(refused) is None
    assert opts.domain_refusal(refused) == "VFIO_SET_IOMMU refused group 3 ([Errno 1] EPERM)"


def test_remapping_without_dma_remapping_is_judged_by_its_vendor() -> None:
    """intel_iommu=off registers no unit, but interrupt remapping stays on."""
    state = intel("intel_iommu=off intremap=nosid")
    state.units = []
    isolation = opts.interrupt_isolation(state, "none")
    assert isolation.kind == "intel" and isolation.mode == "xapic"
    assert isolation.weakens and isolation.weakens[0].startswith("intremap=nosid")


def test_vectors_outside_remapping_are_named() -> None:
    remapped = DeviceIrqChips("0000:00:06.0", "msix", {"vfio-msix[0](0000:00:06.0)": "IR-PCI-MSIX"})
    bypass = DeviceIrqChips("0000:00:04.0", "msi", {"vfio-msi[0](0000:00:04.0)": "PCI-MSI"})
    missing = DeviceIrqChips("0000:00:07.0", "msix", {})
    none = DeviceIrqChips("0000:00:08.0", None)
    assert opts.vectors_not_remapped([remapped, none]) == []
    assert opts.vectors_not_remapped([bypass, missing]) == [
        "vfio-msi[0](0000:00:04.0) is delivered through PCI-MSI, not through interrupt remapping",
        "0000:00:07.0: no msix vector in /proc/interrupts",
    ]


# -- the documented table ---------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[3] / "docs" / "iommu-options.md"


def _doc_rows() -> dict[str, str]:
    """``option -> class cell`` of every kernel-option row of docs/iommu-options.md (the
    sections before QEMU's devices)."""
    text = DOC.read_text().split("## QEMU's IOMMU devices")[0]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_the_documented_table_and_the_data_agree() -> None:
    rows = _doc_rows()
    for rule in opts.OPTIONS:
        assert rule.option in rows, f"{rule.option} is not in {DOC.name}"
        assert rule.effect in rows[rule.option], (rule.option, rule.effect, rows[rule.option])
    documented = {r.option for r in opts.OPTIONS}
    assert set(rows) <= documented, set(rows) - documented
