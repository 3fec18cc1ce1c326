"""The QEMU command line and initramfs module order of the virtual rack (no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
