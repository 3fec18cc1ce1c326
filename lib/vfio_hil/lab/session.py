"""A lab session: the hosts of one run, provisioned on first use and restored at the end.

Plain Python, usable without pytest::

    with Lab.open("inventory/virtual.yml", work_dir=Path("/tmp/run")) as lab:
        host = lab.host("vdut0")
        with lab.lease(host.devices[0]) as dev:
            print(dev.call("probes.config_ids", bdf=dev.bdf))

Nothing here is a module-level singleton: a pytest-xdist worker owns its own Lab, and a
device is held through an explicit lease (an exclusive lock shared by every process on the
controller).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfio_hil.dut.iommu_state import IommuState, VfioDomain
from vfio_hil.lab.ansible.library.vfio_hil_facts import cpu_model
from vfio_hil.lab.channel import DutChannel, LocalDutChannel, SshDutChannel
from vfio_hil.lab.errors import HilError
from vfio_hil.lab.inventory import DutDevice, Host, Inventory, load_inventory
from vfio_hil.lab.provision import Provisioner, device_identity
from vfio_hil.lab.rack import VirtualRack


@dataclass
class HostSession:
    """A provisioned DUT host: its platform facts and an open channel."""

    host: Host
    platform: dict[str, Any]
    channel: DutChannel
    devices: list[DutDevice] = field(default_factory=list)
    _engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    _backends: dict[str, str] | None = None
    _domains: dict[str, VfioDomain] = field(default_factory=dict)
    _iommu_state: IommuState | None = None

    @property
    def name(self) -> str:
        """The inventory name of the host."""
        return self.host.name

    def call(self, func: str, **kwargs: Any) -> Any:
        """Run a DUT-side function on this host."""
        return self.channel.call(func, **kwargs)

    def vfio_unusable(self, bdf: str) -> str | None:
        """Why VFIO cannot drive ``bdf`` on this platform at all, or None when it can.

        Covers what platform checks report (no IOMMU, no IOMMU group, interrupt remapping
        missing), so device checks can SKIP there instead of FAILing for a guarantee not
        theirs. Judged by the domain VFIO gets, not by the host drivers' default domains:
        with ``iommu=pt`` those are identity, and VFIO still isolates.
        """
        if self.platform.get("iommu", {}).get("kind") == "none":
            return f"no IOMMU on {self.name} (PLAT-001)"
        facts = self.platform.get("devices", {}).get(bdf)
        if facts is None:
            return f"{bdf} is not present on {self.name}"
        if facts.get("iommu_group") is None:
            return f"{bdf} is in no IOMMU group: no working IOMMU on {self.name} (PLAT-001)"
        if facts.get("driver") != "vfio-pci":
            return f"{bdf} is not bound to vfio-pci (driver: {facts.get('driver')})"
        domain = self.vfio_domain(bdf)
        refusal = domain.refusal or {}
        # type1 refuses an IOMMU without interrupt remapping unless unsafe interrupts are
        # allowed: that is PLAT-002's finding. Any other refusal is the check's own.
        if refusal.get("ioctl") == "VFIO_SET_IOMMU" and refusal.get("errno") == 1:
            return (
                f"VFIO_SET_IOMMU refused with EPERM on {self.name}: no interrupt "
                "remapping and unsafe interrupts not allowed (PLAT-002)"
            )
        if refusal.get("noiommu"):
            return f"{bdf} is in a no-IOMMU group on {self.name} (PLAT-001)"
        return None

    def vfio_domain(self, bdf: str) -> VfioDomain:
        """The domain a VFIO IOMMU context gets for ``bdf``'s group (asked once per run)."""
        if bdf not in self._domains:
            self._domains[bdf] = VfioDomain.from_dict(self.call("iommu_state.vfio_domain", bdf=bdf))
        return self._domains[bdf]

    def iommu_state(self) -> IommuState:
        """The remapping units, command line and telling kernel log lines (asked once)."""
        if self._iommu_state is None:
            self._iommu_state = IommuState.from_dict(self.call("iommu_state.iommu_state"))
        return self._iommu_state

    def engine(self, bdf: str) -> dict[str, Any]:
        """The DMA engine ``bdf`` offers, as the DUT's probe found it (asked once per run):
        ``{"engine", "capabilities", "caps", "identity"}``."""
        if bdf not in self._engines:
            self._engines[bdf] = self.call("engines.describe", bdf=bdf)
        return self._engines[bdf]

    def device_identity(self, bdf: str) -> dict[str, Any]:
        """What ``bdf`` says it is, as far as this session learned it without asking the DUT
        again: its IDs, class code and revision from the platform facts of setup, and under
        ``identity`` what its DMA engine reported once a check probed it (NVMe: model,
        serial, firmware revision from Identify Controller)."""
        found: dict[str, Any] = device_identity(self.platform.get("devices", {}).get(bdf, {}))
        learned = self._engines.get(bdf, {}).get("identity")
        if learned:
            found["identity"] = learned
        return found

    def backends(self) -> dict[str, str]:
        """Every IOMMU backend and why the DUT cannot use it ("" where it can); asked once."""
        if self._backends is None:
            self._backends = self.call("engines.backends")
        return self._backends


