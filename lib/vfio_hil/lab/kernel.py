"""Debian kernels for the virtual rack: fetched from the Debian archive, cached, and given a
tiny initramfs that mounts the controller's filesystem (read-only, over 9p) as the guest root.

Nothing is installed on the controller: the kernel packages are downloaded with ``apt-get
download`` and unpacked into the cache. A second boot of the same kernel does no apt work.

Debian ships a kernel in one of two layouts, both handled alike:

- one ``linux-image-<flavour>`` package with ``/boot/vmlinuz-<release>`` and
  ``/lib/modules/<release>`` (bookworm's 6.1, bookworm-backports' 6.12);
- a ``linux-image-<flavour>`` package without files that depends on ``linux-base-<flavour>``
  (``config``, ``modules.builtin``), ``linux-binary-<flavour>``
  (``/usr/lib/modules/<release>/vmlinuz``) and ``linux-modules-<flavour>`` (the modules,
  xz-compressed) (the 7.x kernels of sid, experimental and trixie-backports).

The packages of a kernel are the ``linux-image-<flavour>`` package and every package named
``linux-*-<flavour>`` it depends on, directly or not; they are unpacked into one folder.

Kernels the rack builds from Debian's kernel source (:mod:`vfio_hil.lab.kernel_build`) are
installed in the same layout and prepared by the same :meth:`KernelCache.prepare`.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfio_hil.lab.errors import RackError

# What the initramfs needs to reach the root filesystem: virtio PCI transport, 9p over virtio,
# and overlayfs (a RAM layer that makes the read-only root writable for the guest).
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

_INIT = Path(__file__).with_name("guest") / "initramfs-init.sh"


@dataclass(frozen=True)
class KernelImage:
    """An unpacked Debian kernel with its modules and our initramfs."""

    package: str
    release: str
    vmlinuz: Path
    modules_dir: Path
    initrd: Path


def run_tool(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    """The output of ``cmd``; RackError naming ``what`` and the command's last line when it
    fails, or naming the tool when it is not installed."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RackError(f"{what}: '{cmd[0]}' is not installed (run 'make deps')") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RackError(f"{what}: {' '.join(cmd)} failed: {tail[0]}")
    return proc.stdout


