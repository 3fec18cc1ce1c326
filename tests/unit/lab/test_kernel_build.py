"""Rack kernels built from Debian's kernel source, without compiling: the cache key follows each
input, the fragment check names an option Kconfig dropped, inventories name builds strictly,
and a recording fake of the build steps shows that a second call does no apt work and no
compile."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from vfio_hil.lab.errors import RackError
from vfio_hil.lab.kernel import KernelCache
from vfio_hil.lab.kernel_build import (
    BUILD_PACKAGES,
    FRAGMENT,
    BuildSpec,
    BuildSteps,
    KernelBuilder,
    build_key,
    dropped_options,
    parse_build_spec,
)

VERSION = "6.12.95-1~bpo12+1"
RELEASE = "6.12.95-vfio-hil"
SPEC = "build:linux-source-6.12"


def test_key_changes_with_each_input_and_not_otherwise() -> None:
    base = build_key("linux-source-6.12", VERSION, "CONFIG_VFIO=m\n", recipe=1)
    unchanged = [
        build_key("linux-source-6.12", VERSION, "CONFIG_VFIO=m\n", recipe=1),
        build_key("linux-source-6.12", VERSION, "# VFIO, as modules\n\nCONFIG_VFIO=m\n", recipe=1),
    ]
    assert set(unchanged) == {base}
    changed = [
        build_key("linux-source-6.13", VERSION, "CONFIG_VFIO=m\n", recipe=1),
        build_key("linux-source-6.12", "6.12.96-1", "CONFIG_VFIO=m\n", recipe=1),
        build_key("linux-source-6.12", VERSION, "CONFIG_VFIO=y\n", recipe=1),
        build_key("linux-source-6.12", VERSION, "# CONFIG_VFIO is not set\n", recipe=1),
        build_key("linux-source-6.12", VERSION, "CONFIG_VFIO=m\n", recipe=2),
    ]
    assert len({base, *changed}) == 6


def test_fragment_check_names_dropped_options() -> None:
    fragment = "# VFIO\nCONFIG_VFIO=m\nCONFIG_VFIO_NOIOMMU=y\n# CONFIG_DEBUG_INFO_BTF is not set\n"
    config = "CONFIG_VFIO=m\n# CONFIG_VFIO_NOIOMMU is not set\nCONFIG_DEBUG_INFO_BTF=y\n"
    assert dropped_options(fragment, config) == [
        "CONFIG_VFIO_NOIOMMU=y (got n)",
        "CONFIG_DEBUG_INFO_BTF=n (got y)",
    ]
    assert dropped_options(fragment, "CONFIG_VFIO=m\nCONFIG_VFIO_NOIOMMU=y\n") == []


def test_shipped_fragment_asks_for_both_vfio_interfaces() -> None:
    fragment = FRAGMENT.read_text()
    for option in ("IOMMUFD", "VFIO_DEVICE_CDEV", "VFIO_CONTAINER", "VFIO_NOIOMMU"):
        assert re.search(rf"^CONFIG_{option}=[ym]$", fragment, re.MULTILINE), option


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("build:linux-source-6.12", BuildSpec("linux-source-6.12")),
        ("build:linux-source-6.12/trixie", BuildSpec("linux-source-6.12", "trixie")),
        ("linux-image-amd64/sid", None),
    ],
)  # fmt: skip
def test_build_spec(text: str, spec: BuildSpec | None) -> None:
    assert parse_build_spec(text) == spec


@pytest.mark.parametrize(
    "text", ["build:", "build:linux-6.12", "build:linux-source-6", "build:linux-source-6.12/"]
)
def test_malformed_build_spec_is_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="names no kernel to build") as err:
        parse_build_spec(text)
    assert "\n" not in str(err.value)


def test_makefile_installs_the_build_packages() -> None:
    makefile = (Path(__file__).parents[3] / "Makefile").read_text()
    listed = re.search(r"^DEB_PACKAGES :=(.*?)\n\n", makefile, re.MULTILINE | re.DOTALL)
    assert listed
    assert set(BUILD_PACKAGES) <= set(listed[1].replace("\\", " ").split())


class RecordingSteps(BuildSteps):
    """The build's outside work, recorded: a .config that has what the fragment asks (but
    ``drop``), and an install that leaves a kernel and a module in Debian's layout."""

    def __init__(self, cache: KernelCache, drop: str = "") -> None:
        super().__init__(cache, cache.log)
        self.calls: list[str] = []
        self.drop = drop

    def check_packages(self) -> None:
        self.calls.append("check_packages")

    def locate(self, spec: BuildSpec) -> tuple[str, str]:
        self.calls.append(f"locate {spec.source}")
        return "", VERSION

    def unpack_source(self, source: str, suite: str, work: Path) -> Path:
        self.calls.append(f"unpack {source}")
        (work / "tree").mkdir()
        return work / "tree"

    def configure(self, tree: Path, fragment: str) -> str:
        self.calls.append("configure")
        kept = [line for line in fragment.splitlines() if not self.drop or self.drop not in line]
        return "\n".join(kept)

    def compile(self, tree: Path) -> None:
        self.calls.append("compile")

    def install(self, tree: Path, dest: Path) -> str:
        self.calls.append("install")
        modules = dest / "lib" / "modules" / RELEASE
        (modules / "kernel" / "drivers" / "vfio").mkdir(parents=True)
        (modules / "kernel" / "drivers" / "vfio" / "vfio.ko").write_bytes(b"\x7fELF")
        (modules / "modules.dep").write_text("kernel/drivers/vfio/vfio.ko:\n")
        builtin = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
        (modules / "modules.builtin").write_text("".join(f"kernel/{m}.ko\n" for m in builtin))
        (modules / "build").symlink_to(tree)
        (dest / "boot").mkdir()
        (dest / "boot" / f"vmlinuz-{RELEASE}").write_bytes(b"bz")
        return RELEASE


