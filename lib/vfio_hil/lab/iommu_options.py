"""The kernel's IOMMU and interrupt-remapping options, classified by what they do to VFIO's
guarantees, and the judgements the PLAT checks draw from what a DUT measured.

The table (:data:`OPTIONS`) is the data behind ``docs/iommu-options.md``: a unit test keeps
the two in step. Each option is one of

- ``keeps``: VFIO's guarantees hold; no check may FAIL because of it (``iommu=pt`` among
  them: host drivers get identity domains, but VFIO attaches a group to a paging domain of
  its own);
- ``weakens``: a protection is reduced while the feature stays on; ``check`` FAILs naming
  the option;
- ``breaks``: the guarantee is gone; ``check`` FAILs;
- ``irrelevant``: no bearing on VFIO's guarantees (or not read on that IOMMU).

Verdicts are drawn from what VFIO gets (:class:`~vfio_hil.dut.iommu_state.VfioDomain`) and
from the live interrupt-remapping state (:class:`~vfio_hil.dut.iommu_state.IommuState`),
never from the defaults the kernel gives host drivers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vfio_hil.dut.iommu_state import DeviceIrqChips, IommuState, VfioDomain

KEEPS, WEAKENS, BREAKS, IRRELEVANT = "keeps", "weakens", "breaks", "irrelevant"
EFFECTS = (KEEPS, WEAKENS, BREAKS, IRRELEVANT)
TRUE_VALUES = ("y", "1", "on", "true", "yes")
FALSE_VALUES = ("n", "0", "off", "false", "no")
#: Parameters whose value is a comma-separated list of switches.
LIST_PARAMS = ("iommu", "intel_iommu", "amd_iommu", "intremap", "pci")
#: The ``pci=`` switches that bear on isolation (the others are not looked at).
PCI_ACS_SWITCHES = ("disable_acs_redir", "config_acs")
#: Parameter names (or ``prefix.`` for a module's) the suite looks at on a command line.
RELATED = (
    "iommu",
    "iommu.",
    "intel_iommu",
    "amd_iommu",
    "amd_iommu_intr",
    "intremap",
    "nointremap",
    "nox2apic",
    "x2apic_phys",
    "vfio.",
    "vfio_iommu_type1.",
    "vfio_pci.",
    "iommufd.",
    "pcie_acs_override",
    "pci",
)

# Register bits (Intel VT-d spec 11.4.2-11.4.3; AMD IOMMU spec 3.4.12, Extended Feature
# Register), as drivers/iommu/intel/iommu.h and drivers/iommu/amd/amd_iommu_types.h name them.
INTEL_CAP_PI = 59
INTEL_ECAP_IR = 3
INTEL_ECAP_EIM = 4
AMD_EFR_XT = 2
AMD_EFR_GA = 7
AMD_EFR_GAM_VAPIC = 21


@dataclass(frozen=True)
class OptionRule:
    """One option and its effect on VFIO. ``value`` is the switch of a list parameter or the
    value of a plain one (booleans as ``1``/``0``); None matches any value. ``vendor`` is the
    IOMMU kind whose driver reads it (None: every kind)."""

    name: str
    value: str | None
    effect: str
    why: str
    check: str | None = None
    vendor: str | None = None

    @property
    def option(self) -> str:
        """The option as written on a command line."""
        return self.name if self.value is None else f"{self.name}={self.value}"


def _rule(
    option: str, effect: str, why: str, check: str | None = None, vendor: str | None = None
) -> OptionRule:
    name, sep, value = option.partition("=")
    return OptionRule(name, value if sep else None, effect, why, check, vendor)


#: Harmless until a denied device is bound: PLAT-003 judges it by the kernel's log line.
DENYLIST_OPTION = "vfio_pci.disable_denylist=1"
UNSAFE_INTERRUPTS = "MSIs are not isolated, so a device can forge interrupts into the host"

OPTIONS: tuple[OptionRule, ...] = (
    # -- generic IOMMU (drivers/iommu/iommu.c, arch/x86/kernel/pci-dma.c) ----------------
    _rule(
        "iommu=pt",
        KEEPS,
        "host drivers get identity domains; VFIO attaches its own paging "
        "domain (vfio_iommu_type1_attach_group, iommufd_hwpt_paging_alloc)",
    ),
    _rule("iommu=nopt", KEEPS, "host drivers get translated domains (the default)"),
    _rule("iommu.passthrough=1", KEEPS, "as iommu=pt"),
    _rule("iommu.passthrough=0", KEEPS, "host drivers get translated domains"),
    _rule(
        "iommu.strict=0",
        KEEPS,
        "lazy IOTLB flushing (DMA-FQ) applies to host DMA-API "
        "domains only; VFIO's domains unmap synchronously (iommu_iotlb_sync)",
    ),
    _rule("iommu.strict=1", KEEPS, "strict flushing for host domains too"),
    _rule(
        "iommu=off",
        BREAKS,
        "x86 sets no_iommu: the Intel driver stays off, no IOMMU "
        "groups, VFIO cannot isolate any device",
        "PLAT-001",
    ),
    _rule(
        "iommu=soft",
        IRRELEVANT,
        "bounce buffers for host DMA without an IOMMU driver; the IOMMU driver still initialises",
    ),
    _rule("iommu.forcedac=1", KEEPS, "host DMA-API IOVA allocation policy only"),
    # -- Intel VT-d (drivers/iommu/intel/iommu.c) ------------------------------------------
    _rule("intel_iommu=on", KEEPS, "DMA remapping on", vendor="intel"),
    _rule(
        "intel_iommu=off",
        BREAKS,
        "DMA remapping off: no IOMMU groups, nothing confines a device's DMA",
        "PLAT-001",
        "intel",
    ),
    _rule(
        "intel_iommu=igfx_off",
        BREAKS,
        "the integrated graphics' unit is left off: that "
        "device is in no IOMMU group (others keep theirs)",
        "PLAT-001",
        "intel",
    ),
    _rule("intel_iommu=forcedac", KEEPS, "host DMA-API IOVA policy only", vendor="intel"),
    _rule("intel_iommu=strict", KEEPS, "deprecated spelling of iommu.strict=1", vendor="intel"),
    _rule(
        "intel_iommu=sp_off",
        KEEPS,
        "no superpages: more IOTLB misses, same isolation",
        vendor="intel",
    ),
    _rule("intel_iommu=sm_on", KEEPS, "scalable-mode tables; same isolation", vendor="intel"),
    _rule("intel_iommu=sm_off", KEEPS, "legacy-mode tables; same isolation", vendor="intel"),
    _rule("intel_iommu=tboot_noforce", IRRELEVANT, "only matters under tboot", vendor="intel"),
    # -- AMD-Vi (drivers/iommu/amd/init.c) -------------------------------------------------
    _rule(
        "amd_iommu=off", BREAKS, "the AMD IOMMU is not initialised: no groups", "PLAT-001", "amd"
    ),
    _rule(
        "amd_iommu=force_isolation",
        KEEPS,
        "every host device gets its own domain too",
        vendor="amd",
    ),
    _rule("amd_iommu=fullflush", KEEPS, "deprecated spelling of iommu.strict=1", vendor="amd"),
    _rule(
        "amd_iommu=force_enable", KEEPS, "enables the IOMMU despite firmware quirks", vendor="amd"
    ),
    _rule("amd_iommu=pgtbl_v1", KEEPS, "v1 host page tables (the default)", vendor="amd"),
    _rule(
        "amd_iommu=pgtbl_v2", KEEPS, "v2 (x86-format) page tables for DMA-API domains", vendor="amd"
    ),
    _rule("amd_iommu=irtcachedis", KEEPS, "no IRT caching: slower, same isolation", vendor="amd"),
    _rule("amd_iommu=nohugepages", KEEPS, "4 KiB IOMMU pages only", vendor="amd"),
    _rule(
        "amd_iommu_intr=legacy",
        KEEPS,
        "32-bit IRTEs, no guest virtual APIC (posting) mode; remapping still per device",
        vendor="amd",
    ),
    _rule(
        "amd_iommu_intr=vapic",
        KEEPS,
        "guest virtual APIC (posting) mode where the IOMMU offers it",
        vendor="amd",
    ),
    # -- interrupt remapping (drivers/iommu/irq_remapping.c, intel/irq_remapping.c) ---------
    _rule(
        "intremap=off",
        BREAKS,
        "no interrupt remapping: a device can write any MSI "
        "message; type1 refuses to attach (EPERM) unless unsafe interrupts are allowed",
        "PLAT-002",
    ),
    _rule("nointremap", BREAKS, "older spelling of intremap=off", "PLAT-002"),
    _rule("intremap=on", KEEPS, "remapping on (the default)"),
    _rule(
        "intremap=nosid",
        WEAKENS,
        "source-id verification off in every IRTE "
        "(set_irte_sid): any device can raise an interrupt remapped for another device",
        "PLAT-007",
        "intel",
    ),
    _rule(
        "intremap=nosid",
        IRRELEVANT,
        "only the Intel driver reads it; AMD's remapping "
        "tables are per device, so the source is inherent",
        vendor="amd",
    ),
    _rule(
        "intremap=no_x2apic_optout",
        KEEPS,
        "ignores the firmware's x2APIC opt-out; remapping unchanged",
        vendor="intel",
    ),
    _rule("intremap=nopost", KEEPS, "no interrupt posting; remapping unchanged"),
    _rule(
        "intremap=posted_msi",
        KEEPS,
        "host MSIs posted through the IOMMU (6.10+); remapping unchanged",
        vendor="intel",
    ),
    _rule("nox2apic", KEEPS, "remapping in xAPIC mode (8-bit destinations); same isolation"),
    _rule("x2apic_phys", KEEPS, "x2APIC physical destination mode; same isolation"),
    # -- VFIO (drivers/vfio/) ---------------------------------------------------------------
    _rule(
        "vfio_iommu_type1.allow_unsafe_interrupts=1",
        WEAKENS,
        "type1 attaches groups "
        "whose MSIs are not isolated instead of refusing (EPERM): " + UNSAFE_INTERRUPTS,
        "PLAT-003",
    ),
    _rule(
        "iommufd.allow_unsafe_interrupts=1",
        WEAKENS,
        "iommufd attaches devices whose MSIs are not isolated: " + UNSAFE_INTERRUPTS,
        "PLAT-003",
    ),
    _rule(
        "vfio.enable_unsafe_noiommu_mode=1",
        BREAKS,
        "VFIO hands devices to userspace "
        "with no IOMMU at all (needs CONFIG_VFIO_NOIOMMU; no Debian kernel has it)",
        "PLAT-003",
    ),
    _rule(
        "vfio_iommu_type1.allow_unsafe_interrupts=0",
        KEEPS,
        "the default: type1 refuses groups whose MSIs are not isolated (EPERM)",
    ),
    _rule("iommufd.allow_unsafe_interrupts=0", KEEPS, "the default: iommufd refuses them"),
    _rule("vfio.enable_unsafe_noiommu_mode=0", KEEPS, "the default: no no-IOMMU mode"),
    _rule("vfio_iommu_type1.disable_hugepages=1", KEEPS, "4 KiB IOMMU pages only"),
    _rule("vfio_iommu_type1.dma_entry_limit", KEEPS, "caps the mappings per container"),
    _rule("vfio_pci.ids", IRRELEVANT, "which devices vfio-pci claims at boot"),
    _rule(
        "vfio_pci.nointxmask=1",
        KEEPS,
        "INTx lines not masked through PCI 2.3 masking: vfio-pci then needs the line exclusively",
    ),
    _rule("vfio_pci.disable_vga=1", IRRELEVANT, "no VGA region"),
    _rule("vfio_pci.disable_idle_d3=1", IRRELEVANT, "power state of idle devices"),
    _rule(
        "vfio_pci.enable_sriov=1",
        KEEPS,
        "a userspace PF driver may create VFs; a VF token guards their use",
    ),
    _rule(
        DENYLIST_OPTION,
        WEAKENS,
        "vfio-pci may bind the devices it denies for known errata that untrusted users can "
        "exploit (Intel QAT: DMA to unmapped addresses can hang the platform); judged where "
        "the kernel logs that it let such a device through",
        "PLAT-003",
    ),
    # -- PCI ACS (drivers/pci/pci.c, drivers/iommu/iommu.c pci_device_group) ---------------
    _rule(
        "pci=disable_acs_redir",
        KEEPS,
        "P2P redirect off on the named bridges; the "
        "kernel's grouping follows and puts their devices in one group",
    ),
    _rule(
        "pci=config_acs",
        KEEPS,
        "ACS controls set at boot; the grouping reads the resulting controls",
    ),
    _rule(
        "pcie_acs_override",
        WEAKENS,
        "out-of-tree patch: the kernel pretends ACS where the "
        "hardware has none, so groups are split though their devices can reach each "
        "other peer to peer (takes effect where its log line says so)",
        "PLAT-004",
    ),
)


def kernel_options(cmdline: str) -> list[tuple[str, str | None]]:
    """The ``(name, value)`` pairs of a kernel command line that :data:`RELATED` covers; a
    list parameter gives one pair per switch. Module parameter names treat ``-`` and ``_``
    alike (as the kernel does) and boolean values become ``1``/``0``."""
    pairs: list[tuple[str, str | None]] = []
    for token in cmdline.split():
        name, sep, value = token.partition("=")
        if "." in name:
            module, _, param = name.partition(".")
            name = f"{module.replace('-', '_')}.{param.replace('-', '_')}"
        if not any(name == r or (r.endswith(".") and name.startswith(r)) for r in RELATED):
            continue
        if not sep:
            pairs.append((name, None))
        elif name in LIST_PARAMS:
            # A switch may carry its own argument (pci=disable_acs_redir=0000:00:1c.0).
            switches = [item.partition("=")[0] for item in value.split(",") if item]
            if name == "pci":
                switches = [s for s in switches if s in PCI_ACS_SWITCHES]
            pairs.extend((name, switch) for switch in switches)
        elif "." in name and value.lower() in TRUE_VALUES + FALSE_VALUES:
            pairs.append((name, "1" if value.lower() in TRUE_VALUES else "0"))
        else:
            pairs.append((name, value))
    return pairs


@dataclass(frozen=True)
class OptionFinding:
    """An option found on a command line and the rule that classifies it on this IOMMU
    (``rule`` None: not in the table)."""

    option: str
    rule: OptionRule | None

    @property
    def effect(self) -> str:
        """The rule's effect, ``unclassified`` when there is none."""
        return self.rule.effect if self.rule else "unclassified"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for evidence."""
        r = self.rule
        return {
            "option": self.option,
            "effect": self.effect,
            "why": r.why if r else "not in the suite's option table",
            "check": r.check if r else None,
        }


def _matches(rule: OptionRule, name: str, value: str | None, kind: str) -> bool:
    if rule.name != name or (rule.vendor is not None and rule.vendor != kind):
        return False
    return rule.value is None or rule.value == value


def classify(cmdline: str, kind: str) -> list[OptionFinding]:
    """Every IOMMU-related option of ``cmdline`` and its rule on an IOMMU of ``kind``
    (``intel``, ``amd``, ...). A vendor's option on another vendor's IOMMU with no rule of
    its own is irrelevant there: no driver reads it."""
    findings = []
    for name, value in kernel_options(cmdline):
        option = name if value is None else f"{name}={value}"
        rule = next((r for r in OPTIONS if _matches(r, name, value, kind)), None)
        if rule is None and any(
            r.name == name and r.value in (None, value) and r.vendor not in (None, kind)
            for r in OPTIONS
        ):
            rule = OptionRule(name, value, IRRELEVANT, f"not read on an {kind} IOMMU")
        findings.append(OptionFinding(option, rule))
    return findings


def effective_options(findings: list[OptionFinding], check: str) -> list[OptionFinding]:
    """The findings that weaken or break what ``check`` covers."""
    return [
        f for f in findings if f.rule and f.rule.check == check and f.effect in (WEAKENS, BREAKS)
    ]


# -- what VFIO's domains give ---------------------------------------------------------------


def domain_problem(domain: VfioDomain) -> str | None:
    """Why ``domain`` does not confine the device's DMA, or None when it does (or when VFIO
    refused the group for another reason: see :func:`domain_refusal`)."""
    if domain.group is None:
        return f"{domain.bdf} is in no IOMMU group"
    if domain.attached and not domain.mapped:
        return f"VFIO's {domain.backend} domain for group {domain.group} took no mapping"
    if domain.refusal and domain.refusal.get("noiommu"):
        return f"group {domain.group} is a no-IOMMU group: {domain.refusal['message']}"
    return None


def domain_refusal(domain: VfioDomain) -> str | None:
    """The kernel's refusal to attach the group, in words, or None."""
    r = domain.refusal
    if not r or r.get("noiommu"):
        return None
    return f"{r.get('ioctl')} refused group {domain.group} ({r.get('message')})"


