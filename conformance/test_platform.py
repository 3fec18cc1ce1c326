"""PLAT: the platform under the devices — IOMMU translation, interrupt remapping, the
firmware's IOMMU description, unsafe VFIO modes, group membership and idle IOMMU faults."""

from __future__ import annotations

import dataclasses
from typing import Any

from vfio_hil.dut.iommu_state import DeviceIrqChips as IrqChips
from vfio_hil.lab import iommu_options
from vfio_hil.lab.session import HostSession
from vfio_hil_pytest import check, skip

VFIO_RST = "Documentation/driver-api/vfio.rst"

#: The module parameters PLAT-003 covers, with what each gives up (from the option table).
UNSAFE_PARAMS = {
    rule.name: rule.why
    for rule in iommu_options.OPTIONS
    if rule.check == "PLAT-003" and rule.option != iommu_options.DENYLIST_OPTION
}
#: Drivers that leave a group viable for VFIO (they claim no DMA API ownership): vfio-pci and
#: its vendor variants, pci-stub, and pcieport on bridges.
VFIO_FRIENDLY_DRIVERS = ("pci-stub", "pcieport")
X86 = ("x86_64", "i386", "i686")
#: The ACPI table that describes each kind of x86 IOMMU.
IOMMU_TABLES = {"intel": ("DMAR",), "amd": ("IVRS",), "none": ("DMAR", "IVRS")}


@check(
    "PLAT-001",
    "The IOMMU is enabled, every device under test is in an IOMMU group, and the domain VFIO "
    "gets for it translates",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs; drivers/vfio/vfio_iommu_type1.c attach_group",
)
def test_iommu_enabled(dut_host: HostSession, evidence: Any) -> None:
    """Without a translating IOMMU, VFIO cannot confine a device's DMA: the group is the
    unit of isolation, so every device handed to userspace must sit in one, and the domain
    VFIO attaches the group to must translate. The check looks at that domain (an IOMMU
    context attaches each device's group, reports its IOVA ranges and page sizes and maps a
    page), not at the default domains the kernel gives host drivers: with ``iommu=pt`` those
    are identity while VFIO's own are paging domains (PLAT-008 reports the defaults). Where
    VFIO refuses the attach for want of interrupt remapping, that is PLAT-002's finding and
    the groups are judged alone."""
    iommu = dut_host.platform["iommu"]
    assert iommu["kind"] != "none", f"no IOMMU on {dut_host.name}: /sys/class/iommu is empty"
    devices = dut_host.platform["devices"]
    outside = [d.bdf for d in dut_host.devices if devices.get(d.bdf, {}).get("iommu_group") is None]
    assert not outside, f"devices outside any IOMMU group: {', '.join(outside)}"
    domains = [dut_host.vfio_domain(d.bdf) for d in dut_host.devices]
    evidence.add("vfio_domains", [dataclasses.asdict(d) for d in domains])
    evidence.add("host_default_domain_types", iommu.get("default_domain_types"))
    problems = [p for p in map(iommu_options.domain_problem, domains) if p]
    assert not problems, f"VFIO's domain does not translate on {dut_host.name}: " + "; ".join(
        problems
    )
    refused = [r for r in map(iommu_options.domain_refusal, domains) if r]
    if refused:
        evidence.note = "VFIO's domain not seen: " + "; ".join(refused) + " (PLAT-002)"
    else:
        evidence.note = "; ".join(map(iommu_options.describe_domain, domains))


@check(
    "PLAT-002",
    "Interrupt remapping is enabled",
    level="MUST",
    spec=f"{VFIO_RST}: VFIO Usage Example (allow_unsafe_interrupts); vfio_iommu_type1",
)
def test_interrupt_remapping(dut_host: HostSession) -> None:
    """Without interrupt remapping a device can write an MSI message that targets any vector
    of the host; type1 refuses such platforms unless allow_unsafe_interrupts is set."""
    remap = dut_host.platform["interrupt_remapping"]
    evidence = "; ".join(remap.get("evidence", [])[:3]) or "no remapping message in the kernel log"
    assert remap["enabled"], (
        f"interrupt remapping is not enabled on {dut_host.name} ({evidence}): a device could "
        "forge MSIs, so VFIO needs allow_unsafe_interrupts to attach"
    )


