"""The kernel cache without the Debian archive: a recording fake of apt-get, apt-cache,
dpkg-deb and depmod serves Debian's kernel package layouts (one linux-image package, and the
7.x split into linux-base, linux-binary and linux-modules), and the cache must find vmlinuz
and the modules in each, build the initramfs from them, and do no apt work a second time."""

from __future__ import annotations

import json
import lzma
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vfio_hil.lab import kernel
from vfio_hil.lab.errors import RackError
from vfio_hil.lab.kernel import INITRAMFS_MODULES, KernelCache, initramfs_module_order

pytestmark = pytest.mark.skipif(
    not shutil.which("busybox"), reason="the initramfs needs busybox (make deps)"
)

NEW = "7.2.13+deb14-amd64"
OLD = "6.1.0-28-amd64"
#: An xz-compressed module, as Debian's 7.x kernels ship them.
XZ_MODULE = lzma.compress(b"\x7fELF module")


@dataclass
class Package:
    """A package of the fake archive: what ``apt-cache depends`` lists, and its files."""

    depends: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)


def modules(top: str, release: str, suffix: str) -> dict[str, bytes]:
    """The files of the initramfs modules (but virtio_pci, built in) under ``top``."""
    content = XZ_MODULE if suffix == ".xz" else b"\x7fELF module"
    return {
        f"{top}/{release}/kernel/{path}.ko{suffix}": content
        for path in ("net/9p/9pnet", "net/9p/9pnet_virtio", "fs/9p/9p", "fs/overlayfs/overlay")
    }


def builtin(top: str, release: str) -> dict[str, bytes]:
    return {f"{top}/{release}/modules.builtin": b"kernel/drivers/virtio/virtio_pci.ko\n"}


def split_archive() -> dict[str, Package]:
    """sid in 2026: the image package holds no file and depends on its three parts."""
    top = "usr/lib/modules"
    return {
        "linux-image-amd64": Package(["linux-base-amd64", f"linux-image-{NEW}"]),
        "linux-base-amd64": Package([f"linux-base-{NEW}"]),
        f"linux-image-{NEW}": Package(
            ["dracut", f"linux-base-{NEW}", f"linux-binary-{NEW}", f"linux-modules-{NEW}"]
        ),
        f"linux-base-{NEW}": Package(files={**builtin(top, NEW), f"{top}/{NEW}/config": b""}),
        f"linux-binary-{NEW}": Package([f"linux-base-{NEW}"], {f"{top}/{NEW}/vmlinuz": b"bz"}),
        f"linux-binary-unsigned-{NEW}": Package([f"linux-base-{NEW}"]),
        f"linux-modules-{NEW}": Package(["kmod", f"linux-base-{NEW}"], modules(top, NEW, ".xz")),
        f"linux-image-{NEW}-dbg": Package(),
    }


def single_archive() -> dict[str, Package]:
    """bookworm: one image package with /boot/vmlinuz and /lib/modules."""
    files = {
        f"boot/vmlinuz-{OLD}": b"bz",
        **builtin("lib/modules", OLD),
        **modules("lib/modules", OLD, ""),
    }
    return {
        "linux-image-amd64": Package([f"linux-image-{OLD}"]),
        f"linux-image-{OLD}": Package(["kmod", "linux-base", "initramfs-tools"], files),
    }


