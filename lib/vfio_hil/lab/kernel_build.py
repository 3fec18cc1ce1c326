"""Rack kernels built from Debian's ``linux-source-<version>`` package, for what no Debian
kernel enables: iommufd with VFIO device cdevs, and VFIO's no-IOMMU mode.

An inventory names one as ``vm_kernel: build:linux-source-6.12`` (optionally
``build:linux-source-6.12/<suite>``; without a suite, the controller's own release, then its
backports). The source package is downloaded the way :class:`~vfio_hil.lab.kernel.KernelCache`
downloads kernel packages (nothing is installed on the controller) and configured as
``x86_64_defconfig`` + ``kvm_guest.config`` + :data:`FRAGMENT` (what rack machines need). Every
option of the fragment is verified after ``olddefconfig``: Kconfig silently drops an option
whose dependencies are missing.

The result sits in the kernel cache beside the downloaded kernels, in the same layout
(``boot/vmlinuz-<release>``, ``lib/modules/<release>``) and with the same initramfs, so the
rack boots it exactly like a downloaded one. Its folder is named after a key of the build's
inputs (the source package and version, the fragment's options, :data:`RECIPE_VERSION`): a
change of an option or of the recipe builds anew (a comment does not), and a second call does
no apt work and no compile. The version is the one the archive offered at the first build;
remove the kernel's record (``<cache>/build_linux-source-<version>.json``) to take a newer
one.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfio_hil.lab.errors import RackError
from vfio_hil.lab.kernel import (
    KernelCache,
    KernelImage,
    debian_codename,
    kernel_layout,
    query_tool,
    run_tool,
)

#: The rack's additions to the base configuration (see the module's docstring).
FRAGMENT = Path(__file__).with_name("guest") / "rack-kernel.config"
#: Bumped whenever the build recipe changes what it builds, so cached builds are rebuilt.
RECIPE_VERSION = 1
#: The configuration targets the fragment is applied over, in order.
BASE_CONFIGS = ("x86_64_defconfig", "kvm_guest.config")
#: Appended to the kernel release (``6.12.95-vfio-hil``), telling it from Debian's builds.
LOCALVERSION = "-vfio-hil"
BUILD_PREFIX = "build:"
#: The Debian packages a kernel build needs on the controller (also in the Makefile's
#: ``DEB_PACKAGES``, installed by ``make deps``).
BUILD_PACKAGES = (
    "bc", "bison", "flex", "gcc", "make", "libc6-dev", "libelf-dev", "libssl-dev", "xz-utils",
    "kmod",
)  # fmt: skip
#: How often a running build reports its progress, in seconds.
PROGRESS_EVERY_S = 30.0

_SPEC = re.compile(r"build:(?P<source>linux-source-\d+\.\d+)(?:/(?P<suite>[a-z][a-z0-9.+-]*))?")
#: A line of Kbuild's output that names one step of the build (``  CC      kernel/fork.o``).
_KBUILD_STEP = re.compile(r"^  (?P<tool>[A-Z][A-Z0-9_\[\]]*) +(?P<target>\S+)$")
#: A line of a .config or fragment: an option's value, or an option left unset.
_OPTION = re.compile(r"^(?P<name>CONFIG_\w+)=(?P<value>.*)$|^# (?P<unset>CONFIG_\w+) is not set$")


@dataclass(frozen=True)
class BuildSpec:
    """A kernel to build, as an inventory names it: ``build:<source>[/<suite>]``."""

    source: str
    #: ``""``: the controller's release, then its backports.
    suite: str = ""


def parse_build_spec(text: str) -> BuildSpec | None:
    """The kernel to build that ``text`` names, or None when it names no build (a Debian kernel
    package); ValueError for a malformed ``build:`` value."""
    if not text.startswith(BUILD_PREFIX):
        return None
    match = _SPEC.fullmatch(text)
    if not match:
        raise ValueError(
            f"{text!r} names no kernel to build (expected build:linux-source-<major>.<minor>"
            "[/<suite>], e.g. build:linux-source-6.12)"
        )
    return BuildSpec(match["source"], match["suite"] or "")


def config_options(text: str) -> dict[str, str]:
    """The options a .config or fragment sets, ``{"CONFIG_X": "y"}``; an unset one is ``"n"``."""
    options = {}
    for line in text.splitlines():
        match = _OPTION.match(line.strip())
        if match and match["unset"]:
            options[match["unset"]] = "n"
        elif match:
            options[match["name"]] = match["value"]
    return options


def dropped_options(fragment: str, config: str) -> list[str]:
    """The options of ``fragment`` that ``config`` (the .config after ``olddefconfig``) does
    not have as asked, each as ``CONFIG_X=m (got y)``."""
    got = config_options(config)
    return [
        f"{name}={want} (got {got.get(name, 'n')})"
        for name, want in config_options(fragment).items()
        if got.get(name, "n") != want
    ]


def build_key(source: str, version: str, fragment: str, recipe: int = RECIPE_VERSION) -> str:
    """A short digest of a build's inputs (of the fragment, its options only); the build's
    cache folder is named after it."""
    inputs = json.dumps(
        {
            "source": source,
            "version": version,
            "fragment": config_options(fragment),
            "recipe": recipe,
            "base": BASE_CONFIGS,
            "localversion": LOCALVERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def missing_build_packages() -> list[str]:
    """The packages of :data:`BUILD_PACKAGES` that are not installed on the controller."""
    out = query_tool(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *BUILD_PACKAGES])
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in BUILD_PACKAGES if p not in installed]


class BuildSteps:
    """The work of a build outside this process (apt, dpkg-deb, tar, make), apart from the
    decisions, so that tests can record it."""

    def __init__(self, cache: KernelCache, log: Callable[[str], None]) -> None:
        self.cache = cache
        self.log = log

    def check_packages(self) -> None:
        """Raise RackError naming the build packages the controller lacks."""
        missing = missing_build_packages()
        if missing:
            raise RackError(
                f"building a rack kernel needs the Debian packages {' '.join(missing)} "
                "(run 'make deps')"
            )

    def locate(self, spec: BuildSpec) -> tuple[str, str]:
        """The suite that offers ``spec.source`` and the version it offers."""
        backports = f"{debian_codename()}-backports"
        suites = [spec.suite] if spec.suite else ["", backports]
        for suite in suites:
            opts = self.cache.apt_options(suite)
            out = query_tool(["apt-cache", *opts, "show", "--no-all-versions", spec.source])
            version = re.search(r"^Version: (\S+)", out, re.MULTILINE)
            if version:
                return suite, version[1]
        looked = ", ".join(s or "the controller's apt sources" for s in suites)
        raise RackError(f"{spec.source} is not in the Debian archive (looked in {looked})")

    def unpack_source(self, source: str, suite: str, work: Path) -> Path:
        """Download ``source`` into ``work`` and unpack its kernel tree; the tree's folder."""
        deb = self.cache.download([source], suite, work)[source]
        pkg = work / "package"
        run_tool(["dpkg-deb", "-x", str(deb), str(pkg)], f"unpacking {source}")
        tarballs = sorted((pkg / "usr" / "src").glob("linux-source-*.tar.xz"))
        if len(tarballs) != 1:
            raise RackError(
                f"{source}: expected one usr/src/linux-source-*.tar.xz, found {len(tarballs)}"
            )
        self.log(f"unpacking {tarballs[0].name}")
        run_tool(["tar", "-xf", str(tarballs[0]), "-C", str(work)], f"unpacking {tarballs[0].name}")
        shutil.rmtree(pkg)
        deb.unlink()
        return work / tarballs[0].name.removesuffix(".tar.xz")

    def configure(self, tree: Path, fragment: str) -> str:
        """Configure ``tree`` as :data:`BASE_CONFIGS` + ``fragment``; the resulting .config."""
        for target in BASE_CONFIGS:
            _make(tree, [target], f"make {target}")
        with (tree / ".config").open("a") as config:
            config.write("\n" + fragment)
        _make(tree, ["olddefconfig"], "make olddefconfig")
        return (tree / ".config").read_text()

    def compile(self, tree: Path) -> None:
        """Compile the kernel and its modules, niced, reporting progress every
        :data:`PROGRESS_EVERY_S` seconds."""
        cmd = _make_command(["bzImage", "modules", f"-j{os.cpu_count() or 1}"])
        start = last_report = time.monotonic()
        steps = 0
        last = "starting"
        tail: collections.deque[str] = collections.deque(maxlen=40)
        with subprocess.Popen(
            cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip())
                step = _KBUILD_STEP.match(line.rstrip())
                if step:
                    steps += 1
                    last = f"{step['tool']} {step['target']}"
                now = time.monotonic()
                if now - last_report >= PROGRESS_EVERY_S:
                    last_report = now
                    self.log(f"kernel build: {_minutes(now - start)}, {steps} steps, at {last}")
        if proc.returncode != 0:
            errors = [line for line in tail if "error" in line.lower()] or list(tail)[-1:]
            raise RackError(f"kernel build failed: {errors[0] if errors else 'no output'}")
        self.log(f"kernel build: compiled in {_minutes(time.monotonic() - start)} ({steps} steps)")

    def install(self, tree: Path, dest: Path) -> str:
        """Install the kernel and its modules into ``dest`` in Debian's layout; its release."""
        release = _make(tree, ["-s", "kernelrelease"], "make kernelrelease").strip()
        boot = dest / "boot"
        boot.mkdir(parents=True)
        shutil.copy2(tree / "arch" / "x86" / "boot" / "bzImage", boot / f"vmlinuz-{release}")
        shutil.copy2(tree / ".config", boot / f"config-{release}")
        _make(
            tree,
            ["modules_install", f"INSTALL_MOD_PATH={dest}", "INSTALL_MOD_STRIP=1"],
            "make modules_install",
        )
        return release