@check(
    "PLAT-003",
    "Unsafe VFIO modes are off: no unsafe interrupts, no no-IOMMU mode",
    level="MUST",
    spec=(
        f"{VFIO_RST}: VFIO Usage Example; drivers/vfio/vfio_iommu_type1.c "
        "allow_unsafe_interrupts; drivers/vfio/vfio_main.c enable_unsafe_noiommu_mode"
    ),
)
def test_unsafe_modes_off(dut_host: HostSession, evidence: Any) -> None:
    """allow_unsafe_interrupts lets VFIO attach devices on a platform without interrupt
    remapping, where a device can forge any MSI; enable_unsafe_noiommu_mode hands devices to
    userspace with no IOMMU at all. Either turns VFIO's isolation guarantee off for every
    device on the host, and the kernel only warns once. For a loaded module the check reads
    the parameter's value (setup facts): a module built without it cannot be unsafe. For a
    module not loaded yet it reads the kernel command line, which sets the parameter when
    the module loads. vfio_pci.disable_denylist fails the check where the kernel logged that
    it let a denied device (known exploitable errata) through to vfio-pci."""
    loaded = dut_host.platform.get("vfio_params", {})
    cmdline = dict(iommu_options.kernel_options(dut_host.platform.get("kernel_cmdline") or ""))
    seen = {}
    for name in UNSAFE_PARAMS:
        module = name.split(".", 1)[0]
        is_loaded = any(key.startswith(f"{module}.") for key in loaded) or (
            module == "vfio" and dut_host.platform.get("vfio_loaded", False)
        )
        seen[name] = {
            "module_loaded": is_loaded,
            "value": loaded.get(name) if is_loaded else cmdline.get(name),
            "source": "module parameter" if is_loaded else "kernel command line",
            "cmdline": cmdline.get(name),
        }
    evidence.add("parameters", seen)
    unsafe = [
        f"{name}={s['value']} ({s['source']}): {UNSAFE_PARAMS[name]}"
        for name, s in seen.items()
        if s["value"] is not None and s["value"].strip().lower() in iommu_options.TRUE_VALUES
    ]
    allowed = dut_host.iommu_state().log.get("denylist_disabled", [])
    evidence.add("denylist_bypassed", allowed)
    if allowed:
        unsafe.append(f"{allowed[0]} ({iommu_options.DENYLIST_OPTION})")
    assert not unsafe, f"unsafe VFIO mode on {dut_host.name}: " + "; ".join(unsafe)


def _driven_functions(dut_host: HostSession) -> list[str]:
    """The devices under test and every other function of their IOMMU groups."""
    groups = dut_host.platform.get("iommu_groups", {})
    facts = dut_host.platform.get("devices", {})
    driven = set()
    for device in dut_host.devices:
        group = facts.get(device.bdf, {}).get("iommu_group")
        driven.update(groups.get(str(group), []) if group is not None else [device.bdf])
    return sorted(driven)


@check(
    "PLAT-004",
    "The IOMMU groups of the devices under test hold no function on a host DMA driver",
    level="SHOULD",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs (viable groups)",
)
def test_group_membership(dut_host: HostSession, evidence: Any) -> None:
    """A group is the unit of isolation: userspace can only own it whole. A function that
    shares a group with a device under test and sits on a host driver using the kernel DMA
    API (a NIC, a storage controller) makes the group unusable for VFIO, and moving it to
    vfio-pci takes it from the host. The evidence lists every group of every device under
    test and the driver of each member; the check fails when a member is on any driver but
    vfio-pci (or a vfio-pci variant), pci-stub or pcieport, or on none, and when the kernel
    says PCIe ACS overrides are enabled (the out-of-tree ``pcie_acs_override``): then groups
    no longer tell which devices are isolated from each other. A no-IOMMU group (VFIO's
    no-IOMMU mode) isolates nothing and is not judged: PLAT-001 and PLAT-003 report it."""
    override = dut_host.iommu_state().log.get("acs_override", [])
    evidence.add("acs_override", override)
    assert not override, (
        f"PCIe ACS overrides are enabled on {dut_host.name} ({override[0]}): the kernel splits "
        "groups whose devices can still reach each other peer to peer (pcie_acs_override)"
    )
    states = {d.bdf: dut_host.call("evidence.device_state", bdf=d.bdf) for d in dut_host.devices}
    evidence.add(
        "groups",
        {
            bdf: {"group": s["iommu_group"], "members": s["group_members"]}
            for bdf, s in states.items()
        },
    )
    noiommu = dut_host.noiommu_devices()
    grouped = {
        bdf: s for bdf, s in states.items() if s["iommu_group"] is not None and bdf not in noiommu
    }
    if not grouped and noiommu:
        skip(
            "covered",
            f"the devices under test on {dut_host.name} are in no-IOMMU groups "
            f"({', '.join(noiommu)}), which isolate nothing (PLAT-001, PLAT-003)",
        )
    if not grouped:
        skip("covered", f"no device under test on {dut_host.name} is in an IOMMU group (PLAT-001)")
    foreign = sorted(
        {
            f"{member} on {driver} (group {s['iommu_group']} of {bdf})"
            for bdf, s in grouped.items()
            for member, driver in s["group_members"].items()
            if driver is not None and "vfio" not in driver and driver not in VFIO_FRIENDLY_DRIVERS
        }
    )
    assert not foreign, "host DMA drivers in groups under test: " + "; ".join(foreign)