@dataclass
class DeviceLease:
    """Exclusive use of one device under test for the life of the lease."""

    device: DutDevice
    host: HostSession

    @property
    def bdf(self) -> str:
        """The device's PCI address on its host."""
        return self.device.bdf

    def call(self, func: str, **kwargs: Any) -> Any:
        """Run a DUT-side function on the device's host."""
        return self.host.call(func, **kwargs)


class Lab:
    """The hosts of an inventory for one run."""

    def __init__(
        self,
        inventory: Inventory,
        work_dir: Path,
        rack: VirtualRack | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.inventory = inventory
        self.work_dir = work_dir
        self.log = log
        self.rack = rack or VirtualRack(inventory, log=log)
        self.provisioner = Provisioner(inventory, self.rack, work_dir / "ansible", log)
        self._hosts: dict[str, HostSession] = {}
        self._failed: dict[str, HilError] = {}
        # Hosts whose setup started: close() restores them even when setup failed halfway.
        self._touched: set[str] = set()

    @classmethod
    def open(cls, inventory: str | Path, work_dir: Path, **kwargs: Any) -> Lab:
        """A lab over the inventory file at ``inventory``."""
        return cls(load_inventory(inventory), work_dir, **kwargs)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> HostSession:
        """The provisioned session of host ``name``: boots it (virtual rack) and runs setup
        on first use. A host whose setup failed fails again at once with the same error."""
        if name in self._hosts:
            return self._hosts[name]
        if name in self._failed:
            raise self._failed[name]
        host = self.inventory.hosts[name]
        try:
            if host.virtual:
                self.rack.up([name])
            platform = self._setup(host)
            channel = self._open_channel(host)
        except HilError as exc:
            self._failed[name] = exc
            raise
        session = HostSession(host=host, platform=platform, channel=channel, devices=host.devices)
        self._hosts[name] = session
        return session

    def _setup(self, host: Host) -> dict[str, Any]:
        self._touched.add(host.name)
        platform = self.provisioner.setup(host)
        if host.virtual:
            platform["qemu_version"] = self.rack.qemu_version(host.name)
            platform["accel"] = self.rack.status(host).accel
            # A virtual host computes on the controller's CPU (under TCG, wholly): its
            # figures belong to that CPU as much as to the guest's, whose model is QEMU's.
            platform["vm_host_cpu_model"] = cpu_model(Path("/proc/cpuinfo").read_text())
        return platform

    def _open_channel(self, host: Host) -> DutChannel:
        if host.vars.get("ansible_connection") == "local":
            return LocalDutChannel(host.name)
        if host.virtual:
            target = self.rack.ssh_target(host.name)
            return SshDutChannel(host.name, str(target.ssh_config))
        return SshDutChannel(
            host.name,
            str(host.vars.get("vfio_hil_ssh_config", "~/.ssh/config")),
            python=str(host.vars.get("ansible_python_interpreter", "/usr/bin/python3")),
        )

    @contextlib.contextmanager
    def lease(self, device: DutDevice) -> Iterator[DeviceLease]:
        """Hold ``device`` exclusively (across processes on this controller)."""
        session = self.host(device.host)
        locks = self.rack.home / "leases"
        locks.mkdir(parents=True, exist_ok=True)
        path = locks / f"{device.host}_{device.bdf.replace(':', '-')}.lock"
        with open(path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield DeviceLease(device=device, host=session)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close every channel and give every device back to its original driver."""
        errors = []
        for session in self._hosts.values():
            with contextlib.suppress(HilError):
                session.channel.close()
        if self._touched:
            try:
                self.provisioner.teardown([self.inventory.hosts[n] for n in sorted(self._touched)])
            except HilError as exc:
                errors.append(str(exc))
        self._hosts.clear()
        self._touched.clear()
        if errors:
            raise HilError("; ".join(errors))
