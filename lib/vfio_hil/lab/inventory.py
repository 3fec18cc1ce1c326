"""The lab inventory: an ordinary Ansible YAML inventory, read and validated.

Hosts under any group are DUTs. A host with ``vm_*`` variables (or in the ``virtual`` group)
is a machine of the virtual rack; its PCI devices come from ``vm_devices``. A real host lists
the devices to test in ``vfio_devices`` (``[{bdf: "0000:03:00.0", model: nvme}]``).

The variables vfio-hil reads are checked strictly (:class:`HostVars`, pydantic): their types
(no ``"no"`` for false, no ``"2"`` for 2), their ranges, unknown ``vm_*`` and ``vfio_*``
variables (typos), a BDF listed twice, and a host listed under two groups whose variables
disagree. Every problem is one :class:`InventoryError` line naming the file, the host (or
group) and the variable.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, NoReturn

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vfio_hil.lab import CHECKOUT
from vfio_hil.lab.errors import InventoryError
from vfio_hil.lab.kernel_build import parse_build_spec

DEFAULT_INVENTORY = CHECKOUT / "inventory" / "virtual.yml"

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


# -- The variables vfio-hil reads, as pydantic models (strict: no coercion) ----------------

#: Variables with these prefixes belong to vfio-hil: an unknown one is a typo, not a lab's
#: own variable (``ansible_*`` and any other variable pass through to Ansible untouched).
OWN_PREFIXES = ("vm_", "vfio_")

#: How the first problem pydantic found reads, by its error type (default: pydantic's text).
_TYPE_TEXT = {
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "missing": "is required",
    "string_too_short": "must not be empty",
}


def _suggest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the known name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_names(variables: dict[Any, Any]) -> None:
    """Raise ValueError for a variable of vfio-hil's own (:data:`OWN_PREFIXES`) that vfio-hil
    does not know, suggesting the closest known one."""
    for name in map(str, variables):
        if name.startswith(OWN_PREFIXES) and name not in HostVars.model_fields:
            known = [k for k in HostVars.model_fields if k.startswith(name[: name.index("_")])]
            hint = _suggest(name, known) or f" (known: {', '.join(known)})"
            raise ValueError(f"unknown variable {name}{hint}")


def _problem(exc: ValidationError) -> str:
    """The first error of ``exc`` as ``field: problem``, one line."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    field_path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    if err["type"] == "value_error":
        text = str(err["ctx"]["error"])
    else:
        text = _TYPE_TEXT.get(err["type"], err["msg"])
        if err["type"] != "missing":
            text += f", not {_brief(err['input'])}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{field_path.lstrip('.') or 'variables'}: {text}{more}"


def _in_range(low: int, high: int) -> AfterValidator:
    """A validator keeping an integer within ``low..high``."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}, not {value}")
        return value

    return AfterValidator(check)


class _Entry(BaseModel):
    """An entry of a list variable: a mapping of known keys (an unknown one is a typo)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    #: How an entry is written, for the error when it is not a mapping.
    shape: ClassVar[str] = "a mapping"

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"expected {cls.shape}, not {_brief(data)}")
        for key in map(str, data):
            if key not in cls.model_fields:
                raise ValueError(f"unknown key {key}{_suggest(key, cls.model_fields)}")
        return data


class VmDeviceVars(_Entry):
    """One entry of ``vm_devices``: a device the virtual rack puts in a machine."""

    shape: ClassVar[str] = "{model: ..., slot: N}"

    model: str
    slot: Annotated[int, _in_range(3, 0x1E)]
    function: Annotated[int, _in_range(0, 7)] = 0
    hotplug: bool = False

    @field_validator("model")
    @classmethod
    def _emulated(cls, model: str) -> str:
        if model not in DEVICE_MODELS or model == "generic":
            known = ", ".join(m for m in DEVICE_MODELS if m != "generic")
            raise ValueError(f"unknown model {model!r} ({known})")
        return model

    @model_validator(mode="after")
    def _hotplug_at_function_0(self) -> VmDeviceVars:
        if self.hotplug and self.function:
            raise ValueError("a hotplug device sits at function 0")
        return self


class RealDeviceVars(_Entry):
    """One entry of ``vfio_devices``: a device of a real host (a bare string is its BDF)."""

    shape: ClassVar[str] = "{bdf: ..., model: ...}"

    bdf: str
    model: str = "generic"
    scratch: bool = False

    @model_validator(mode="before")
    @classmethod
    def _bare_bdf(cls, data: Any) -> Any:
        return {"bdf": data} if isinstance(data, str) else data

    @field_validator("bdf", mode="before")
    @classmethod
    def _quoted(cls, bdf: Any) -> Any:
        if isinstance(bdf, (int, float)) and not isinstance(bdf, bool):
            raise ValueError(f"YAML read the PCI address as the number {bdf}: quote it")
        return bdf

    @field_validator("bdf")
    @classmethod
    def _normal(cls, bdf: str) -> str:
        return normalize_bdf(bdf)

    @field_validator("model")
    @classmethod
    def _known(cls, model: str) -> str:
        if model not in DEVICE_MODELS:
            raise ValueError(f"unknown model {model!r} ({', '.join(DEVICE_MODELS)})")
        return model


