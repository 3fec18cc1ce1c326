"""A fake sysfs/procfs tree for the Ansible modules' unit tests.

It keeps sysfs' layout under a temporary root, and its writer plays the
kernel's part for bind, unbind, drivers_probe and driver_override writes by
moving the device's driver symlink.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path


def acpi_table(
    signature: str, body: bytes, oem: tuple[str, str, int] = ("BOCHS ", "BXPC    ", 1)
) -> bytes:
    """An ACPI table as the firmware publishes it: the 36-byte header (signature, length,
    revision, checksum, then ``oem``'s OEM ID, OEM table ID and OEM revision, then creator ID
    and revision), whose checksum makes the table's bytes add up to 0, then ``body``."""
    oem_id, oem_table_id, oem_revision = oem
    table = bytearray(
        signature.encode()
        + struct.pack("<IBB", 36 + len(body), 1, 0)
        + oem_id.encode()
        + oem_table_id.encode()
        + struct.pack("<I4sI", oem_revision, b"BXPC", 1)
        + body
    )
    table[9] = -sum(table) % 256
    return bytes(table)


class FakeSysfs:
    """A sysfs/procfs tree under a temporary root, with a kernel-like writer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pci = root / "sys/bus/pci"
        for path in ("sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/kernel/iommu_groups"):
            (root / path).mkdir(parents=True)
        (self.pci / "drivers_probe").write_text("")
        self.writes: list[tuple[str, str]] = []
        # Driver each device gets from drivers_probe when no override is set.
        self.natural: dict[str, str] = {}
        # Drivers whose probe fails, to exercise the verification paths.
        self.refusing: set[str] = set()
        # Devices vfio-pci gave a no-IOMMU group (set_noiommu_mode), by group number.
        self.noiommu_groups: dict[str, int] = {}

    def add_driver(self, name: str) -> None:
        """Register a PCI driver directory with its bind/unbind files."""
        path = self.pci / "drivers" / name
        path.mkdir(exist_ok=True)
        (path / "bind").write_text("")
        (path / "unbind").write_text("")

    def add_device(
        self,
        bdf: str,
        *,
        vendor: str = "0x1234",
        device: str = "0x11e8",
        pci_class: str = "0x00ff00",
        subsystem: tuple[str, str] = ("0x1af4", "0x1100"),
        revision: str = "0x10",
        group: int | None = None,
        driver: str | None = None,
        config: bytes | None = None,
    ) -> None:
        """Add a PCI device, optionally in an IOMMU group, bound to a driver, and with the
        content of its ``config`` file (none by default)."""
        path = self.pci / "devices" / bdf
        path.mkdir()
        (path / "vendor").write_text(vendor + "\n")
        (path / "device").write_text(device + "\n")
        (path / "class").write_text(pci_class + "\n")
        (path / "subsystem_vendor").write_text(subsystem[0] + "\n")
        (path / "subsystem_device").write_text(subsystem[1] + "\n")
        (path / "revision").write_text(revision + "\n")
        (path / "driver_override").write_text("(null)\n")
        if config is not None:
            (path / "config").write_bytes(config)
        if group is not None:
            group_dir = self.root / "sys/kernel/iommu_groups" / str(group)
            (group_dir / "devices").mkdir(parents=True, exist_ok=True)
            (group_dir / "type").write_text("DMA\n")
            (group_dir / "devices" / bdf).symlink_to(path)
            (path / "iommu_group").symlink_to(group_dir)
        if driver is not None:
            self.add_driver(driver)
            self.natural[bdf] = driver
            self._link(bdf, driver)

    def set_noiommu_mode(self, on: bool = True) -> None:
        """Load vfio with enable_unsafe_noiommu_mode: vfio-pci then gives a device in no
        IOMMU group a no-IOMMU group of its own when it binds it, and removes it when it lets
        the device go."""
        params = self.root / "sys/module/vfio/parameters"
        params.mkdir(parents=True, exist_ok=True)
        (params / "enable_unsafe_noiommu_mode").write_text("Y\n" if on else "N\n")

    def add_acpi_table(self, name: str, data: bytes) -> None:
        """Publish an ACPI table under /sys/firmware/acpi/tables as ``name``."""
        tables = self.root / "sys/firmware/acpi/tables"
        tables.mkdir(parents=True, exist_ok=True)
        (tables / name).write_bytes(data)

    def driver_of(self, bdf: str) -> str | None:
        """The driver a device is bound to, as the kernel would show it."""
        link = self.pci / "devices" / bdf / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def override_of(self, bdf: str) -> str:
        """The raw driver_override content of a device."""
        return (self.pci / "devices" / bdf / "driver_override").read_text().strip()

    def _link(self, bdf: str, driver: str) -> None:
        (self.pci / "devices" / bdf / "driver").symlink_to(self.pci / "drivers" / driver)

    def _probe(self, bdf: str, driver: str) -> None:
        if driver in self.refusing:
            raise OSError(errno.ENODEV, "probe failed")
        path = self.pci / "devices" / bdf
        param = self.root / "sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
        noiommu = param.is_file() and param.read_text().strip() == "Y"
        if driver == "vfio-pci" and not (path / "iommu_group").is_symlink() and noiommu:
            groups = self.root / "sys/kernel/iommu_groups"
            number = max((int(g.name) for g in groups.iterdir()), default=-1) + 1
            (groups / str(number) / "devices").mkdir(parents=True)
            (groups / str(number) / "devices" / bdf).symlink_to(path)
            (groups / str(number) / "name").write_text("vfio-noiommu\n")
            (path / "iommu_group").symlink_to(groups / str(number))
            self.noiommu_groups[bdf] = number
        self._link(bdf, driver)

    def _unlink(self, bdf: str) -> None:
        (self.pci / "devices" / bdf / "driver").unlink()
        number = self.noiommu_groups.pop(bdf, None)
        if number is not None:
            group = self.root / "sys/kernel/iommu_groups" / str(number)
            (self.pci / "devices" / bdf / "iommu_group").unlink()
            (group / "devices" / bdf).unlink()
            (group / "devices").rmdir()
            (group / "name").unlink()
            group.rmdir()

    def write(self, path: str, value: str) -> None:
        """Apply a sysfs write the way the kernel would."""
        self.writes.append((path, value))
        parts = Path(path).relative_to(self.pci).parts
        if parts[0] == "devices" and parts[2] == "driver_override":
            override = value.strip() or "(null)"
            (self.pci / "devices" / parts[1] / "driver_override").write_text(override + "\n")
        elif parts[0] == "drivers" and parts[2] == "unbind":
            if self.driver_of(value) != parts[1]:
                raise OSError(errno.ENODEV, "not bound to this driver")
            self._unlink(value)
        elif parts[0] == "drivers" and parts[2] == "bind":
            override = self.override_of(value)
            if self.driver_of(value) is not None:
                raise OSError(errno.EBUSY, "already bound")
            if override != "(null)" and override != parts[1]:
                raise OSError(errno.ENODEV, "driver_override does not match")
            self._probe(value, parts[1])
        elif parts == ("drivers_probe",):
            if self.driver_of(value) is not None:
                return
            override = self.override_of(value)
            target = override if override != "(null)" else self.natural.get(value)
            if target is not None and (self.pci / "drivers" / target).is_dir():
                try:
                    self._probe(value, target)
                except OSError:
                    # drivers_probe swallows probe failures; the device stays unbound.
                    return
        else:
            raise AssertionError(f"unexpected sysfs write to {path}")
