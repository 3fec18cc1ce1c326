"""A lab session: the hosts of one run, provisioned on first use and restored at the end.

Plain Python, usable without pytest::

    with Lab.open("inventory/virtual.yml", work_dir=Path("/tmp/run")) as lab:
        host = lab.host("vdut0")
        with lab.lease(host.devices[0]) as dev:
            print(dev.call("probes.config_ids", bdf=dev.bdf))

Nothing here is a module-level singleton: a pytest-xdist worker owns its own Lab. A Lab owns
each host it drives through a lock held on the DUT (``vfio_hil.lab.ownership``: a run that
already owns the host, such as the ``vfio-hil run`` around a pytest worker, is joined), and
holds a device through a lease of its IOMMU group, held on the DUT as well.

A host whose channel breaks is lost: it is noticed once, and every later use of it raises
:class:`HostLostError` at once with the same reason (QEMU's end and the console's tail for a
virtual host, the SSH error for a real one).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from vfio_hil.dut.iommu_state import IommuState, VfioDomain
from vfio_hil.lab.ansible.library.vfio_hil_facts import cpu_model
from vfio_hil.lab.channel import ChannelLost, DutChannel, LocalDutChannel, SshDutChannel
from vfio_hil.lab.errors import ChannelError, HilError
from vfio_hil.lab.inventory import DutDevice, Host, Inventory, load_inventory
from vfio_hil.lab.ownership import DEFAULT_WAIT_S, Holder, LockKeeper, keeper_command
from vfio_hil.lab.provision import Provisioner, device_identity
from vfio_hil.lab.rack import VirtualRack
from vfio_hil.lab.report import new_run_id

#: Console lines that say the DUT's kernel died (panic) or went wrong (oops, BUG).
PANIC_RE = re.compile(r"Kernel panic|Oops|BUG: |general protection fault|Call Trace:")
#: Console lines kept in a lost host's reason.
CONSOLE_TAIL = 3


class Unusable(NamedTuple):
    """Why VFIO cannot drive a device at all: the ``reason`` its checks SKIP with, and the
    ``kind`` of that SKIP (``vfio_hil.lab.report.SKIP_KINDS``): ``covered`` where a platform
    check reports the cause (the reason names it), ``lab`` where the lab did not set the
    device up (not present, not on vfio-pci)."""

    kind: str
    reason: str


class HostLostError(ChannelError):
    """A host's session broke during the run: its remaining checks ERROR with this reason.

    ``panic`` holds the console lines of a kernel panic or oops seen since the check that
    was running began (that check FAILs on them), empty when the console showed none.
    """

    def __init__(self, reason: str, panic: list[str] | None = None) -> None:
        super().__init__(reason)
        self.panic = panic or []

    def again(self) -> HostLostError:
        """The same reason for a later use of the host: a new exception (re-raising one
        object would grow its traceback with every check), without the panic lines (they
        are the check's that was running)."""
        return HostLostError(str(self))


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
    #: Tells why the host is gone once its channel broke (set by the Lab).
    diagnose: Callable[[str, str], HostLostError] | None = None
    #: Marks where the host's console is when a check begins (set by the Lab).
    marker: Callable[[str], None] | None = None
    #: Why the host was lost, once it was.
    lost: HostLostError | None = None

    @property
    def name(self) -> str:
        """The inventory name of the host."""
        return self.host.name

    def call(self, func: str, **kwargs: Any) -> Any:
        """Run a DUT-side function on this host; HostLostError once its channel broke."""
        if self.lost is not None:
            raise self.lost.again()
        try:
            return self.channel.call(func, **kwargs)
        except ChannelLost as exc:
            raise self.lose(str(exc)) from None

    def lose(self, error: str) -> HostLostError:
        """Mark the host lost because of ``error`` and return why (diagnosed once: a host
        lost already keeps its first reason)."""
        if self.lost is None:
            self.lost = self.diagnose(self.name, error) if self.diagnose else HostLostError(error)
        return self.lost

    def begin_check(self) -> None:
        """A check begins on this host: a kernel panic its console shows from now on is that
        check's."""
        if self.marker is not None:
            self.marker(self.name)

    def vfio_unusable(self, bdf: str) -> Unusable | None:
        """Why VFIO cannot drive ``bdf`` on this platform at all, or None when it can.

        Covers what platform checks report (no IOMMU, no IOMMU group or a no-IOMMU group,
        interrupt remapping missing), so device checks can SKIP there instead of FAILing for
        a guarantee not theirs. Judged by the domain VFIO gets, not by the host drivers'
        default domains: with ``iommu=pt`` those are identity, and VFIO still isolates.
        """
        facts = self.platform.get("devices", {}).get(bdf)
        # First: the library refuses a no-IOMMU group unless asked for it by name.
        if facts is not None and facts.get("noiommu_group"):
            return Unusable(
                "covered",
                f"{bdf} is in no-IOMMU group {facts['iommu_group']} on {self.name}: nothing "
                "isolates its DMA (PLAT-001, PLAT-003)",
            )
        if self.platform.get("iommu", {}).get("kind") == "none":
            return Unusable("covered", f"no IOMMU on {self.name} (PLAT-001)")
        if facts is None:
            return Unusable("lab", f"{bdf} is not present on {self.name}")
        if facts.get("iommu_group") is None:
            return Unusable(
                "covered", f"{bdf} is in no IOMMU group: no working IOMMU on {self.name} (PLAT-001)"
            )
        if facts.get("driver") != "vfio-pci":
            return Unusable(
                "lab", f"{bdf} is not bound to vfio-pci (driver: {facts.get('driver')})"
            )
        domain = self.vfio_domain(bdf)
        refusal = domain.refusal or {}
        # type1 refuses an IOMMU without interrupt remapping unless unsafe interrupts are
        # allowed: that is PLAT-002's finding. Any other refusal is the check's own.
        if refusal.get("ioctl") == "VFIO_SET_IOMMU" and refusal.get("errno") == 1:
            return Unusable(
                "covered",
                f"VFIO_SET_IOMMU refused with EPERM on {self.name}: no interrupt "
                "remapping and unsafe interrupts not allowed (PLAT-002)",
            )
        if refusal.get("noiommu"):
            return Unusable("covered", f"{bdf} is in a no-IOMMU group on {self.name} (PLAT-001)")
        return None

    def noiommu_devices(self) -> list[str]:
        """The devices under test in no-IOMMU groups (vfio-pci made them in VFIO's no-IOMMU
        mode): in a group, yet isolated by nothing, so no check of groups or of IOMMU
        behaviour can judge them."""
        facts = self.platform.get("devices", {})
        return [d.bdf for d in self.devices if facts.get(d.bdf, {}).get("noiommu_group")]

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
        again: its IDs, class code, revision and PCIe Device Serial Number (``dsn``, None
        without one) from the platform facts of setup, and under ``identity`` what its DMA
        engine reported once a check probed it (NVMe: model, serial, firmware revision from
        Identify Controller)."""
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
        run_id: str | None = None,
        lock_wait: float = DEFAULT_WAIT_S,
    ) -> None:
        self.inventory = inventory
        self.work_dir = work_dir
        self.log = log
        self.rack = rack or VirtualRack(inventory, log=log)
        self.provisioner = Provisioner(inventory, self.rack, work_dir / "ansible", log)
        #: This run, as the DUTs' lock keepers record it.
        self.holder = Holder.this_process(run_id or new_run_id())
        self.lock_wait = lock_wait
        self._hosts: dict[str, HostSession] = {}
        self._failed: dict[str, HilError] = {}
        self._keepers: dict[str, LockKeeper] = {}
        self._console_marks: dict[str, int] = {}
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
            session = self._hosts[name]
            gone = self._keepers[name].lost()
            if gone:
                # Without its keeper the run no longer owns the host.
                session.lose(f"its lock keeper's {gone}")
            if session.lost is not None:
                raise session.lost.again()
            return session
        if name in self._failed:
            failed = self._failed[name]
            raise type(failed)(*failed.args)  # a new one: see HostLostError.again
        host = self.inventory.hosts[name]
        try:
            if host.virtual:
                self.rack.up([name])
            self.own(name)
            platform = self._setup(host)
            channel = self._open_channel(host)
        except HilError as exc:
            self._failed[name] = exc
            raise
        session = HostSession(
            host=host,
            platform=platform,
            channel=channel,
            devices=host.devices,
            diagnose=self._diagnose,
            marker=self.mark_console,
        )
        self._hosts[name] = session
        return session

    def own(self, name: str) -> str:
        """Own host ``name`` for this run (wait while another run holds it, up to
        ``lock_wait``; HostBusyError after); ``"held"`` or ``"joined"``. Once per host."""
        if name not in self._keepers:
            keeper = LockKeeper(name, self._keeper_command(self.inventory.hosts[name]), self.log)
            try:
                how = keeper.own(self.holder, self.lock_wait)
            except BaseException:
                keeper.close()
                raise
            self._keepers[name] = keeper
            self.log(
                f"{name}: {'owned' if how == 'held' else 'joined'} by run {self.holder.run_id}"
            )
            return how
        return "joined"

    def _keeper_command(self, host: Host) -> list[str]:
        if host.vars.get("ansible_connection") == "local":
            return keeper_command(None, str(host.vars.get("ansible_python_interpreter", "python3")))
        if host.virtual:
            target = self.rack.ssh_target(host.name)
            return keeper_command(
                ["ssh", "-F", str(target.ssh_config), host.name], "/usr/bin/python3"
            )
        return keeper_command(
            [*self._ssh(host), host.name],
            str(host.vars.get("ansible_python_interpreter", "/usr/bin/python3")),
        )

    @staticmethod
    def _ssh_config(host: Host) -> str:
        return os.path.expanduser(str(host.vars.get("vfio_hil_ssh_config", "~/.ssh/config")))

    def _ssh(self, host: Host) -> list[str]:
        """ssh with a real host's configuration file (none when it has none)."""
        config = self._ssh_config(host)
        return ["ssh", "-F", config] if os.path.exists(config) else ["ssh"]

    def _diagnose(self, name: str, error: str) -> HostLostError:
        """Why host ``name`` is gone, after its channel broke with ``error``: whether QEMU
        still runs and the console's last lines (a virtual host), or whether SSH still reaches
        it (a real one). Console lines of a kernel panic or oops go into ``panic``."""
        host = self.inventory.hosts[name]
        if host.virtual:
            status = self.rack.status(host)
            console = self.rack.console_since(name, self._console_marks.get(name, 0))
            panic = [line for line in console if PANIC_RE.search(line)]
            tail = "; ".join(console[-CONSOLE_TAIL:]) or "nothing new"
            if not status.running:
                last = self.rack.qemu_log_tail(name)
                why = "QEMU exited" + (f" (the last line of its log: {last})" if last else "")
            else:
                why = f"its channel broke ({error})"
            reason = f"{name} lost: {why}; console: {tail}"
            return HostLostError(reason, panic)
        probe = subprocess.run(
            [*self._ssh(host), "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", host.name,
             "true"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        ssh = (probe.stderr.strip().splitlines() or ["it answers"])[-1]
        return HostLostError(f"{name} lost: its channel broke ({error}); ssh: {ssh}")

    def mark_console(self, name: str) -> None:
        """Remember where a virtual host's console is now: a panic seen after this mark is
        the running check's."""
        host = self.inventory.hosts[name]
        if host.virtual:
            self._console_marks[name] = self.rack.console_size(name)

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
            self._ssh_config(host),
            python=str(host.vars.get("ansible_python_interpreter", "/usr/bin/python3")),
        )

    @contextlib.contextmanager
    def lease(self, device: DutDevice) -> Iterator[DeviceLease]:
        """Hold ``device``'s IOMMU group exclusively, through a lock on its DUT (so against
        every process of every controller); a device in no group is held alone."""
        session = self.host(device.host)
        group = session.platform.get("devices", {}).get(device.bdf, {}).get("iommu_group")
        key = f"group-{group}" if group is not None else f"device-{device.bdf}"
        keeper = self._keepers[device.host]
        try:
            keeper.lease(key, self.holder, self.lock_wait)
        except ChannelError as exc:
            # Without its keeper the run no longer owns the host: lost, noticed once.
            raise session.lose(f"its lock keeper's {exc}") from None
        try:
            yield DeviceLease(device=device, host=session)
        finally:
            if keeper.lost() is None:
                keeper.release(key)

    def close(self) -> None:
        """Close every channel, give every device back to its original driver, then give
        up the hosts. A lost host is not torn down (nothing answers there)."""
        errors = []
        lost = {name for name, s in self._hosts.items() if s.lost is not None}
        for session in self._hosts.values():
            with contextlib.suppress(HilError):
                session.channel.close()
        touched = sorted(self._touched - lost)
        if touched:
            try:
                self.provisioner.teardown([self.inventory.hosts[n] for n in touched])
            except HilError as exc:
                errors.append(str(exc))
        for keeper in self._keepers.values():
            keeper.close()
        self._keepers.clear()
        self._hosts.clear()
        self._touched.clear()
        if errors:
            raise HilError("; ".join(errors))