def describe_domain(domain: VfioDomain) -> str:
    """One line on the domain VFIO got."""
    if not domain.attached:
        return f"{domain.bdf}: no VFIO domain ({domain_refusal(domain) or domain_problem(domain)})"
    sizes = ""
    if domain.page_sizes:
        smallest = domain.page_sizes & -domain.page_sizes
        sizes = f", pages from {smallest // 1024} KiB"
    return (
        f"{domain.bdf}: group {domain.group} in a {domain.backend} paging domain{sizes}, "
        f"{len(domain.iova_ranges)} IOVA range(s), a page mapped and unmapped"
    )


# -- host default domains -------------------------------------------------------------------

#: What each default domain type leaves host drivers, when it is weaker than VFIO's own, and
#: the kernel log topic that says why.
WEAKER_DEFAULTS = {
    "identity": (
        "host drivers' DMA is not translated (identity domain): a device on a host driver "
        "can reach all memory",
        "default_domain",
    ),
    "DMA-FQ": (
        "host drivers' domains flush the IOTLB lazily (DMA-FQ): a device may still reach a "
        "freed DMA buffer for a few milliseconds",
        "tlb_policy",
    ),
}


def host_default_notes(
    default_domain_types: dict[str, int], state: IommuState, findings: list[OptionFinding]
) -> list[str]:
    """Where the host's default domains are weaker than VFIO's own: one note each, with the
    kernel's own words on why (its log line) and the command-line options behind it."""
    notes = []
    options = ", ".join(
        f.option for f in findings if f.option.startswith(("iommu=", "iommu.", "amd_iommu=full"))
    )
    for kind, count in sorted(default_domain_types.items()):
        if kind not in WEAKER_DEFAULTS:
            continue
        weaker, topic = WEAKER_DEFAULTS[kind]
        reasons = [line.split("] ", 1)[-1].strip() for line in state.log.get(topic, [])]
        why = "; ".join(reasons) or "kernel default"
        if options:
            why += f"; command line: {options}"
        notes.append(f"{count} group(s): {weaker} ({why})")
    return notes