class HostVars(BaseModel):
    """The variables of one host that vfio-hil reads, with their types and ranges. Other
    variables (``ansible_*``, a lab's own) are kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    vm_iommu: str = "intel"
    #: None: the default options of ``vm_iommu`` (:data:`DEFAULT_IOMMU_OPTIONS`).
    vm_iommu_options: str | None = None
    vm_kernel: Annotated[str, Field(min_length=1)] = DEFAULT_KERNEL
    vm_kernel_cmdline: str = ""
    #: A list of arguments, or one string split at white space.
    vm_qemu_args: list[str] = Field(default_factory=list)
    vm_devices: list[VmDeviceVars] = Field(
        default_factory=lambda: list(DEFAULT_VM_DEVICES), validate_default=True
    )
    vm_memory_mb: Annotated[int, _in_range(128, 1 << 20)] = 1536
    vm_cpus: Annotated[int, _in_range(1, 255)] = 1
    vfio_devices: list[RealDeviceVars] = Field(default_factory=list)
    vfio_hil_install_packages: bool = False
    vfio_hil_ssh_config: Annotated[str, Field(min_length=1)] = "~/.ssh/config"

    @field_validator("vm_kernel")
    @classmethod
    def _kernel(cls, kernel: str) -> str:
        parse_build_spec(kernel)
        return kernel

    @field_validator("vm_iommu")
    @classmethod
    def _iommu_kind(cls, iommu: str) -> str:
        if iommu not in IOMMU_KINDS:
            raise ValueError(f"{iommu!r} is not one of {', '.join(IOMMU_KINDS)}")
        return iommu

    @field_validator("vm_qemu_args", "vfio_devices", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("vm_qemu_args", mode="before")
    @classmethod
    def _split(cls, args: Any) -> Any:
        return args.split() if isinstance(args, str) else args

    @field_validator("vm_devices")
    @classmethod
    def _places(cls, devices: list[VmDeviceVars]) -> list[VmDeviceVars]:
        places = [(d.slot, d.function) for d in devices]
        if len(set(places)) != len(places):
            raise ValueError("two devices share a slot and function")
        for d in devices:
            if d.function and (d.slot, 0) not in places:
                raise ValueError(f"slot {d.slot} has function {d.function} but no 0")
            if d.hotplug and sum(o.slot == d.slot for o in devices) > 1:
                raise ValueError(f"hotplug slot {d.slot} holds other functions")
        return devices

    @field_validator("vfio_devices")
    @classmethod
    def _bdfs_once(cls, devices: list[RealDeviceVars]) -> list[RealDeviceVars]:
        seen: set[str] = set()
        for d in devices:
            if d.bdf in seen:
                raise ValueError(f"{d.bdf} is listed twice")
            seen.add(d.bdf)
        return devices

    def vm_spec(self) -> VmSpec:
        """How the virtual rack builds this host's machine."""
        options = self.vm_iommu_options
        return VmSpec(
            iommu=self.vm_iommu,
            iommu_options=DEFAULT_IOMMU_OPTIONS[self.vm_iommu] if options is None else options,
            kernel=self.vm_kernel,
            kernel_cmdline=self.vm_kernel_cmdline,
            qemu_args=tuple(self.vm_qemu_args),
            devices=tuple(
                VmDevice(d.model, d.slot, d.hotplug, d.function) for d in self.vm_devices
            ),
            memory_mb=self.vm_memory_mb,
            cpus=self.vm_cpus,
        )


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an Ansible YAML inventory; raise InventoryError naming the problem
    in one line: the file, the host or group, and the variable."""
    path = Path(path)
    data = _read_yaml(path)
    hosts: dict[str, dict[str, _Value]] = {}
    groups_of: dict[str, set[str]] = {}
    walk = _GroupWalk(path, hosts, groups_of)
    for group, body in data.items():
        walk.group(str(group), body, {}, ())
    if not hosts:
        raise InventoryError(f"inventory {path}: defines no hosts")
    result = {}
    for name, values in hosts.items():
        hvars = {key: value.value for key, value in values.items()}
        try:
            result[name] = _make_host(name, hvars, groups_of.get(name, set()))
        except ValidationError as exc:  # before ValueError: it is one
            raise InventoryError(f"inventory {path}: host {name}: {_problem(exc)}") from None
        except ValueError as exc:
            raise InventoryError(f"inventory {path}: host {name}: {exc}") from None
    return Inventory(path=path, hosts=result)


def _read_yaml(path: Path) -> dict[Any, Any]:
    """The inventory file as a non-empty mapping of groups."""
    if not path.is_file():
        raise InventoryError(f"inventory {path}: no such file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InventoryError(f"inventory {path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InventoryError(
            f"inventory {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
            f"at offset {exc.start})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InventoryError(f"inventory {path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise InventoryError(f"inventory {path}: is empty (expected a mapping of groups)")
    if not isinstance(data, dict) or not data:
        raise InventoryError(f"inventory {path}: expected a mapping of groups (e.g. 'all:')")
    return data


@dataclass(frozen=True)
class _Value:
    """A variable's value for one host, and where it was set: in ``group``'s vars (whose
    ancestors are ``ancestors``) or, when ``host_var``, in the host's entry under ``group``."""

    value: Any
    group: str
    ancestors: tuple[str, ...]
    host_var: bool


