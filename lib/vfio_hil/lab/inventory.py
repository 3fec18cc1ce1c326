"""The lab inventory: an ordinary Ansible YAML inventory, read and validated.

Hosts under any group are DUTs. A host with ``vm_*`` variables (or in the ``virtual`` group)
is a machine of the virtual rack; its PCI devices come from ``vm_devices``. A real host lists
the devices to test in ``vfio_devices`` (``[{bdf: "0000:03:00.0", model: nvme}]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vfio_hil.lab.errors import InventoryError

DEFAULT_INVENTORY = Path(__file__).resolve().parents[3] / "inventory" / "virtual.yml"

IOMMU_KINDS = ("intel", "amd", "virtio", "none")
DEFAULT_IOMMU_OPTIONS = {
    "intel": "intremap=on,caching-mode=on",
    "amd": "",
    "virtio": "",
    "none": "",
}
DEFAULT_KERNEL = "linux-image-amd64"


@dataclass(frozen=True)
class DeviceModel:
    """What the suite knows about a kind of PCI device it can test. A device is of this
    model when its IDs are ``vendor_id:device_id`` (0: any) and its class code is
    ``class_code`` (None: any)."""

    name: str
    vendor_id: int
    device_id: int
    capabilities: frozenset[str]
    class_code: int | None = None


#: What a DMA engine (``vfio_hil.core.drivers.engine``) offers, as checks ask for it. A device
#: listed without a model may offer them too: the DUT's engine probe decides at run time.
ENGINE_CAPABILITIES = frozenset(
    {"device_registers", "dma_engine", "dma_to_host", "dma_from_host", "device_irq"}
)

#: What the DUT can tell of a device listed without a model: its DMA engine, whether it is an
#: NVMe controller (by class code), and ``dma`` (the container mapping checks only need a
#: device whose group VFIO attaches).
PROBED_CAPABILITIES = ENGINE_CAPABILITIES | {"nvme", "dma"}

DEVICE_MODELS: dict[str, DeviceModel] = {
    m.name: m
    for m in (
        DeviceModel(
            "edu", 0x1234, 0x11E8, frozenset({"mmio", "dma", "msi", "edu"}) | ENGINE_CAPABILITIES
        ),
        # Any vendor's NVMe controller: class 01:08:02 (mass storage, NVM, NVM Express).
        DeviceModel(
            "nvme", 0, 0, frozenset({"mmio", "msix", "nvme", "dma"}) | ENGINE_CAPABILITIES, 0x010802
        ),
        DeviceModel("pci-testdev", 0x1B36, 0x0005, frozenset({"mmio", "pio", "pci-testdev"})),
        DeviceModel("generic", 0, 0, frozenset()),
    )
}

# The default virtual DUT: two edu devices in their own IOMMU groups, an NVMe controller on a
# null drive, a pci-testdev, an edu behind a PCIe root port (a hotpluggable slot), and two edu
# functions of one multi-function slot, which share an IOMMU group (they have no ACS).
DEFAULT_VM_DEVICES: list[dict[str, Any]] = [
    {"model": "edu", "slot": 4},
    {"model": "edu", "slot": 5},
    {"model": "nvme", "slot": 6},
    {"model": "pci-testdev", "slot": 7},
    {"model": "edu", "slot": 8, "hotplug": True},
    {"model": "edu", "slot": 9},
    {"model": "edu", "slot": 9, "function": 1},
]

_BDF = re.compile(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$")


def normalize_bdf(text: str) -> str:
    """Return ``text`` as a full ``dddd:bb:ss.f`` PCI address, or raise ValueError."""
    m = _BDF.match(str(text).strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not a PCI address (expected dddd:bb:ss.f)")
    return f"{m.group(1) or '0000'}:{m.group(2)}:{m.group(3)}.{m.group(4)}"


@dataclass(frozen=True)
class DutDevice:
    """One PCI device under test on one host."""

    host: str
    bdf: str
    model: str
    qemu_id: str | None = None
    #: The inventory allows commands that destroy the device's data (``scratch: true``).
    scratch: bool = False

    @property
    def capabilities(self) -> frozenset[str]:
        """The capabilities of the device's model (what checks it can run)."""
        return DEVICE_MODELS[self.model].capabilities

    def may_have(self, needs: set[str] | frozenset[str]) -> bool:
        """True when the device may have every capability of ``needs``: its model has them,
        or it was listed without a model and only what the DUT can tell is asked for
        (:data:`PROBED_CAPABILITIES`: the DUT's probe decides, and SKIPs where it lacks)."""
        if needs <= self.capabilities:
            return True
        return self.model == "generic" and needs <= PROBED_CAPABILITIES | self.capabilities

    @property
    def ident(self) -> str:
        """A stable, readable id: ``host/bdf``."""
        return f"{self.host}/{self.bdf}"


