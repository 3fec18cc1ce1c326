"""What the IOMMU and interrupt remapping of this host really give VFIO, as the DUT sees it.

Two measurements, judged on the controller (:mod:`vfio_hil.lab.iommu_options`):

- :func:`vfio_domain`: the domain a VFIO IOMMU context actually gets for a device's group
  (attached, IOVA ranges, page sizes, a page mapped and unmapped), beside the default
  domain the kernel gave the group for host drivers. The two differ on purpose: with
  ``iommu=pt`` host drivers get an identity domain, while vfio_iommu_type1 and iommufd
  attach the group to a paging domain of their own.
- :func:`iommu_state`: the remapping units' capability registers as sysfs shows them, the
  kernel command line, and the kernel log lines that tell the default domain type, the TLB
  invalidation policy, the interrupt-remapping mode and any warning that weakens it.

The decoders are pure functions over strings, unit-tested on what the rack's kernels print.
Python 3.9+, stdlib only besides the core library.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..core import sysfs, uapi
from ..core.backend import ContainerBackend, open_iommu
from ..core.dma import DmaBuffer
from ..core.errors import BackendUnavailableError, UnsafeModeError, VfioError
from . import evidence
from .mapping import device_in_container

SYSFS_IOMMU = "/sys/class/iommu"
CMDLINE = "/proc/cmdline"
PROC_INTERRUPTS = "/proc/interrupts"
#: The message-signalled IRQ indexes, most capable first, and how vfio-pci names their
#: vectors in /proc/interrupts (vfio_msi_set_vector_signal: "vfio-msix[0](0000:00:06.0)").
MESSAGE_INDEXES = ((uapi.VFIO_PCI_MSIX_IRQ_INDEX, "msix"), (uapi.VFIO_PCI_MSI_IRQ_INDEX, "msi"))

#: Kernel log lines worth keeping, by topic, with where the kernel prints them.
LOG_TOPICS: Dict[str, re.Pattern[str]] = {
    # drivers/iommu/iommu.c iommu_subsys_init()
    "default_domain": re.compile(r"iommu: Default domain type: (\w+)"),
    "tlb_policy": re.compile(r"DMA domain TLB invalidation policy: (\w+) mode"),
    # drivers/iommu/intel/iommu.c: caching mode forces strict invalidation.
    # drivers/iommu/amd/iommu.c: likewise under a hypervisor.
    "strict_forced": re.compile(
        r"IOMMU batching disallowed due to virtualization|Using strict mode due to virtualization"
    ),
    # drivers/iommu/intel/irq_remapping.c intel_enable_irq_remapping()
    "ir_mode": re.compile(r"Enabled IRQ remapping in (x2apic|xapic) mode"),
    # drivers/iommu/amd/init.c: "Interrupt remapping enabled", "X2APIC enabled",
    # "Virtual APIC enabled"; the extended features it found.
    "amd_ir": re.compile(r"AMD-Vi: (Interrupt remapping enabled|X2APIC enabled)"),
    "amd_vapic": re.compile(r"AMD-Vi: Virtual APIC enabled"),
    "amd_features": re.compile(r"AMD-Vi: Extended features \("),
    # drivers/iommu/intel/irq_remapping.c iommu_set_irq_remapping(): CFI still set after
    # the kernel cleared it, so compatibility-format MSIs bypass remapping.
    "cfi": re.compile(r"Compatibility-format IRQs enabled despite intr remapping"),
    # drivers/iommu/intel/irq_remapping.c: remapping given up on firmware opt-out or errata.
    "ir_disabled": re.compile(
        r"(?:IRQ|interrupt) remapping (?:was )?disabled|Not enabling interrupt remapping",
        re.IGNORECASE,
    ),
    # drivers/vfio/pci/vfio_pci.c vfio_pci_is_denylisted(): a device with known errata was
    # let through because vfio_pci.disable_denylist is set.
    "denylist_disabled": re.compile(r"device denylist disabled - allowing device"),
    # The out-of-tree pcie_acs_override patch (Arch, Proxmox and others carry it): the kernel
    # pretends ACS isolation where the hardware has none, so groups are split too finely.
    "acs_override": re.compile(r"ACS overrides enabled"),
}
_KEEP_PER_TOPIC = 4


@dataclass
class IommuUnit:
    """One remapping unit in /sys/class/iommu with its registers, as integers (Intel:
    ``cap``, ``ecap`` from sysfs; AMD: ``efr`` as the kernel logged it)."""

    name: str
    registers: Dict[str, int] = field(default_factory=dict)


@dataclass
class IommuState:
    """The remapping units, the kernel command line and the telling kernel log lines
    (``log`` by topic of :data:`LOG_TOPICS`; ``log_from_boot`` is False when the log buffer
    has wrapped past the boot messages, so an absent line proves nothing)."""

    cmdline: str
    units: List[IommuUnit]
    log: Dict[str, List[str]]
    log_from_boot: bool

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> IommuState:
        """Rebuild the state from :func:`iommu_state`'s answer."""
        return cls(
            cmdline=data["cmdline"],
            units=[IommuUnit(**u) for u in data["units"]],
            log=dict(data["log"]),
            log_from_boot=data["log_from_boot"],
        )