@dataclass
class _GroupWalk:
    """Walks the group tree, merging each host's variables the way Ansible does: a child
    group's vars override its parents', a host's own vars override its groups'. A host listed
    under several groups whose variables disagree (and no parent-child order settles it) is
    rejected."""

    path: Path
    hosts: dict[str, dict[str, _Value]]
    groups_of: dict[str, set[str]]

    def fail(self, where: str, problem: str) -> NoReturn:
        raise InventoryError(f"inventory {self.path}: {where}: {problem}")

    def group(
        self, group: str, body: Any, inherited: dict[str, _Value], ancestors: tuple[str, ...]
    ) -> None:
        if body is None:
            return
        where = f"group {group}"
        if not isinstance(body, dict):
            self.fail(where, "expected a mapping")
        unknown = set(body) - {"hosts", "vars", "children"}
        if unknown:
            self.fail(
                where,
                f"unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                "(expected hosts, vars, children)",
            )
        gvars = body.get("vars") or {}
        if not isinstance(gvars, dict):
            self.fail(where, "'vars' must be a mapping")
        try:
            _check_names(gvars)
        except ValueError as exc:
            self.fail(where, str(exc))
        merged = {
            **inherited,
            **{str(k): _Value(v, group, ancestors, False) for k, v in gvars.items()},
        }
        ghosts = body.get("hosts") or {}
        if not isinstance(ghosts, dict):
            self.fail(where, "'hosts' must be a mapping")
        for hname, hvars in ghosts.items():
            if hvars is not None and not isinstance(hvars, dict):
                self.fail(f"host {hname}", "variables must be a mapping")
            own = {str(k): _Value(v, group, ancestors, True) for k, v in (hvars or {}).items()}
            self.add_host(str(hname), {**merged, **own})
            self.groups_of.setdefault(str(hname), set()).add(group)
        children = body.get("children") or {}
        if not isinstance(children, dict):
            self.fail(where, "'children' must be a mapping")
        for child, cbody in children.items():
            self.group(str(child), cbody, merged, (*ancestors, group))

    def add_host(self, name: str, values: dict[str, _Value]) -> None:
        known = self.hosts.setdefault(name, {})
        for key, new in values.items():
            old = known.get(key)
            if old is None or old.value == new.value or _overrides(new, old):
                known[key] = new
            elif not _overrides(old, new):
                self.fail(
                    f"host {name}",
                    f"{key} is {_brief(old.value)} in group {old.group} "
                    f"but {_brief(new.value)} in group {new.group}",
                )


def _overrides(new: _Value, old: _Value) -> bool:
    """True when Ansible's precedence settles ``new`` over ``old`` without doubt: a host's own
    variable over the vars of the group it is listed under and of that group's ancestors, a
    group's vars over its ancestors' vars. Anything else that differs is a conflict."""
    if old.host_var:
        return False
    return old.group in new.ancestors or (new.host_var and old.group == new.group)


def _brief(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (the error stays one readable line)."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _make_host(name: str, hvars: dict[str, Any], groups: set[str]) -> Host:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise ValueError("host names may hold letters, digits, '.', '_' and '-' only")
    _check_names(hvars)
    spec = HostVars.model_validate(hvars)
    virtual = "virtual" in groups or any(k.startswith("vm_") for k in hvars)
    if not virtual:
        if not spec.vfio_devices:
            raise ValueError("a real host needs 'vfio_devices' (a list of {bdf, model})")
        devices = [
            DutDevice(host=name, bdf=d.bdf, model=d.model, scratch=d.scratch)
            for d in spec.vfio_devices
        ]
        return Host(name=name, vars=hvars, vm=None, devices=devices)
    if "vfio_devices" in hvars:
        raise ValueError("vfio_devices: a virtual host's devices come from vm_devices")
    vm = spec.vm_spec()
    return Host(name=name, vars=hvars, vm=vm, devices=vm_dut_devices(name, vm))


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