class KernelBuilder:
    """Builds rack kernels (:class:`BuildSpec`) into a :class:`KernelCache`'s folder."""

    def __init__(self, cache: KernelCache, steps: BuildSteps | None = None) -> None:
        self.cache = cache
        self.steps = steps or BuildSteps(cache, cache.log)

    def cached(self, text: str) -> KernelImage | None:
        """The kernel ``text`` names if the cache holds it built from today's inputs (then
        :meth:`get` builds nothing), else None."""
        return self._built(self.cache.record_path(text), _spec(text), FRAGMENT.read_text())

    def get(self, text: str) -> KernelImage:
        """The kernel ``text`` (``build:linux-source-<version>``) names, built on first use."""
        spec = _spec(text)
        fragment = FRAGMENT.read_text()
        record = self.cache.record_path(text)
        image = self._built(record, spec, fragment)
        if image:
            return image
        record.parent.mkdir(parents=True, exist_ok=True)
        # One build at a time: racks of other checkouts may share this cache.
        with record.with_suffix(".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            image = self._built(record, spec, fragment)
            if image:
                return image
            self.steps.check_packages()
            suite, version = self.steps.locate(spec)
            key = build_key(spec.source, version, fragment)
            rec = self._build(spec.source, suite, version, key, fragment)
            return self.cache.prepare(record, rec)

    def _built(self, record: Path, spec: BuildSpec, fragment: str) -> KernelImage | None:
        """The kernel ``record`` describes, if it was built from today's inputs."""
        recorded = _read_record(record)
        version = recorded.get("source_version", "")
        if version and recorded.get("key") == build_key(spec.source, version, fragment):
            return self.cache.cached(record)
        return None

    def _build(
        self, source: str, suite: str, version: str, key: str, fragment: str
    ) -> dict[str, Any]:
        """Build ``source`` ``version`` into its cache folder; the folder's cache record."""
        name = f"build-{source}-{key}"
        dest = self.cache.root / name
        work = self.cache.root / f"{name}.work"
        for stale in (dest, work):
            if stale.exists():
                shutil.rmtree(stale)
        work.mkdir(parents=True)
        self.cache.log(
            f"building a rack kernel from {source} {version} (once; cached as {dest.name})"
        )
        tree = self.steps.unpack_source(source, suite, work)
        dropped = dropped_options(fragment, self.steps.configure(tree, fragment))
        if dropped:
            raise RackError(
                f"kernel configuration of {source}: Kconfig dropped {', '.join(dropped)} "
                f"of {FRAGMENT.name} (a dependency is missing)"
            )
        self.steps.compile(tree)
        self.steps.install(tree, dest)
        shutil.rmtree(work)
        rec = kernel_layout(dest, name, [f"{source}={version}"])
        # modules_install links these into the build tree, which is gone now.
        for link in ("build", "source"):
            (dest / rec["modules_dir"] / link).unlink(missing_ok=True)
        return {**rec, "source_version": version, "key": key}


def _spec(text: str) -> BuildSpec:
    spec = parse_build_spec(text)
    if spec is None:
        raise RackError(f"{text!r} is not a kernel to build (build:linux-source-<version>)")
    return spec


def _read_record(record: Path) -> dict[str, Any]:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _make_command(args: list[str]) -> list[str]:
    """``make`` with ``args``, niced so the controller stays responsive during a build."""
    return ["nice", "-n", "19", "make", f"LOCALVERSION={LOCALVERSION}", *args]


def _make(tree: Path, args: list[str], what: str) -> str:
    return run_tool(_make_command(args), what, cwd=tree)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