@check(
    "PLAT-005",
    "The firmware's IOMMU table (ACPI DMAR or IVRS) is present and well-formed",
    level="MUST",
    spec=(
        "Intel VT-d spec ch. 8 (DMAR: DRHD, RMRR, device scopes); AMD IOMMU spec ch. 5 "
        "(IVRS: IVHD, IVMD); ACPI spec 5.2.6 (table header, checksum)"
    ),
)
def test_acpi_iommu_table(dut_host: HostSession, evidence: Any) -> None:
    """On x86 the kernel learns which IOMMU translates which device, and which memory the
    firmware keeps for itself (RMRR, IVMD), from the ACPI DMAR (Intel) or IVRS (AMD) table.
    A table that is missing, truncated, fails its checksum, or describes register blocks at
    misaligned addresses or device scopes of bad length leaves devices untranslated or
    misattributed, or makes the kernel disable the IOMMU. The table matching the IOMMU the
    kernel runs must exist; with no IOMMU running, either table must; every table present
    must parse cleanly. Other architectures and virtio-iommu are described elsewhere."""
    kind = dut_host.platform["iommu"]["kind"]
    tables = dut_host.call("platform_checks.acpi_iommu_tables")
    evidence.add("tables", tables)
    machine = tables["machine"]
    if machine not in X86:
        skip("platform", f"{dut_host.name} is {machine}: IOMMUs there are described by IORT/DT")
    if kind not in IOMMU_TABLES:
        skip("platform", f"the {kind} IOMMU on {dut_host.name} is not described by DMAR or IVRS")
    wanted = IOMMU_TABLES[kind]
    present = [name for name in ("DMAR", "IVRS") if tables[name] is not None]
    assert set(wanted) & set(present), (
        f"no {' or '.join(wanted)} table on {dut_host.name} (IOMMU: {kind}): the firmware "
        "describes no IOMMU"
    )
    problems = [p for name in present for p in tables[name]["problems"]]
    assert not problems, f"malformed IOMMU table on {dut_host.name}: " + "; ".join(problems)


def _iommu_kind(dut_host: HostSession, what: str) -> str:
    """The host's IOMMU kind; SKIP, saying there is none ``what`` for, when it has none."""
    kind = dut_host.platform["iommu"]["kind"]
    if kind == "none":
        skip("covered", f"no IOMMU on {dut_host.name} {what} (PLAT-001)")
    return str(kind)


@check(
    "PLAT-006",
    "No IOMMU faults at idle: none from functions the suite does not drive, none while idle",
    level="SHOULD",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs; Intel VT-d spec 7.1 (fault logging)",
)
def test_no_idle_iommu_faults(dut_host: HostSession, evidence: Any) -> None:
    """A healthy platform raises IOMMU faults only when a device really accesses memory it
    was not given. Faults from functions on host drivers (broken RMRR/IVMD, a firmware agent
    still doing DMA, a driver bug) mean the platform does not run cleanly under its IOMMU,
    and they make the fault evidence of the isolation checks ambiguous. The check fails on
    faults, since boot, from any function outside the groups under test (no check drives
    them), and on any fault logged during an idle window in which nothing is driven (a
    released device must not keep doing DMA). Faults of driven functions before the window
    are reported only: DMA isolation checks provoke them on purpose."""
    _iommu_kind(dut_host, "to raise faults")
    r = dut_host.call("platform_checks.fault_survey", driven=_driven_functions(dut_host))
    evidence.add("faults", r)
    for name, what in (
        ("foreign", "from functions no check drives"),
        ("idle", f"during {r['idle_s']} s of idleness"),
    ):
        faults = r[name]
        assert not faults, (
            f"{len(faults)} IOMMU fault(s) on {dut_host.name} {what}; first: {faults[0]['line']}"
        )


def _remapping_on(dut_host: HostSession) -> None:
    if not dut_host.platform["interrupt_remapping"]["enabled"]:
        skip("covered", f"interrupt remapping is off on {dut_host.name} (PLAT-002)")