@dataclass(frozen=True)
class VmDevice:
    """A PCI device of a virtual DUT and where it sits."""

    model: str
    slot: int
    hotplug: bool = False
    function: int = 0

    @property
    def qemu_id(self) -> str:
        """The QEMU device id (``dev<slot>``, ``dev<slot>f<function>``): QMP names it so."""
        return f"dev{self.slot}" + (f"f{self.function}" if self.function else "")


@dataclass(frozen=True)
class VmSpec:
    """How the virtual rack builds one machine."""

    iommu: str
    iommu_options: str
    kernel: str
    kernel_cmdline: str
    qemu_args: tuple[str, ...]
    devices: tuple[VmDevice, ...]
    memory_mb: int = 1536
    cpus: int = 1


@dataclass
class Host:
    """A DUT host of the inventory, with its merged variables."""

    name: str
    vars: dict[str, Any]
    vm: VmSpec | None
    devices: list[DutDevice] = field(default_factory=list)

    @property
    def virtual(self) -> bool:
        """True when the virtual rack provides this host."""
        return self.vm is not None


@dataclass
class Inventory:
    """A validated inventory."""

    path: Path
    hosts: dict[str, Host]

    def devices(self) -> list[DutDevice]:
        """Every device under test, in inventory order."""
        return [d for h in self.hosts.values() for d in h.devices]

    def limited(self, names: list[str] | None) -> Inventory:
        """The inventory reduced to the hosts ``names`` (all when None)."""
        if not names:
            return self
        unknown = sorted(set(names) - set(self.hosts))
        if unknown:
            raise InventoryError(f"inventory {self.path}: no host {', '.join(unknown)}")
        return Inventory(self.path, {n: h for n, h in self.hosts.items() if n in names})


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an Ansible YAML inventory; raise InventoryError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise InventoryError(f"inventory {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InventoryError(f"inventory {path}: not valid YAML{where}: {problem}") from None
    except OSError as exc:
        raise InventoryError(f"inventory {path}: cannot read: {exc.strerror}") from None
    if not isinstance(data, dict) or not data:
        raise InventoryError(f"inventory {path}: expected a mapping of groups (e.g. 'all:')")
    hosts: dict[str, dict[str, Any]] = {}
    groups_of: dict[str, set[str]] = {}
    for group, body in data.items():
        _walk_group(path, str(group), body, {}, hosts, groups_of)
    if not hosts:
        raise InventoryError(f"inventory {path}: defines no hosts")
    result = {}
    for name, hvars in hosts.items():
        try:
            result[name] = _make_host(name, hvars, groups_of.get(name, set()))
        except (ValueError, TypeError) as exc:
            raise InventoryError(f"inventory {path}: host {name}: {exc}") from None
    return Inventory(path=path, hosts=result)


def _walk_group(
    path: Path,
    group: str,
    body: Any,
    inherited: dict[str, Any],
    hosts: dict[str, dict[str, Any]],
    groups_of: dict[str, set[str]],
) -> None:
    if body is None:
        return
    if not isinstance(body, dict):
        raise InventoryError(f"inventory {path}: group {group}: expected a mapping")
    unknown = set(body) - {"hosts", "vars", "children"}
    if unknown:
        raise InventoryError(
            f"inventory {path}: group {group}: unknown key(s) {', '.join(sorted(unknown))} "
            "(expected hosts, vars, children)"
        )
    gvars = body.get("vars") or {}
    if not isinstance(gvars, dict):
        raise InventoryError(f"inventory {path}: group {group}: 'vars' must be a mapping")
    merged = {**inherited, **gvars}
    ghosts = body.get("hosts") or {}
    if not isinstance(ghosts, dict):
        raise InventoryError(f"inventory {path}: group {group}: 'hosts' must be a mapping")
    for hname, hvars in ghosts.items():
        if hvars is not None and not isinstance(hvars, dict):
            raise InventoryError(f"inventory {path}: host {hname}: variables must be a mapping")
        hosts[str(hname)] = {**hosts.get(str(hname), {}), **merged, **(hvars or {})}
        groups_of.setdefault(str(hname), set()).add(group)
    children = body.get("children") or {}
    if not isinstance(children, dict):
        raise InventoryError(f"inventory {path}: group {group}: 'children' must be a mapping")
    for child, cbody in children.items():
        _walk_group(path, str(child), cbody, merged, hosts, groups_of)


def _make_host(name: str, hvars: dict[str, Any], groups: set[str]) -> Host:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise ValueError("host names may hold letters, digits, '.', '_' and '-' only")
    virtual = "virtual" in groups or any(k.startswith("vm_") for k in hvars)
    if not virtual:
        devices = [
            _real_device(name, i, entry) for i, entry in enumerate(hvars.get("vfio_devices") or [])
        ]
        if not devices:
            raise ValueError("a real host needs 'vfio_devices' (a list of {bdf, model})")
        return Host(name=name, vars=hvars, vm=None, devices=devices)
    vm = _vm_spec(hvars)
    return Host(name=name, vars=hvars, vm=vm, devices=vm_dut_devices(name, vm))


def _real_device(host: str, index: int, entry: Any) -> DutDevice:
    if isinstance(entry, str):
        entry = {"bdf": entry}
    if not isinstance(entry, dict) or "bdf" not in entry:
        raise ValueError(f"vfio_devices[{index}]: expected {{bdf: ..., model: ...}}")
    model = str(entry.get("model", "generic"))
    if model not in DEVICE_MODELS:
        raise ValueError(f"vfio_devices[{index}]: unknown model {model!r}")
    scratch = entry.get("scratch", False)
    if not isinstance(scratch, bool):
        raise ValueError(f"vfio_devices[{index}]: scratch must be true or false, not {scratch!r}")
    return DutDevice(host=host, bdf=normalize_bdf(entry["bdf"]), model=model, scratch=scratch)


def _vm_spec(hvars: dict[str, Any]) -> VmSpec:
    iommu = str(hvars.get("vm_iommu", "intel"))
    if iommu not in IOMMU_KINDS:
        raise ValueError(f"vm_iommu {iommu!r} is not one of {', '.join(IOMMU_KINDS)}")
    qemu_args = hvars.get("vm_qemu_args") or []
    if isinstance(qemu_args, str):
        qemu_args = qemu_args.split()
    if not isinstance(qemu_args, list):
        raise ValueError("vm_qemu_args must be a list of QEMU arguments")
    raw_devices = hvars.get("vm_devices", DEFAULT_VM_DEVICES)
    if not isinstance(raw_devices, list):
        raise ValueError("vm_devices must be a list of {model, slot}")
    devices = []
    for i, entry in enumerate(raw_devices):
        if not isinstance(entry, dict) or "model" not in entry or "slot" not in entry:
            raise ValueError(f"vm_devices[{i}]: expected {{model: ..., slot: N}}")
        if entry["model"] not in DEVICE_MODELS or entry["model"] == "generic":
            known = ", ".join(m for m in DEVICE_MODELS if m != "generic")
            raise ValueError(f"vm_devices[{i}]: unknown model {entry['model']!r} ({known})")
        slot = entry["slot"]
        if not isinstance(slot, int) or not 3 <= slot <= 0x1E:
            raise ValueError(f"vm_devices[{i}]: slot must be an integer from 3 to 30")
        function = entry.get("function", 0)
        if not isinstance(function, int) or not 0 <= function <= 7:
            raise ValueError(f"vm_devices[{i}]: function must be an integer from 0 to 7")
        hotplug = bool(entry.get("hotplug", False))
        if hotplug and function:
            raise ValueError(f"vm_devices[{i}]: a hotplug device sits at function 0")
        devices.append(VmDevice(str(entry["model"]), slot, hotplug, function))
    places = [(d.slot, d.function) for d in devices]
    if len(set(places)) != len(places):
        raise ValueError("vm_devices: two devices share a slot and function")
    for d in devices:
        if d.function and (d.slot, 0) not in places:
            raise ValueError(f"vm_devices: slot {d.slot} has function {d.function} but no 0")
        if d.hotplug and any(o.slot == d.slot and o is not d for o in devices):
            raise ValueError(f"vm_devices: hotplug slot {d.slot} holds other functions")
    options = hvars.get("vm_iommu_options")
    return VmSpec(
        iommu=iommu,
        iommu_options=DEFAULT_IOMMU_OPTIONS[iommu] if options is None else str(options),
        kernel=str(hvars.get("vm_kernel", DEFAULT_KERNEL)),
        kernel_cmdline=str(hvars.get("vm_kernel_cmdline", "")),
        qemu_args=tuple(str(a) for a in qemu_args),
        devices=tuple(devices),
        memory_mb=int(hvars.get("vm_memory_mb", 1536)),
        cpus=int(hvars.get("vm_cpus", 1)),
    )


def vm_dut_devices(host: str, vm: VmSpec) -> list[DutDevice]:
    """The guest PCI addresses of a VM's devices.

    Devices on the root complex sit at ``00:<slot>.<function>``. A hotplug device sits behind
    its own root port; the guest firmware numbers those buses in slot order from 1.
    """
    result = []
    bus = 0
    for dev in sorted(vm.devices, key=lambda d: (d.slot, d.function)):
        if dev.hotplug:
            bus += 1
            bdf = f"0000:{bus:02x}:00.0"
        else:
            bdf = f"0000:00:{dev.slot:02x}.{dev.function}"
        result.append(DutDevice(host=host, bdf=bdf, model=dev.model, qemu_id=dev.qemu_id))
    return result
