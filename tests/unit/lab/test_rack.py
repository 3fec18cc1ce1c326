"""The virtual rack without a VM: the QEMU command line, the initramfs module order, and the
boot's retry when its SSH port is taken (real QEMU, which exits before any guest runs)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfio_hil.lab import rack
from vfio_hil.lab.errors import RackError
from vfio_hil.lab.inventory import load_inventory
from vfio_hil.lab.kernel import KernelImage, initramfs_module_order
from vfio_hil.lab.rack import qemu_command


def kernel(tmp_path: Path) -> KernelImage:
    return KernelImage(
        package="linux-image-6.1.0-1-amd64",
        release="6.1.0-1-amd64",
        vmlinuz=tmp_path / "vmlinuz",
        modules_dir=tmp_path / "modules",
        initrd=tmp_path / "initrd.gz",
    )


def host_from(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    inv = tmp_path / "inv.yml"
    inv.write_text(f"all:\n  children:\n    virtual:\n      hosts:\n        h:\n{body}")
    return load_inventory(inv).hosts["h"]


def test_default_machine(tmp_path: Path) -> None:
    cmd = qemu_command(
        host_from(tmp_path, "          {}\n"), kernel(tmp_path), tmp_path, 2222, "tcg"
    )
    line = " ".join(cmd)
    assert "q35,kernel-irqchip=split,accel=tcg" in line
    assert "-device intel-iommu,intremap=on,caching-mode=on" in line
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in line
    assert "intel_iommu=on" in cmd[cmd.index("-append") + 1]
    assert "edu,id=dev4,addr=0x4.0x0" in line and "edu,id=dev5,addr=0x5.0x0" in line
    assert "nvme,id=dev6,addr=0x6.0x0,drive=drvdev6" in line
    assert "pci-testdev,id=dev7,addr=0x7.0x0" in line
    assert "pcie-root-port,id=rp8" in line and "edu,id=dev8,bus=rp8" in line
    assert f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off" in line


def test_root_ports_use_native_pcie_hotplug(tmp_path: Path) -> None:
    """Every machine turns QEMU's ACPI hotplug off, so pciehp drives its root ports' slots
    (under ACPI hotplug the ports hide their active link and hot reset gets ENOTTY)."""
    for body in ("          {}\n", "          vm_iommu: amd\n"):
        cmd = qemu_command(host_from(tmp_path, body), kernel(tmp_path), tmp_path, 1, "tcg")
        assert cmd[cmd.index("-global") + 1] == (
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"
        )


def test_iommu_variants_and_extra_args(tmp_path: Path) -> None:
    amd = qemu_command(
        host_from(tmp_path, "          vm_iommu: amd\n          vm_qemu_args: [-s]\n"),
        kernel(tmp_path),
        tmp_path,
        1,
        "kvm",
    )
    assert "amd-iommu" in amd and amd[-1] == "-s"
    assert amd[amd.index("-cpu") + 1] == "host"
    none = qemu_command(
        host_from(tmp_path, "          vm_iommu: none\n"), kernel(tmp_path), tmp_path, 1, "tcg"
    )
    assert not any("iommu" in a for a in none if a.startswith(("intel", "amd", "virtio-iommu")))


def test_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    mods = tmp_path / "modules"
    mods.mkdir()
    (mods / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n"
        "kernel/net/9p/9pnet.ko:\n"
        "kernel/fs/netfs/netfs.ko:\n"
        "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio.ko:\n"
    )
    (mods / "modules.builtin").write_text("kernel/fs/overlayfs/overlay.ko\n")
    order = initramfs_module_order(mods, ("9pnet_virtio", "9p", "overlay"))
    assert order.index("kernel/net/9p/9pnet.ko") < order.index("kernel/net/9p/9pnet_virtio.ko")
    assert order.index("kernel/fs/netfs/netfs.ko") < order.index("kernel/fs/9p/9p.ko")
    assert len(order) == len(set(order)) == 5
    with pytest.raises(RackError, match="no module virtio_pci"):
        initramfs_module_order(mods, ("virtio_pci",))


def test_multifunction_slot(tmp_path: Path) -> None:
    host = host_from(
        tmp_path,
        "          vm_devices: [{model: edu, slot: 9}, {model: edu, slot: 9, function: 1}]\n",
    )
    line = " ".join(qemu_command(host, kernel(tmp_path), tmp_path, 1, "tcg"))
    assert "edu,id=dev9,addr=0x9.0x0,multifunction=on" in line
    assert "edu,id=dev9f1,addr=0x9.0x1" in line
    assert [d.bdf for d in host.devices] == ["0000:00:09.0", "0000:00:09.1"]


@pytest.fixture
def doomed_rack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A rack whose host's kernel is junk: real QEMU starts and exits at once, never a VM."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (make deps installs it)")
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  children:\n    virtual:\n      hosts:\n        h: {}\n")
    image = kernel(tmp_path)
    image.vmlinuz.write_text("not a kernel\n")
    image.initrd.write_bytes(b"")
    image.modules_dir.mkdir()
    logs: list[str] = []
    vr = rack.VirtualRack(load_inventory(inv), home=tmp_path / "home", log=logs.append)
    monkeypatch.setattr(vr.kernels, "get", lambda _name: image)
    monkeypatch.setattr(vr, "accel", lambda: "tcg")
    return vr, logs


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port somebody else listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_boot_takes_another_port_when_qemu_cannot_bind_it(
    doomed_rack, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    vr, logs = doomed_rack
    ports = iter([taken_port, rack._free_port()])
    monkeypatch.setattr(rack, "_free_port", lambda: next(ports))
    with pytest.raises(RackError, match=r"QEMU exited during boot: qemu: .*kernel"):
        vr.up(["h"])
    # The first QEMU could not bind its port: retried on the second, which got as far as the
    # (junk) kernel.
    assert any("could not bind its SSH port" in m and "retrying" in m for m in logs), logs
    assert not vr.status(vr.inventory.hosts["h"]).running


def test_boot_gives_up_after_three_taken_ports(
    doomed_rack, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    vr, logs = doomed_rack
    monkeypatch.setattr(rack, "_free_port", lambda: taken_port)
    with pytest.raises(RackError, match=rf"could not bind its SSH port.*127\.0\.0\.1:{taken_port}"):
        vr.up(["h"])
    assert sum("retrying" in m for m in logs) == rack.PORT_ATTEMPTS - 1


def test_machines_boot_in_parallel_and_a_failed_boot_stops_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to BOOT_PARALLEL machines boot at once; when one fails, every machine of the call is
    stopped again (after the others finished booting) and the failure is raised."""
    inv = tmp_path / "inv.yml"
    hosts = "".join(f"        h{i}: {{}}\n" for i in range(4))
    inv.write_text(f"all:\n  children:\n    virtual:\n      hosts:\n{hosts}")
    vr = rack.VirtualRack(load_inventory(inv), home=tmp_path / "home", log=lambda _m: None)
    monkeypatch.setattr(vr.kernels, "get", lambda _name: kernel(tmp_path))
    monkeypatch.setattr(vr, "accel", lambda: "tcg")
    monkeypatch.setattr(vr, "_ensure_keys", lambda _state: None)
    monkeypatch.setattr(rack, "BOOT_PARALLEL", 2)
    lock, running, peak, stopped = threading.Lock(), [0], [0], []

    def boot(host, _kernel, _accel):  # type: ignore[no-untyped-def]
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        if host.name == "h2":
            raise RackError("h2: guest boot failed")

    monkeypatch.setattr(vr, "_boot", boot)
    monkeypatch.setattr(vr, "_stop", stopped.append)
    with pytest.raises(RackError, match="h2: guest boot failed"):
        vr.up()
    assert peak[0] == 2
    assert sorted(stopped) == ["h0", "h1", "h2", "h3"]