class FakeApt:
    """Stands in for ``kernel.run_tool`` and ``kernel.query_tool``: answers apt-cache and apt-get
    from ``archive``, unpacks its fake .debs (JSON) like dpkg-deb, writes modules.dep like depmod,
    and records every command as one line in ``calls``."""

    def __init__(self, archive: dict[str, Package]) -> None:
        self.archive = archive
        self.calls: list[str] = []

    def query(self, cmd: list[str]) -> str:
        name = cmd[-1]
        self.calls.append(f"apt-cache depends {name}")
        if name not in self.archive:
            return ""
        return name + "\n" + "".join(f"  Depends: {d}\n" for d in self.archive[name].depends)

    def run(self, cmd: list[str], what: str, cwd: Path | None = None) -> str:
        args = [a for a in cmd[1:] if not a.startswith("-")]
        self.calls.append(" ".join([cmd[0], *args]))
        if cmd[0] == "apt-get" and args[0] == "update":
            lists = next(a.split("=", 1)[1] for a in cmd if a.startswith("-oDir::State::Lists="))
            (Path(lists) / "deb.debian.org_debian_dists_sid_main_binary-amd64_Packages").touch()
        elif cmd[0] == "apt-get" and args[0] == "download":
            assert cwd is not None
            for name in args[1:]:
                if name not in self.archive:
                    raise RackError(f"{what}: apt-get download failed: E: no package {name}")
                files = {p: c.hex() for p, c in self.archive[name].files.items()}
                (cwd / f"{name}_1.0_amd64.deb").write_text(json.dumps(files))
        elif cmd[0] == "dpkg-deb":
            deb, dest = args
            for path, content in json.loads(Path(deb).read_text()).items():
                (Path(dest) / path).parent.mkdir(parents=True, exist_ok=True)
                (Path(dest) / path).write_bytes(bytes.fromhex(content))
        elif cmd[0] == "depmod":
            base, release = args
            mods = Path(base) / "lib" / "modules" / release  # where bookworm's depmod looks
            found = sorted(str(p.relative_to(mods)) for p in mods.glob("kernel/**/*.ko*"))
            (mods / "modules.dep").write_text("".join(f"{p}:\n" for p in found))
        return ""


@pytest.fixture
def apt(monkeypatch: pytest.MonkeyPatch) -> FakeApt:
    fake = FakeApt(split_archive())
    monkeypatch.setattr(kernel, "run_tool", fake.run)
    monkeypatch.setattr(kernel, "query_tool", fake.query)
    monkeypatch.setattr(kernel, "debian_mirror", lambda: ("http://deb.example", "/k.gpg"))
    return fake


def cache(tmp_path: Path) -> KernelCache:
    return KernelCache(tmp_path / "kernels", log=lambda _msg: None)


def test_split_layout_is_followed_to_vmlinuz_and_modules(tmp_path: Path, apt: FakeApt) -> None:
    image = cache(tmp_path).get("linux-image-amd64/sid")
    base = tmp_path / "kernels" / f"linux-image-{NEW}"
    assert (image.package, image.release) == (f"linux-image-{NEW}", NEW)
    assert image.vmlinuz == base / "usr" / "lib" / "modules" / NEW / "vmlinuz"
    assert image.modules_dir == base / "usr" / "lib" / "modules" / NEW
    parts = [f"linux-{p}-{NEW}" for p in ("image", "base", "binary", "modules")]
    downloads = [c for c in apt.calls if c.startswith("apt-get download")]
    # The unsigned binary and the debug symbols are not part of the kernel.
    assert downloads == [f"apt-get download {' '.join(parts)}"]
    assert apt.calls.count("apt-get update") == 1  # the private view of sid, once
    assert [c.split()[-1] for c in apt.calls if c.startswith("dpkg-deb")] == [str(base)] * len(
        parts
    )
    # depmod's modules.dep landed next to the modules; virtio_pci is built in (linux-base's
    # modules.builtin), the rest are xz-compressed modules of linux-modules.
    order = initramfs_module_order(image.modules_dir, INITRAMFS_MODULES)
    # (the fake depmod writes no dependencies, so 9pnet comes in with none of them)
    assert sorted(Path(p).name for p in order) == [
        "9p.ko.xz",
        "9pnet_virtio.ko.xz",
        "overlay.ko.xz",
    ]
    assert image.initrd.is_file()


def test_single_package_layout(tmp_path: Path, apt: FakeApt) -> None:
    apt.archive = single_archive()
    image = cache(tmp_path).get("linux-image-amd64")
    base = tmp_path / "kernels" / f"linux-image-{OLD}"
    assert image.vmlinuz == base / "boot" / f"vmlinuz-{OLD}"
    assert image.modules_dir == base / "lib" / "modules" / OLD
    # linux-base (not named for the kernel) is not downloaded, nor is there an update.
    assert [c for c in apt.calls if c.startswith("apt-get")] == [
        f"apt-get download linux-image-{OLD}"
    ]
    assert image.initrd.is_file()
    record = json.loads((tmp_path / "kernels" / "linux-image-amd64.json").read_text())
    assert record["packages"] == [f"linux-image-{OLD}"]