@pytest.fixture
def cache(tmp_path: Path) -> KernelCache:
    return KernelCache(tmp_path / "kernels", log=lambda _msg: None)


@pytest.mark.skipif(not shutil.which("busybox"), reason="the initramfs needs busybox (make deps)")
def test_second_get_does_nothing(cache: KernelCache) -> None:
    steps = RecordingSteps(cache)
    assert KernelBuilder(cache, steps).cached(SPEC) is None
    first = KernelBuilder(cache, steps).get(SPEC)
    assert steps.calls == [
        "check_packages", "locate linux-source-6.12", "unpack linux-source-6.12", "configure",
        "compile", "install",
    ]  # fmt: skip
    assert first.release == RELEASE
    assert first.vmlinuz.read_bytes() == b"bz"
    assert first.initrd.is_file()
    assert not (first.modules_dir / "build").is_symlink()
    assert [p.name for p in cache.root.iterdir() if p.name.endswith(".work")] == []
    steps.calls.clear()
    assert KernelBuilder(cache, steps).cached(SPEC) == first
    assert KernelBuilder(cache, steps).get(SPEC) == first
    assert steps.calls == []


@pytest.mark.skipif(not shutil.which("busybox"), reason="the initramfs needs busybox (make deps)")
def test_changed_fragment_builds_anew(
    cache: KernelCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = KernelBuilder(cache, RecordingSteps(cache)).get(SPEC)
    fragment = tmp_path / "rack-kernel.config"
    fragment.write_text(FRAGMENT.read_text() + "CONFIG_PCI_IOV=y\n")
    monkeypatch.setattr("vfio_hil.lab.kernel_build.FRAGMENT", fragment)
    steps = RecordingSteps(cache)
    assert KernelBuilder(cache, steps).cached(SPEC) is None
    second = KernelBuilder(cache, steps).get(SPEC)
    assert "compile" in steps.calls
    assert second.package != first.package


def test_dropped_option_stops_the_build_naming_it(cache: KernelCache) -> None:
    steps = RecordingSteps(cache, drop="CONFIG_VFIO_DEVICE_CDEV")
    with pytest.raises(RackError, match=r"dropped CONFIG_VFIO_DEVICE_CDEV=y \(got n\)") as err:
        KernelBuilder(cache, steps).get(SPEC)
    assert "\n" not in str(err.value)
    assert "compile" not in steps.calls


def test_missing_build_packages_name_make_deps(
    cache: KernelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "vfio_hil.lab.kernel_build.missing_build_packages", lambda: ["bison", "flex"]
    )
    with pytest.raises(RackError, match=r"packages bison flex \(run 'make deps'\)$"):
        BuildSteps(cache, cache.log).check_packages()


def test_source_is_looked_up_in_the_controllers_suites_then_backports(
    cache: KernelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def apt_cache(cmd: list[str]) -> str:
        suite = next((a.split("=", 1)[1] for a in cmd if a.startswith("-suite=")), "")
        asked.append(suite)
        return f"Package: {cmd[-1]}\nVersion: {VERSION}\n" if suite.endswith("backports") else ""

    monkeypatch.setattr("vfio_hil.lab.kernel_build.query_tool", apt_cache)
    monkeypatch.setattr("vfio_hil.lab.kernel_build.debian_codename", lambda: "bookworm")
    monkeypatch.setattr(cache, "apt_options", lambda suite: [f"-suite={suite}"] if suite else [])
    steps = BuildSteps(cache, cache.log)
    assert steps.locate(BuildSpec("linux-source-6.12")) == ("bookworm-backports", VERSION)
    assert asked == ["", "bookworm-backports"]
    with pytest.raises(RackError, match=r"^linux-source-6.12 is not in the Debian archive "):
        steps.locate(BuildSpec("linux-source-6.12", "trixie"))
