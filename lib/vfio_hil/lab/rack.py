"""The virtual rack: QEMU q35 machines with an emulated IOMMU and emulated PCI devices, booting
a Debian kernel (downloaded, or built from Debian's kernel source: :mod:`kernel_build`) with the
controller's filesystem as a read-only root, reached over SSH on a loopback port and managed over
QMP.

State lives in a rack folder, ``<rack>/<host>/`` (pid, QMP socket, console log, SSH keys and
config), so ``vfio-hil rack up`` in one process and ``vfio-hil run`` in another see the same
machines. The rack folder belongs to the checkout (``~/.cache/vfio-hil/racks/<checkout>``):
two clones with the same host names do not share machines, unless ``VFIO_HIL_HOME`` points
them at one shared lab home (its ``racks/``). Downloaded and built kernels are shared either
way.

Processes of one rack boot and stop machines under a lock of the rack folder, and every run
registers as a user of the machines it drives: a machine a run booted is stopped when the
last run using it ends, not under another run's feet.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from vfio_hil.lab import CHECKOUT
from vfio_hil.lab.errors import RackError, UsageError
from vfio_hil.lab.inventory import Host, Inventory
from vfio_hil.lab.kernel import KernelCache, KernelImage
from vfio_hil.lab.kernel_build import KernelBuilder, parse_build_spec

GUEST_INIT = Path(__file__).with_name("guest") / "guest-init.sh"
BOOT_TIMEOUT_S = 240.0
#: Machines booted at once.
BOOT_PARALLEL = max(2, os.cpu_count() or 2)
QEMU = "qemu-system-x86_64"

IOMMU_DEVICES = {"intel": "intel-iommu", "amd": "amd-iommu", "virtio": "virtio-iommu-pci"}
IOMMU_CMDLINE = {"intel": "intel_iommu=on", "amd": "", "virtio": "", "none": ""}
#: The root ports' slots are driven by native PCIe hotplug (pciehp), as a server's PCIe slots
#: are, not by QEMU's default ACPI hotplug (acpiphp). Under ACPI hotplug QEMU 7.2's
#: pcie-root-port advertises Data Link Layer Link Active Reporting (LnkCap LLActRep+) yet
#: reports its link down (LnkSta DLActive-) with a device up behind it, so after a secondary
#: bus reset pci_bridge_wait_for_secondary_bus() (drivers/pci/pci.c) waits for the link in vain
#: and gives up with ENOTTY: hot reset (RST-004) of a device with PM behind such a port fails,
#: which a conformant lab machine would not do. Under native hotplug the port reports DLActive+.
NATIVE_PCIE_HOTPLUG = "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"


def default_home() -> Path:
    """Where vfio-hil keeps kernels and rack state (``$VFIO_HIL_HOME``, else ~/.cache)."""
    env = os.environ.get("VFIO_HIL_HOME")
    return Path(env) if env else Path.home() / ".cache" / "vfio-hil"


def checkout_tag(root: Path | None = None) -> str:
    """A short name of the checkout (the folder holding this package's source): its folder
    name and a hash of its path, ``vfio-hil-1a2b3c4d``."""
    root = root or CHECKOUT
    name = re.sub(r"[^A-Za-z0-9._-]", "_", root.name)[:24]
    return f"{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def default_racks(home: Path) -> Path:
    """The rack folder: the shared lab home's ``racks/`` when ``VFIO_HIL_HOME`` names one,
    else one of this checkout's own under ``home``."""
    if os.environ.get("VFIO_HIL_HOME"):
        return home / "racks"
    return home / "racks" / checkout_tag()


@dataclass(frozen=True)
class SshTarget:
    """How to reach a DUT over SSH: ``ssh -F ssh_config alias``."""

    alias: str
    hostname: str
    port: int
    user: str
    key: Path
    ssh_config: Path


@dataclass(frozen=True)
class VmStatus:
    """One machine of the rack as seen now."""

    host: str
    running: bool
    pid: int | None
    ssh_port: int | None
    accel: str | None
    console: Path
    stale: bool = False


def qemu_command(
    host: Host, kernel: KernelImage, state: Path, ssh_port: int, accel: str
) -> list[str]:
    """The full QEMU command line of a virtual DUT."""
    vm = host.vm
    assert vm is not None
    cmdline = " ".join(
        a
        for a in (
            "console=ttyS0 panic=-1 loglevel=6",
            IOMMU_CMDLINE[vm.iommu],
            f"vfiohil.init={GUEST_INIT} vfiohil.state={state}",
            f"vfiohil.modules={kernel.modules_dir} vfiohil.hostname={host.name}",
            vm.kernel_cmdline,
        )
        if a
    )
    cmd = [
        QEMU, "-name", host.name, "-nodefaults", "-no-reboot",
        "-machine", f"q35,kernel-irqchip=split,accel={accel}",
        "-global", NATIVE_PCIE_HOTPLUG,
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", str(vm.memory_mb), "-smp", str(vm.cpus),
        "-display", "none", "-monitor", "none",
        "-serial", f"file:{state / 'console.log'}",
        "-qmp", f"unix:{state / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(state / "qemu.pid"),
        "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initrd), "-append", cmdline,
    ]  # fmt: skip
    if vm.iommu in IOMMU_DEVICES:
        dev = IOMMU_DEVICES[vm.iommu]
        cmd += ["-device", f"{dev},{vm.iommu_options}" if vm.iommu_options else dev]
    cmd += [
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot,addr=0x2",
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0,addr=0x3",
    ]  # fmt: skip
    multifunction = {d.slot for d in vm.devices if d.function}
    for dev in vm.devices:
        qid = dev.qemu_id
        if dev.hotplug:
            port = f"rp{dev.slot}"
            cmd += [
                "-device",
                f"pcie-root-port,id={port},chassis={dev.slot},slot={dev.slot},addr={dev.slot:#x}",
            ]
            where = f"bus={port}"
        else:
            where = f"addr={dev.slot:#x}.{dev.function:#x}"
            if dev.function == 0 and dev.slot in multifunction:
                where += ",multifunction=on"
        if dev.model == "nvme":
            cmd += ["-drive", f"driver=null-co,read-zeroes=on,if=none,id=drv{qid}"]
            cmd += ["-device", f"nvme,id={qid},{where},drive=drv{qid},serial=hil{qid}"]
        else:
            cmd += ["-device", f"{dev.model},id={qid},{where}"]
    return cmd + list(vm.qemu_args)


#: How often a boot picks a new SSH port when another program took the last one first.
PORT_ATTEMPTS = 3
#: What QEMU says when the port to forward SSH from is no longer free.
HOSTFWD_TAKEN = "Could not set up host forwarding rule"


class _PortTaken(RackError):
    """QEMU exited because its SSH forwarding port was taken: worth another port."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0).
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


class VirtualRack:
    """Boots, inspects and stops the virtual hosts of an inventory."""

    def __init__(
        self,
        inventory: Inventory,
        home: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.inventory = inventory
        self.home = home or default_home()
        self.racks = default_racks(self.home)
        self.log = log
        self.kernels = KernelCache(self.home / "kernels", log)
        self.kernel_builds = KernelBuilder(self.kernels)

    # -- queries -------------------------------------------------------------------------

    def kernel(self, name: str) -> KernelImage:
        """The kernel a host's ``vm_kernel`` names: a Debian kernel package, downloaded, or
        ``build:linux-source-<version>``, built (both once, then cached)."""
        if parse_build_spec(name):
            return self.kernel_builds.get(name)
        return self.kernels.get(name)

    def virtual_hosts(self, names: Iterable[str] | None = None) -> list[Host]:
        """The inventory's virtual hosts, optionally limited to ``names``."""
        hosts = [h for h in self.inventory.hosts.values() if h.virtual]
        if names is not None:
            wanted = set(names)
            unknown = wanted - {h.name for h in hosts}
            if unknown:
                names = ", ".join(sorted(unknown))
                raise UsageError(f"not a virtual host of the inventory: {names}")
            hosts = [h for h in hosts if h.name in wanted]
        return hosts

    def state_dir(self, host: str) -> Path:
        """The directory holding one machine's runtime state."""
        return self.racks / host

    def status(self, host: Host) -> VmStatus:
        """Whether ``host`` runs, and how to reach it."""
        state = self.state_dir(host.name)
        pid = self._pid(state)
        meta = self._meta(state)
        running = pid is not None
        stale = False
        if running and meta.get("host_vars_digest") != self._vars_digest(host):
            stale = True
        return VmStatus(
            host=host.name,
            running=running,
            pid=pid,
            ssh_port=meta.get("ssh_port") if running else None,
            accel=meta.get("accel") if running else None,
            console=state / "console.log",
            stale=stale,
        )

    def ssh_target(self, host: str) -> SshTarget:
        """The SSH coordinates of a running machine."""
        state = self.state_dir(host)
        meta = self._meta(state)
        if not meta or self._pid(state) is None:
            raise RackError(f"virtual host {host} is not running (vfio-hil rack up)")
        return SshTarget(
            alias=host,
            hostname="127.0.0.1",
            port=int(meta["ssh_port"]),
            user="root",
            key=self.racks / "id_ed25519",
            ssh_config=state / "ssh_config",
        )

    def qemu_version(self, host: str) -> str:
        """QEMU's version, asked over QMP."""
        reply = self.qmp(host, "query-version")
        q = reply["qemu"]
        return f"{q['major']}.{q['minor']}.{q['micro']}"

    def qmp(self, host: str, command: str, **args: object) -> dict:
        """Run one QMP command on a machine and return its result."""
        sock = self.state_dir(host) / "qmp.sock"
        mon = QEMUMonitorProtocol(str(sock))
        try:
            mon.connect()
            reply = mon.cmd_raw(command, args or None)
        except (OSError, EOFError, QMPError) as exc:
            raise RackError(f"QMP {command} on {host}: {exc or 'connection closed'}") from None
        finally:
            # After `quit` QEMU closes the socket under us: nothing left to say goodbye to.
            with contextlib.suppress(OSError, EOFError, QMPError):
                mon.close()
        if "error" in reply:
            raise RackError(f"QMP {command} on {host}: {reply['error'].get('desc')}")
        return reply.get("return", {})

    # -- up / down -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the rack folder's lock: one process boots or stops its machines at a time."""
        self.racks.mkdir(parents=True, exist_ok=True)
        with open(self.racks / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.log(f"waiting for another process booting or stopping {self.racks}")
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def up(self, names: Iterable[str] | None = None, persist: bool = False) -> list[VmStatus]:
        """Boot every (selected) virtual host that is not running; return their status.
        ``persist`` (``vfio-hil rack up``): the machines stay up until ``down``, even those a
        run booted and would have stopped at its end."""
        hosts = self.virtual_hosts(names)  # bad names end here, before anything changes
        with self._locked():
            statuses = self._up(names)
            if persist:
                for host in hosts:
                    (self.state_dir(host.name) / "transient").unlink(missing_ok=True)
            return statuses

    @contextlib.contextmanager
    def use(self, names: Iterable[str] | None = None, keep: bool = False) -> Iterator[list[str]]:
        """Boot the (selected) virtual hosts that are not running and use them while the
        context lasts; yields the names this call booted. At the end, a machine a run booted
        (unless ``keep``) is stopped once no live process uses it any more."""
        hosts = [h.name for h in self.virtual_hosts(names)]
        with self._locked():
            before = {n for n in hosts if self._pid(self.state_dir(n)) is not None}
            self._up(hosts)
            booted = [n for n in hosts if n not in before]
            for name in hosts:
                users = self.state_dir(name) / "users"
                users.mkdir(exist_ok=True)
                (users / str(os.getpid())).touch()
                marker = self.state_dir(name) / "transient"
                if keep:
                    marker.unlink(missing_ok=True)
                elif name in booted:
                    marker.touch()
        try:
            yield booted
        finally:
            with self._locked():
                for name in hosts:
                    self._leave(name)

    def _leave(self, name: str) -> None:
        """This process stops using ``name``; stop it when a run booted it and no live
        process uses it any more."""
        users = self.state_dir(name) / "users"
        (users / str(os.getpid())).unlink(missing_ok=True)
        live = []
        for entry in users.iterdir() if users.is_dir() else ():
            if entry.name.isdigit() and _pid_alive(int(entry.name)):
                live.append(entry.name)
            else:
                entry.unlink(missing_ok=True)
        if live:
            self.log(f"{name}: left running for processes {', '.join(live)} using it")
        elif (self.state_dir(name) / "transient").exists():
            self._stop(name)

    def _up(self, names: Iterable[str] | None = None) -> list[VmStatus]:
        """Boot every (selected) virtual host that is not running; return their status.

        Machines boot in parallel, as many at once as the controller has CPUs (a TCG boot
        keeps one busy); their kernels, keys and the accelerator probe come first, one after
        the other. A machine whose inventory variables changed since it booted is restarted.
        If any machine fails to boot, the ones this call started are stopped again.
        """
        hosts = self.virtual_hosts(names)
        to_boot: list[tuple[Host, KernelImage]] = []
        for host in hosts:
            st = self.status(host)
            if st.running and not st.stale:
                continue
            if st.stale:
                self.log(f"{host.name}: inventory changed since boot, restarting")
                self._stop(host.name)
            assert host.vm is not None
            to_boot.append((host, self.kernel(host.vm.kernel)))
        if not to_boot:
            return [self.status(h) for h in hosts]
        # What the boots share is made here, once: the accelerator probe and the keys.
        if any(c.isspace() for c in str(self.racks)):
            raise RackError(f"rack folder {self.racks} holds white space; set VFIO_HIL_HOME")
        accel = self.accel()
        for host, _ in to_boot:
            state = self.state_dir(host.name)
            state.mkdir(parents=True, exist_ok=True)
            self._ensure_keys(state)
        try:
            with ThreadPoolExecutor(max_workers=BOOT_PARALLEL) as pool:
                futures = [pool.submit(self._boot, h, kernel, accel) for h, kernel in to_boot]
                for future in as_completed(futures):
                    future.result()
            return [self.status(h) for h in hosts]
        except BaseException:
            # Every future has finished (the pool waited): stop whatever did come up.
            for host, _ in to_boot:
                self._stop(host.name)
            raise

    def down(self, names: Iterable[str] | None = None) -> list[str]:
        """Stop every (selected) running virtual host; return the names stopped."""
        stopped = []
        hosts = self.virtual_hosts(names)
        with self._locked():
            for host in hosts:
                if self._pid(self.state_dir(host.name)) is not None:
                    self._stop(host.name)
                    stopped.append(host.name)
        return stopped

    def console_size(self, host: str) -> int:
        """How long a machine's console log is now (a mark for :meth:`console_since`)."""
        with contextlib.suppress(OSError):
            return (self.state_dir(host) / "console.log").stat().st_size
        return 0

    def console_since(self, host: str, mark: int) -> list[str]:
        """The console lines a machine printed after ``mark`` (at most the last 64 KiB)."""
        try:
            with open(self.state_dir(host) / "console.log", "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(mark, size - 65536))
                text = fh.read().decode(errors="replace")
        except OSError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]

    def qemu_log_tail(self, host: str) -> str:
        """The last line QEMU wrote to its own log, "" when it wrote none."""
        with contextlib.suppress(OSError):
            lines = (self.state_dir(host) / "qemu.log").read_text(errors="replace").splitlines()
            return next((line.strip() for line in reversed(lines) if line.strip()), "")
        return ""

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _meta(state: Path) -> dict:
        try:
            return json.loads((state / "meta.json").read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _pid(state: Path) -> int | None:
        try:
            pid = int((state / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    @staticmethod
    def _vars_digest(host: Host) -> str:
        blob = json.dumps(asdict(host.vm) if host.vm else {}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _ensure_keys(self, state: Path) -> None:
        racks = self.racks
        key = racks / "id_ed25519"
        if not key.exists():
            racks.mkdir(parents=True, exist_ok=True)
            self._keygen(key, "vfio-hil rack")
        host_key = state / "ssh_host_ed25519_key"
        if not host_key.exists():
            self._keygen(host_key, "vfio-hil dut")

    @staticmethod
    def _keygen(path: Path, comment: str) -> None:
        try:
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                check=True,
                capture_output=True,
            )
        except FileNotFoundError:
            raise RackError("ssh-keygen is not installed (apt package openssh-client)") from None

    def _write_ssh_files(self, host: str, state: Path, port: int) -> None:
        key = self.racks / "id_ed25519"
        (state / "authorized_keys").write_text((key.with_suffix(".pub")).read_text())
        (state / "sshd_config").write_text(
            "\n".join(
                [
                    "Port 22",
                    f"HostKey {state / 'ssh_host_ed25519_key'}",
                    f"AuthorizedKeysFile {state / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    # root's password is locked on the shared root; PAM accepts a key login.
                    "UsePAM yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    # The rack state may live below a group-writable directory.
                    "StrictModes no",
                    "UseDNS no",
                    "PidFile /run/sshd.pid",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        pub = (state / "ssh_host_ed25519_key.pub").read_text().split()
        (state / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        (state / "ssh_config").write_text(
            "\n".join(
                [
                    f"Host {host}",
                    "  HostName 127.0.0.1",
                    f"  Port {port}",
                    "  User root",
                    f"  IdentityFile {key}",
                    "  IdentitiesOnly yes",
                    f"  UserKnownHostsFile {state / 'known_hosts'}",
                    "  StrictHostKeyChecking yes",
                    "  LogLevel ERROR",
                    "  ConnectTimeout 20",
                    "  ServerAliveInterval 15",
                    "",
                ]
            )
        )

    def accel(self) -> str:
        """``kvm`` when a KVM guest boots on this machine, else ``tcg``. Probed once, cached.

        ``VFIO_HIL_ACCEL`` forces one. The probe boots the initramfs alone, which powers off
        at once; a KVM that fails or hangs falls back to TCG.
        """
        forced = os.environ.get("VFIO_HIL_ACCEL")
        if forced in ("kvm", "tcg"):
            return forced
        cache = self.home / "accel.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(json.loads(cache.read_text())["accel"])
        accel = "tcg"
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            kernel = self.kernel(self._first_kernel())
            try:
                proc = subprocess.run(
                    [QEMU, "-nodefaults", "-no-reboot", "-display", "none",
                     "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256",
                     "-serial", "stdio", "-kernel", str(kernel.vmlinuz),
                     "-initrd", str(kernel.initrd), "-append", "console=ttyS0 vfiohil.probe=1"],
                    capture_output=True, text=True, timeout=30, check=False,
                )  # fmt: skip
                if "VFIOHIL-PROBE-OK" in proc.stdout:
                    accel = "kvm"
            except subprocess.TimeoutExpired:
                pass
        self.log(f"accelerator: {accel} (probed; set VFIO_HIL_ACCEL to force)")
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"accel": accel}))
        return accel

    def _first_kernel(self) -> str:
        for host in self.virtual_hosts():
            assert host.vm is not None
            return host.vm.kernel
        raise RackError("the inventory has no virtual host")

    def _boot(self, host: Host, kernel: KernelImage, accel: str) -> None:
        """Boot one machine whose state folder and keys :meth:`up` has made."""
        assert host.vm is not None
        state = self.state_dir(host.name)
        # A machine starts unmarked: the run that boots it marks it (VirtualRack.use).
        for name in ("qemu.pid", "qmp.sock", "console.log", "meta.json", "transient"):
            with contextlib.suppress(FileNotFoundError):
                (state / name).unlink()
        self.log(
            f"{host.name}: booting ({accel}, {host.vm.iommu} IOMMU, kernel {kernel.release}, "
            f"{len(host.vm.devices)} test devices)"
        )
        start = time.monotonic()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                port = self._start(host, kernel, state, accel)
                break
            except _PortTaken as taken:
                # Another program bound the port between our probe and QEMU's bind (racks
                # booting in parallel): a new port, not a failed boot.
                if attempt == PORT_ATTEMPTS:
                    raise RackError(str(taken)) from None
                self.log(f"{host.name}: {taken}; retrying with another port")
        self.log(f"{host.name}: up in {time.monotonic() - start:.1f} s, ssh 127.0.0.1:{port}")

    def _start(self, host: Host, kernel: KernelImage, state: Path, accel: str) -> int:
        """Start QEMU with SSH forwarded from a free loopback port and wait until the guest
        answers there; return the port. Nothing is left running if it fails."""
        port = _free_port()
        self._write_ssh_files(host.name, state, port)
        cmd = qemu_command(host, kernel, state, port, accel)
        (state / "qemu.cmdline").write_text(" ".join(cmd) + "\n")
        with open(state / "qemu.log", "w") as err:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
            )
        meta = {
            "ssh_port": port,
            "accel": accel,
            "kernel": kernel.package,
            "kernel_release": kernel.release,
            "host_vars_digest": self._vars_digest(host),
        }
        (state / "meta.json").write_text(json.dumps(meta))
        try:
            self._wait_ready(host.name, proc, state, time.monotonic())
        except BaseException:
            self._kill(proc.pid)
            raise
        return port

    def _wait_ready(self, host: str, proc: subprocess.Popen, state: Path, start: float) -> None:
        console = state / "console.log"
        next_note = start + 30
        while True:
            if proc.poll() is not None:
                err = (state / "qemu.log").read_text().strip().splitlines()
                reason = err[-1] if err else f"exit status {proc.returncode}"
                if HOSTFWD_TAKEN in reason:
                    raise _PortTaken(f"{host}: QEMU could not bind its SSH port: {reason}")
                raise RackError(f"{host}: QEMU exited during boot: {reason} (console: {console})")
            text = console.read_text(errors="replace") if console.exists() else ""
            if "VFIOHIL-BOOT-FAILED" in text:
                line = text.split("VFIOHIL-BOOT-FAILED:", 1)[1].splitlines()[0].strip()
                raise RackError(f"{host}: guest boot failed: {line} (console: {console})")
            if "VFIOHIL-READY" in text and self._ssh_ok(host, state):
                return
            now = time.monotonic()
            if now - start > BOOT_TIMEOUT_S:
                raise RackError(
                    f"{host}: not reachable over SSH {BOOT_TIMEOUT_S:.0f} s after QEMU started "
                    f"(console: {console})"
                )
            if now > next_note:
                self.log(f"{host}: still booting ({now - start:.0f} s)")
                next_note = now + 30
            time.sleep(0.25)

    @staticmethod
    def _ssh_ok(host: str, state: Path) -> bool:
        proc = subprocess.run(
            ["ssh", "-F", str(state / "ssh_config"), "-o", "BatchMode=yes", host, "true"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        return proc.returncode == 0

    def _stop(self, host: str) -> None:
        state = self.state_dir(host)
        # Whether it still runs or died on its own, it is nobody's to stop any more.
        (state / "transient").unlink(missing_ok=True)
        pid = self._pid(state)
        if pid is None:
            return
        with contextlib.suppress(RackError):
            self.qmp(host, "quit")
        self._kill(pid)
        self.log(f"{host}: stopped")

    @staticmethod
    def _kill(pid: int) -> None:
        deadline = time.monotonic() + 10
        sig = signal.SIGTERM
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