# -- interrupt isolation --------------------------------------------------------------------


@dataclass
class InterruptIsolation:
    """How interrupt remapping isolates devices' interrupts on this host: its ``mode``
    (``x2apic``/``xapic``, None when the log no longer says), ``source_validation`` in words,
    ``compatibility_format`` (blocked or not), and every option or state that ``weakens`` it,
    each naming the protection lost."""

    kind: str
    mode: str | None
    source_validation: str
    compatibility_format: str
    weakens: list[str] = field(default_factory=list)
    units: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for evidence."""
        return dict(self.__dict__)


def _bit(registers: dict[str, int], name: str, bit: int) -> bool | None:
    return None if name not in registers else bool(registers[name] >> bit & 1)


def remapping_kind(state: IommuState, kind: str) -> str:
    """Whose interrupt remapping runs: the IOMMU's ``kind``, or where no unit is registered
    for DMA remapping (``intel_iommu=off`` leaves interrupt remapping on), the vendor the
    kernel log names."""
    if kind in ("intel", "amd"):
        return kind
    if state.log.get("ir_mode"):
        return "intel"
    if state.log.get("amd_ir"):
        return "amd"
    return kind


def interrupt_isolation(state: IommuState, kind: str) -> InterruptIsolation:
    """Judge the isolation interrupt remapping gives, from the units' registers, the kernel
    log and the command line (call only where remapping is enabled: PLAT-002)."""
    kind = remapping_kind(state, kind)
    findings = effective_options(classify(state.cmdline, kind), "PLAT-007")
    weakens = [f"{f.option}: {f.rule.why}" for f in findings if f.rule]
    units = {}
    if kind == "intel":
        mode_lines = state.log.get("ir_mode", [])
        mode = mode_lines[-1].split(" in ")[-1].split()[0] if mode_lines else None
        nosid = any(f.option == "intremap=nosid" for f in findings)
        source = "off (intremap=nosid)" if nosid else "on (source-id verified per IRTE)"
        cfi = bool(state.log.get("cfi"))
        if cfi:
            weakens.append(
                "compatibility-format interrupts are enabled despite remapping (the kernel "
                f"warned: {state.log['cfi'][0]}): a device can send MSIs that bypass remapping"
            )
        compat = "ENABLED" if cfi else "blocked"
        for unit in state.units:
            units[unit.name] = {
                "interrupt_remapping": _bit(unit.registers, "ecap", INTEL_ECAP_IR),
                "x2apic_capable": _bit(unit.registers, "ecap", INTEL_ECAP_EIM),
            }
    elif kind == "amd":
        amd = state.log.get("amd_ir", [])
        mode = "x2apic" if any("X2APIC" in line for line in amd) else ("xapic" if amd else None)
        source = "per-device remapping tables (indexed by the requester's DeviceID)"
        compat = "not applicable (AMD remaps every MSI through the device's table)"
        for unit in state.units:
            units[unit.name] = {"x2apic_capable": _bit(unit.registers, "efr", AMD_EFR_XT)}
    else:
        mode, source, compat = None, "unknown for this IOMMU", "unknown"
    return InterruptIsolation(kind, mode, source, compat, weakens, units)


def vectors_not_remapped(devices: list[DeviceIrqChips]) -> list[str]:
    """The vectors VFIO enabled that the host delivers through a chip outside interrupt
    remapping (an ``IR-`` chip remaps), and devices whose vectors did not show up at all."""
    problems = []
    for device in devices:
        if device.index is None:
            continue
        if not device.chips:
            problems.append(f"{device.bdf}: no {device.index} vector in /proc/interrupts")
        problems.extend(
            f"{action} is delivered through {chip}, not through interrupt remapping"
            for action, chip in device.chips.items()
            if not chip.startswith("IR-")
        )
    return problems


# -- interrupt posting ----------------------------------------------------------------------


@dataclass
class InterruptPosting:
    """Whether the IOMMU offers interrupt posting (VT-d CAP.PI on every unit; AMD GA with
    the virtual APIC mode) and whether the kernel uses it, with why in words."""

    kind: str
    offered: bool | None
    used: bool | None
    why: str
    units: dict[str, bool | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for evidence."""
        return dict(self.__dict__)