@pytest.mark.parametrize("package", ["linux-image-amd64/sid", f"linux-image-{NEW}/sid"])
def test_second_get_does_no_apt_work(tmp_path: Path, apt: FakeApt, package: str) -> None:
    first = cache(tmp_path).get(package)
    done = list(apt.calls)
    assert cache(tmp_path).get(package) == first
    assert apt.calls == done


def test_record_of_an_older_release_means_single_package_layout(
    tmp_path: Path, apt: FakeApt
) -> None:
    """Records written before the split layouts name only the package and the release."""
    base = tmp_path / "kernels" / f"linux-image-{OLD}"
    (base / "boot").mkdir(parents=True)
    (base / "boot" / f"vmlinuz-{OLD}").write_bytes(b"bz")
    (base / "vfio-hil-initrd.gz").write_bytes(b"gz")
    (tmp_path / "kernels" / "linux-image-amd64.json").write_text(
        json.dumps({"package": f"linux-image-{OLD}", "release": OLD})
    )
    image = cache(tmp_path).get("linux-image-amd64")
    assert image.vmlinuz == base / "boot" / f"vmlinuz-{OLD}"
    assert image.modules_dir == base / "lib" / "modules" / OLD
    assert apt.calls == []


@pytest.mark.parametrize(
    ("emptied", "message"),
    [
        (f"linux-binary-{NEW}", f"linux-image-{NEW}: no vmlinuz for {NEW} "),
        (f"linux-modules-{NEW}", f"linux-image-{NEW}: no kernel modules "),
    ],
)
def test_a_part_without_its_files_is_named(
    tmp_path: Path, apt: FakeApt, emptied: str, message: str
) -> None:
    apt.archive[emptied].files = {}
    with pytest.raises(RackError) as err:
        cache(tmp_path).get("linux-image-amd64/sid")
    assert str(err.value).startswith(message)
    assert f"linux-binary-{NEW}" in str(err.value) and "\n" not in str(err.value)


def test_no_release_folder_names_the_packages(tmp_path: Path, apt: FakeApt) -> None:
    for part in ("base", "binary", "modules"):
        apt.archive[f"linux-{part}-{NEW}"].files = {}
    with pytest.raises(
        RackError, match=re.escape(f"linux-image-{NEW}: expected one kernel")
    ) as err:
        cache(tmp_path).get("linux-image-amd64/sid")
    assert str(err.value).endswith("found none")


def test_unknown_metapackage(tmp_path: Path, apt: FakeApt) -> None:
    with pytest.raises(RackError, match="'linux-image-foo' is not in the Debian archive"):
        cache(tmp_path).get("linux-image-foo/sid")


def test_apt_never_runs_beside_itself(tmp_path: Path, apt: FakeApt) -> None:
    """A rack fetching a kernel while another process (a kernel build, a second CI runner)
    fetches one through the same cache: their apt-get runs never overlap (apt would refuse
    to run on lists another apt holds)."""
    running: list[str] = []
    overlaps: list[str] = []
    record = apt.run

    def slow_run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
        if cmd[0] == "apt-get":
            if running:
                overlaps.append(f"{cmd[-1]} beside {running[0]}")
            running.append(cmd[-1])
            time.sleep(0.05)
            running.remove(cmd[-1])
        return record(cmd, what, cwd)

    kernel.run_tool = slow_run  # the fixture's monkeypatch restores it
    apt.archive.update(single_archive() | split_archive())
    wanted = ["linux-image-amd64/sid", f"linux-image-{OLD}/bookworm"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(pool.map(lambda p: cache(tmp_path).get(p), wanted))
    assert [i.release for i in images] == [NEW, OLD]
    # An update and a download for each suite's private view.
    assert sum(c.startswith("apt-get") for c in apt.calls) == 4
    assert not overlaps