def query_tool(cmd: list[str]) -> str:
    """The output of a read-only query (apt-cache, dpkg-query), or ``""`` where it fails (an
    unknown package)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


class KernelCache:
    """Fetches, unpacks and prepares Debian kernel packages under ``root``."""

    def __init__(self, root: Path, log: Callable[[str], None]) -> None:
        self.root = root
        self.log = log
        self._apt_updated = False

    def get(self, package: str) -> KernelImage:
        """The kernel for ``package`` (a Debian package name, optionally ``name/release``),
        downloading and preparing it on first use."""
        record = self.record_path(package)
        image = self.cached(record)
        if image:
            return image
        name, _, release = package.partition("/")
        concrete = self._resolve(name, release)
        rec = self._unpack(concrete, self._packages(concrete, release), release)
        return self.prepare(record, rec)

    def record_path(self, name: str) -> Path:
        """Where the cache record of the kernel called ``name`` is kept."""
        return self.root / (re.sub(r"[^A-Za-z0-9.+-]", "_", name) + ".json")

    def cached(self, record: Path) -> KernelImage | None:
        """The kernel ``record`` describes, if its vmlinuz and initramfs are there."""
        if not record.is_file():
            return None
        image = self._image(json.loads(record.read_text()))
        return image if image.initrd.is_file() and image.vmlinuz.is_file() else None

    def prepare(self, record: Path, rec: dict[str, Any]) -> KernelImage:
        """Give the kernel unpacked as ``rec`` (see :func:`kernel_layout`) its initramfs, and
        write ``rec`` to ``record`` so the next call finds it."""
        image = self._image(rec)
        self._build_initramfs(image)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(rec))
        return image

    def _image(self, rec: dict[str, Any]) -> KernelImage:
        """The kernel a cache record describes. ``vmlinuz`` and ``modules_dir`` are relative to
        the package's folder; records written before the split layouts lack them and stand for
        the single-package layout."""
        base = self.root / rec["package"]
        release = rec["release"]
        return KernelImage(
            package=rec["package"],
            release=release,
            vmlinuz=base / rec.get("vmlinuz", f"boot/vmlinuz-{release}"),
            modules_dir=base / rec.get("modules_dir", f"lib/modules/{release}"),
            initrd=base / "vfio-hil-initrd.gz",
        )

    def apt_options(self, release: str) -> list[str]:
        """apt options for packages of ``release`` (e.g. ``bookworm-backports``; ``""``: the
        controller's own apt configuration).

        The controller's apt configuration is left alone: a private view lists only that
        suite, from the Debian mirror the controller already uses.
        """
        if not release:
            return []
        view = self.root / "apt" / release
        for d in ("lists/partial", "cache/archives/partial"):
            (view / d).mkdir(parents=True, exist_ok=True)
        uri, keyring = debian_mirror()
        (view / "sources.list").write_text(f"deb [signed-by={keyring}] {uri} {release} main\n")
        opts = [
            f"-oDir::Etc::SourceList={view / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={view / 'lists'}",
            f"-oDir::Cache={view / 'cache'}",
        ]
        with self.apt_lock():
            if not any((view / "lists").glob("*Packages*")):
                self.log(f"fetching the package lists of {release}")
                run_tool(["apt-get", *opts, "update", "-q"], f"apt-get update for {release}")
        return opts

    @contextlib.contextmanager
    def apt_lock(self) -> Iterator[None]:
        """Hold the cache's apt lock: one apt-get update or download at a time, whichever
        process asks (a rack booting while another builds its kernel, CI runners sharing the
        cache), since apt refuses to run beside itself on the same lists."""
        lock_path = self.root / "apt" / ".lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _apt_cache_depends(self, name: str, release: str) -> str:
        return query_tool(["apt-cache", *self.apt_options(release), "depends", name])

    def _resolve(self, name: str, release: str) -> str:
        """Follow a metapackage (``linux-image-amd64``) to the versioned image package."""
        for _ in range(4):
            if re.match(r"^linux-image-\d", name) and not name.endswith("-unsigned"):
                return name
            out = self._apt_cache_depends(name, release)
            if not out and not release and not self._apt_updated:
                self.log("apt lists do not know the kernel package yet: running apt-get update")
                with self.apt_lock():
                    run_tool(["apt-get", "update", "-q"], "apt-get update")
                self._apt_updated = True
                out = self._apt_cache_depends(name, release)
            if not out:
                raise RackError(f"kernel package {name!r} is not in the Debian archive")
            deps = re.findall(r"Depends: (linux-image-[^\s<>]+)", out)
            if not deps:
                raise RackError(f"kernel package {name!r} names no linux-image package")
            name = deps[0]
        raise RackError(f"kernel package {name!r}: metapackage chain too long")

    def _packages(self, image: str, release: str) -> list[str]:
        """The packages that make up the kernel of ``image`` (a ``linux-image-<flavour>``
        package): ``image`` first, then every ``linux-*-<flavour>`` package it depends on,
        directly or not (see the module's docstring)."""
        flavour = image[len("linux-image-") :]
        found = [image]
        todo = [image]
        while todo:
            out = self._apt_cache_depends(todo.pop(0), release)
            for dep in re.findall(r"Depends: (linux-[^\s<>]+)", out):
                if dep.endswith(f"-{flavour}") and dep not in found:
                    found.append(dep)
                    todo.append(dep)
        return found

    def _unpack(self, image: str, packages: list[str], release: str) -> dict[str, Any]:
        """Download ``packages`` (the kernel of ``image``) and unpack them into one folder;
        the cache record of the result."""
        dest = self.root / image
        with tempfile.TemporaryDirectory(prefix="vfio-hil-kernel-") as tmp:
            debs = self.download(packages, release, Path(tmp))
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            for pkg in packages:
                run_tool(["dpkg-deb", "-x", str(debs[pkg]), str(dest)], f"unpacking {pkg}")
        rec = kernel_layout(dest, image, packages)
        # depmod (kmod 30, bookworm) reads <base>/lib/modules; merged-/usr kernels ship
        # usr/lib/modules, so the folder gets the symlink a merged-/usr system has.
        lib_modules = dest / "lib" / "modules"
        if not lib_modules.exists():
            lib_modules.parent.mkdir(exist_ok=True)
            lib_modules.symlink_to(Path("..") / "usr" / "lib" / "modules")
        run_tool(["depmod", "-b", str(dest), rec["release"]], f"depmod for {image}")
        return rec

    def download(self, packages: list[str], release: str, into: Path) -> dict[str, Path]:
        """Download ``packages`` of ``release`` (``""``: the controller's own suites) from the
        Debian archive into ``into``; their .deb files by package name."""
        names = " ".join(packages)
        self.log(f"downloading package(s) {names} from the Debian archive")
        opts = self.apt_options(release)
        with self.apt_lock():
            run_tool(
                ["apt-get", *opts, "download", "-q", "-oAPT::Sandbox::User=root", *packages],
                f"download of {names}",
                cwd=into,
            )
        debs = {deb.name.split("_")[0]: deb for deb in into.glob("*.deb")}
        missing = [p for p in packages if p not in debs]
        if missing:
            raise RackError(f"download of {names}: apt-get left no .deb of {missing}")
        return debs

    def _build_initramfs(self, image: KernelImage) -> None:
        busybox = shutil.which("busybox")
        if not busybox:
            raise RackError("busybox is not installed (apt package busybox-static)")
        modules = initramfs_module_order(image.modules_dir, INITRAMFS_MODULES)
        with tempfile.TemporaryDirectory(prefix="vfio-hil-initrd-") as tmp:
            root = Path(tmp)
            for d in ("bin", "mods", "proc", "sys", "dev", "lower", "layer", "newroot"):
                (root / d).mkdir()
            shutil.copy2(busybox, root / "bin" / "busybox")
            order = []
            for rel_path in modules:
                out_name = Path(rel_path).name.split(".ko")[0] + ".ko"
                (root / "mods" / out_name).write_bytes(_module_bytes(image.modules_dir / rel_path))
                order.append(out_name)
            (root / "mods" / "order").write_text("\n".join(order) + "\n")
            shutil.copy2(_INIT, root / "init")
            os.chmod(root / "init", 0o755)
            listing = subprocess.run(
                ["find", "."], cwd=root, capture_output=True, check=True
            ).stdout
            cpio = subprocess.run(
                [busybox, "cpio", "-o", "-H", "newc"],
                cwd=root,
                input=listing,
                capture_output=True,
                check=False,
            )
            if cpio.returncode != 0:
                raise RackError(f"initramfs for {image.release}: busybox cpio failed")
            image.initrd.write_bytes(gzip.compress(cpio.stdout, compresslevel=1))


def debian_codename() -> str:
    """The controller's Debian release (``bookworm``), or ``""`` where /etc/os-release lacks it."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip('"')
    return ""


def debian_mirror() -> tuple[str, str]:
    """The Debian archive URI the controller's apt uses for its own release, and its keyring."""
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    codename = debian_codename()
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
            )
            suites = fields.get("Suites", "").split()
            if codename in suites and "URIs" in fields:
                return fields["URIs"].split()[0], fields.get("Signed-By", keyring).strip()
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == codename:
                return parts[1], keyring
    raise RackError(f"no Debian mirror for {codename or 'this release'} in the apt sources")


def kernel_layout(dest: Path, image: str, packages: list[str]) -> dict[str, Any]:
    """The cache record of the kernel unpacked into ``dest``: its release, and where its
    vmlinuz and modules are (relative to ``dest``), in whichever layout its packages have."""
    names = ", ".join(packages)
    found = [
        p.relative_to(dest)
        for top in ("lib/modules", "usr/lib/modules")
        if (dest / top).is_dir()
        for p in sorted((dest / top).iterdir())
        if p.is_dir()
    ]
    if len(found) != 1:
        what = ", ".join(map(str, found)) or "none"
        raise RackError(
            f"{image}: expected one kernel release folder under lib/modules or usr/lib/modules "
            f"of {names}, found {what}"
        )
    modules_dir = dest / found[0]
    release = modules_dir.name
    if next(modules_dir.glob("kernel/**/*.ko*"), None) is None:
        raise RackError(f"{image}: no kernel modules (kernel/**/*.ko*) for {release} in {names}")
    for vmlinuz in (dest / "boot" / f"vmlinuz-{release}", modules_dir / "vmlinuz"):
        if vmlinuz.is_file():
            break
    else:
        raise RackError(
            f"{image}: no vmlinuz for {release} (boot/vmlinuz-{release} or "
            f"{modules_dir.relative_to(dest)}/vmlinuz) in {names}"
        )
    return {
        "package": image,
        "release": release,
        "vmlinuz": str(vmlinuz.relative_to(dest)),
        "modules_dir": str(modules_dir.relative_to(dest)),
        "packages": packages,
    }


def initramfs_module_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Paths (relative to ``modules_dir``) of ``wanted`` modules and their dependencies, each
    after everything it depends on. Built-in modules are left out."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    builtin = set()
    builtin_file = modules_dir / "modules.builtin"
    if builtin_file.is_file():
        builtin = {_module_name(p) for p in builtin_file.read_text().split()}
    ordered: list[str] = []

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in ordered:
            return
        if path in stack:
            raise RackError(f"modules.dep of {modules_dir} has a dependency cycle at {path}")
        for dep in deps.get(path, []):
            visit(dep, (*stack, path))
        ordered.append(path)

    for name in wanted:
        if name in builtin:
            continue
        if name not in by_name:
            raise RackError(f"kernel {modules_dir.name} has no module {name}")
        visit(by_name[name], ())
    return ordered


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    """A module's ELF bytes; busybox insmod takes no compressed modules."""
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".zst":
        if not shutil.which("zstd"):
            raise RackError(f"{path.name} is zstd-compressed: install the zstd package")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()