@dataclass
class VfioDomain:
    """What a VFIO IOMMU context got for ``bdf``'s group.

    ``host_default`` is the group's default domain type for host drivers (sysfs
    ``iommu_groups/N/type``: ``DMA``, ``DMA-FQ``, ``identity``...). ``refusal`` names the
    ioctl, errno and message when the context could not take the group; otherwise
    ``attached`` is True, ``iova_ranges`` are the usable IOVA ranges (first, last),
    ``page_sizes`` the IOMMU page size bitmap (container backends), and ``mapped`` tells
    whether one page was mapped into the domain and unmapped again.
    """

    bdf: str
    group: Optional[int]
    host_default: Optional[str]
    backend: Optional[str] = None
    attached: bool = False
    refusal: Optional[Dict[str, Any]] = None
    iova_ranges: List[Tuple[int, int]] = field(default_factory=list)
    page_sizes: Optional[int] = None
    mapped: bool = False

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> VfioDomain:
        """Rebuild the result from :func:`vfio_domain`'s answer."""
        return cls(**{**data, "iova_ranges": [tuple(r) for r in data["iova_ranges"]]})


def unit_registers(files: Dict[str, Optional[str]]) -> Dict[str, int]:
    """Decode the register files of an Intel unit's sysfs folder: ``intel-iommu/cap`` and
    ``intel-iommu/ecap``, plain hex, to ``cap`` and ``ecap``.

    AMD's ``amd-iommu/features`` is not read: it shows ``EFR2:EFR`` on 6.1 and ``EFR:EFR2``
    on later kernels, with nothing to tell the two apart (see :func:`amd_efr`).
    """
    registers: Dict[str, int] = {}
    for name in ("cap", "ecap"):
        text = files.get(f"intel-iommu/{name}")
        if text:
            registers[name] = int(text, 16)
    return registers


_AMD_FEATURES = re.compile(r"Extended features \((0x[0-9a-fA-F]+|0)")


def amd_efr(lines: List[str]) -> Optional[int]:
    """The AMD Extended Feature Register as the kernel logged it (``AMD-Vi: Extended
    features (EFR, EFR2): ...``, the same order on every kernel), None when not logged."""
    for line in lines:
        found = _AMD_FEATURES.search(line)
        if found:
            return int(found.group(1), 16)
    return None


def log_topics(lines: List[str]) -> Dict[str, List[str]]:
    """The kernel log ``lines`` that match each of :data:`LOG_TOPICS` (a few per topic)."""
    found: Dict[str, List[str]] = {topic: [] for topic in LOG_TOPICS}
    for line in lines:
        for topic, pattern in LOG_TOPICS.items():
            if pattern.search(line) and len(found[topic]) < _KEEP_PER_TOPIC:
                found[topic].append(line.strip())
    return found