@check(
    "PLAT-007",
    "Interrupt remapping isolates each device's interrupts: source-ids verified, "
    "compatibility-format interrupts blocked",
    level="MUST",
    spec=(
        "Intel VT-d spec 9.10 (IRTE SVT/SQ/SID), 5.1.4 (compatibility format, GCMD.CFI); "
        "drivers/iommu/intel/irq_remapping.c set_irte_sid, iommu_set_irq_remapping; "
        "docs/iommu-options.md"
    ),
)
def test_interrupt_isolation(dut_host: HostSession, evidence: Any) -> None:
    """Interrupt remapping protects the host only if a device cannot use another's remapping
    entries and cannot bypass the table: on Intel, every IRTE must verify the requester's
    source-id (``intremap=nosid`` turns that off for every entry, MSIs included) and
    compatibility-format interrupts must be blocked (the kernel warns when they stay
    enabled). AMD remaps through a table per device, so the source is inherent. The check
    fails naming every option or state that weakens the protection while remapping stays on,
    and when a vector VFIO enables for a device under test is delivered through a host chip
    outside remapping (/proc/interrupts shows ``IR-`` chips for remapped vectors); the
    remapping mode (x2APIC or xAPIC), the source validation, each unit's capability bits and
    each device's vectors are the evidence."""
    _remapping_on(dut_host)
    kind = dut_host.platform["iommu"]["kind"]
    state = dut_host.iommu_state()
    isolation = iommu_options.interrupt_isolation(state, kind)
    evidence.add("interrupt_isolation", isolation.to_dict())
    evidence.add("kernel_log", {k: v for k, v in state.log.items() if v})
    usable = [d.bdf for d in dut_host.devices if dut_host.vfio_unusable(d.bdf) is None]
    chips = [
        IrqChips.from_dict(dut_host.call("iommu_state.device_irq_chips", bdf=bdf)) for bdf in usable
    ]
    evidence.add("device_vectors", [dataclasses.asdict(c) for c in chips])
    weakens = isolation.weakens + iommu_options.vectors_not_remapped(chips)
    assert not weakens, (
        f"interrupt remapping on {dut_host.name} does not isolate devices' interrupts: "
        + "; ".join(weakens)
    )
    evidence.note = (
        f"{kind} remapping in {isolation.mode or 'an unlogged'} mode, source validation "
        f"{isolation.source_validation}"
    )


@check(
    "PLAT-008",
    "The host's default DMA domains, and where they are weaker than VFIO's own",
    level="INFO",
    spec="drivers/iommu/iommu.c iommu_subsys_init (iommu.passthrough, iommu.strict); "
    "docs/iommu-options.md",
)
def test_host_default_domains(dut_host: HostSession, evidence: Any) -> None:
    """Host drivers get the kernel's default domain type (``DMA``, ``DMA-FQ`` for lazy
    IOTLB flushing, ``identity`` with ``iommu=pt``), VFIO a paging domain of its own that it
    flushes synchronously. Weaker defaults do not weaken VFIO's guarantees (PLAT-001 judges
    those), but they leave the devices on host drivers less protected: reported here with
    the kernel's reason, and every IOMMU-related option of the command line classified by
    the suite's option table."""
    _iommu_kind(dut_host, "to give host drivers default domains")
    iommu = dut_host.platform["iommu"]
    state = dut_host.iommu_state()
    findings = iommu_options.classify(state.cmdline, iommu["kind"])
    evidence.add("default_domain_types", iommu.get("default_domain_types"))
    evidence.add("kernel_options", [f.to_dict() for f in findings])
    evidence.add("kernel_log", {k: state.log[k] for k in ("default_domain", "tlb_policy")})
    notes = iommu_options.host_default_notes(
        iommu.get("default_domain_types") or {}, state, findings
    )
    if notes:
        evidence.note = "host defaults weaker than VFIO's own domains: " + "; ".join(notes)


@check(
    "PLAT-009",
    "Interrupt posting: offered by the IOMMU, and used by the kernel",
    level="INFO",
    spec="Intel VT-d spec 9.11 (posted-interrupt IRTE), CAP.PI; AMD IOMMU spec 2.2.5 "
    "(guest virtual APIC), EFR GASup/GAMSup; drivers/iommu/intel/irq_remapping.c",
)
def test_interrupt_posting(dut_host: HostSession, evidence: Any) -> None:
    """With posting, the IOMMU delivers an assigned device's interrupts straight to a
    running vCPU instead of through the host. The check reports whether every unit offers it
    (VT-d CAP.PI; AMD GA with the virtual APIC mode) and whether the kernel uses it
    (``intremap=nopost``, ``amd_iommu_intr=legacy`` and a missing remapping turn it off)."""
    kind = _iommu_kind(dut_host, "to post interrupts")
    remapping = dut_host.platform["interrupt_remapping"]["enabled"]
    posting = iommu_options.interrupt_posting(dut_host.iommu_state(), kind, remapping)
    evidence.add("interrupt_posting", posting.to_dict())
    offered = {True: "offered", False: "not offered", None: "unknown"}[posting.offered]
    used = {True: "used", False: "not used", None: "unknown"}[posting.used]
    evidence.note = f"interrupt posting {offered}, {used}: {posting.why}"