def interrupt_posting(state: IommuState, kind: str, remapping: bool) -> InterruptPosting:
    """Judge interrupt posting from the units' registers, the log and the command line."""
    options = {f.option for f in classify(state.cmdline, kind)}
    if kind == "intel":
        units = {u.name: _bit(u.registers, "cap", INTEL_CAP_PI) for u in state.units}
        known = [v for v in units.values() if v is not None]
        offered = all(known) if known else None
        if offered is None:
            return InterruptPosting(kind, None, None, "no unit exposes its capability register")
        if not offered:
            lacking = ", ".join(n for n, v in units.items() if not v)
            why = f"CAP.PI is clear on {lacking}: the IOMMU does not post interrupts"
            return InterruptPosting(kind, False, False, why, units)
        if not remapping:
            return InterruptPosting(kind, True, False, "posting needs interrupt remapping", units)
        if "intremap=nopost" in options:
            return InterruptPosting(kind, True, False, "intremap=nopost turns it off", units)
        why = "every unit sets CAP.PI and nothing turns it off: KVM posts assigned devices' "
        why += "interrupts to running vCPUs (with APICv)"
        return InterruptPosting(kind, True, True, why, units)
    if kind == "amd":
        units = {
            u.name: (
                None
                if "efr" not in u.registers
                else bool(_bit(u.registers, "efr", AMD_EFR_GA))
                and bool(_bit(u.registers, "efr", AMD_EFR_GAM_VAPIC))
            )
            for u in state.units
        }
        known = [v for v in units.values() if v is not None]
        offered = all(known) if known else None
        used = bool(state.log.get("amd_vapic"))
        if used:
            why = "the kernel runs the IOMMU in virtual APIC mode (log: Virtual APIC enabled)"
        elif offered is False:
            why = "the IOMMU lacks GA with the virtual APIC mode (EFR GASup/GAMSup)"
        elif "amd_iommu_intr=legacy" in options:
            why = "amd_iommu_intr=legacy turns it off"
        else:
            why = "the kernel did not enable the virtual APIC mode"
        return InterruptPosting(kind, offered, used, why, units)
    return InterruptPosting(kind, None, None, f"no posting model for a {kind} IOMMU")