def iommu_state() -> Dict[str, Any]:
    """This host's :class:`IommuState`, as a dict."""
    lines = evidence.kmsg_since(-1)["lines"]
    topics = log_topics(lines)
    efr = amd_efr(topics["amd_features"])
    units = []
    for name in sorted(os.listdir(SYSFS_IOMMU)) if os.path.isdir(SYSFS_IOMMU) else []:
        base = os.path.join(SYSFS_IOMMU, name)
        files = {
            rel: evidence.read_file(os.path.join(base, rel))
            for rel in ("intel-iommu/cap", "intel-iommu/ecap")
        }
        registers = unit_registers(files)
        if os.path.isdir(os.path.join(base, "amd-iommu")) and efr is not None:
            registers["efr"] = efr
        units.append(IommuUnit(name, registers))
    state = IommuState(
        cmdline=evidence.read_file(CMDLINE) or "",
        units=units,
        log=topics,
        # The kernel's first record is its banner; without it the buffer has wrapped.
        log_from_boot=bool(lines) and lines[0].startswith("Linux version"),
    )
    return asdict(state)


def vfio_domain(bdf: str, backend: str = "auto") -> Dict[str, Any]:
    """Open an IOMMU context (``backend`` as :func:`~vfio_hil.core.backend.open_iommu`
    takes it), attach ``bdf``'s group, and describe the domain it got: a
    :class:`VfioDomain` as a dict. A refusal by the kernel is the answer, not an error."""
    bdf = sysfs.normalize_bdf(bdf)
    try:
        group: Optional[int] = sysfs.iommu_group(bdf)
    except FileNotFoundError:
        group = None
    result = VfioDomain(
        bdf=bdf,
        group=group,
        host_default=evidence.read_file(f"/sys/kernel/iommu_groups/{group}/type")
        if group is not None
        else None,
    )
    if group is None:
        return asdict(result)
    try:
        with open_iommu(backend) as iommu:
            result.backend = iommu.name
            iommu.open_device(bdf)
            result.attached = True
            result.iova_ranges = [(r.start, r.last) for r in iommu.iova_ranges()]
            if isinstance(iommu, ContainerBackend):
                result.page_sizes = iommu.container.info().iova_pgsizes
            with DmaBuffer(4096) as buffer, iommu.map_buffer(buffer):
                result.mapped = True
    except VfioError as exc:
        result.refusal = {
            "ioctl": exc.ioctl,
            "errno": exc.errno,
            "target": exc.target,
            "message": str(exc),
        }
    except UnsafeModeError as exc:
        # The group is a no-IOMMU group: VFIO would hand the device over untranslated.
        result.refusal = {"ioctl": None, "errno": None, "noiommu": True, "message": str(exc)}
    except BackendUnavailableError as exc:
        result.refusal = {"ioctl": None, "errno": None, "message": str(exc)}
    return asdict(result)


@dataclass
class DeviceIrqChips:
    """The host interrupt chips that deliver ``bdf``'s vectors while VFIO has them enabled:
    ``chips`` by /proc/interrupts line (``IR-PCI-MSIX-...`` goes through interrupt
    remapping; ``PCI-MSIX-...`` does not). ``index`` is ``msix``, ``msi``, or None when the
    device offers neither."""

    bdf: str
    index: Optional[str]
    chips: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> DeviceIrqChips:
        """Rebuild the result from :func:`device_irq_chips`'s answer."""
        return cls(**data)


def interrupt_chips(text: str, name: str) -> Dict[str, str]:
    """The chip of each /proc/interrupts line whose action is ``name`` (as ``vfio-msix[0](bdf)``):
    ``{line's action: chip}``. The chip is the first column after the per-CPU counts."""
    lines = text.splitlines()
    cpus = len(lines[0].split()) if lines else 0
    chips = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > cpus + 1 and name in fields[-1]:
            chips[fields[-1]] = fields[cpus + 1]
    return chips


def device_irq_chips(bdf: str) -> Dict[str, Any]:
    """Enable one MSI-X (else MSI) vector of ``bdf`` through VFIO and read which host chip
    delivers it: a :class:`DeviceIrqChips` as a dict."""
    bdf = sysfs.normalize_bdf(bdf)
    with device_in_container(bdf) as (_container, device):
        for index, name in MESSAGE_INDEXES:
            if device.irq_info(index).count:
                with device.irq_eventfds(index, 1), open(PROC_INTERRUPTS) as fh:
                    chips = interrupt_chips(fh.read(), f"vfio-{name}[")
                found = {action: chip for action, chip in chips.items() if f"({bdf})" in action}
                return asdict(DeviceIrqChips(bdf, name, found))
    return asdict(DeviceIrqChips(bdf, None))
