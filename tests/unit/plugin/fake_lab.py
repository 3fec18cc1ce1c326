"""A fake lab for the plugin's pytester tests: a conftest text whose ``dut_device`` leases
devices of one lab host, whose session's facts and engine probe a fake channel cans; the
leases and sessions are the plugin's real ones."""

#: The fake host's ACPI IOMMU tables and its device's PCIe Device Serial Number, as its
#: platform facts report them.
ACPI_IOMMU_TABLES = {
    "DMAR": {
        "sha256": "9f2c3e1b" * 8,
        "length": 176,
        "oem_id": "INTEL",
        "oem_table_id": "EDK2",
        "oem_revision": 2,
    }
}
DSN = "00-25-38-5b-91-b0-2c-4e"

# The conftest's own copies of them.
_CONSTANTS = f"ACPI_IOMMU_TABLES = {ACPI_IOMMU_TABLES!r}\nDSN = {DSN!r}\n"

FAKE_LAB = (
    _CONSTANTS
    + """
import pytest
from vfio_hil.lab.inventory import Host
from vfio_hil.lab.session import DeviceLease, HostSession

FACTS = {
    "iommu": {"kind": "intel", "default_domain_types": {"DMA-FQ": 3}},
    "acpi_iommu_tables": ACPI_IOMMU_TABLES,
    "devices": {
        "0000:3b:00.0": {
            "vendor": "0x144d", "device": "0xa808", "subsystem_vendor": "0x144d",
            "subsystem_device": "0xa801", "class": "0x010802", "revision": "0x00",
            "dsn": DSN, "driver": "vfio-pci", "iommu_group": 12,
        },
    },
}
IDENTITY = {"model": "Samsung SSD 970 EVO Plus 1TB", "serial": "S4EWNX0N", "firmware": "2B2QEXM7"}


class Log:
    entries = []


class FakeChannel:
    ioctl_log = Log()

    def call(self, func, **kwargs):
        answers = {
            "evidence.kmsg_cursor": 0,
            "evidence.after_check": {"kernel_log": {"lines": [], "trouble": []}, "sysfs": {}},
            "iommu_state.vfio_domain": {
                "bdf": kwargs.get("bdf"), "group": 12, "host_default": "DMA", "backend": "type1v2",
                "attached": True, "refusal": None, "iova_ranges": [[0, 0xFEDFFFFF]],
                "page_sizes": 0x40201000, "mapped": True,
            },
            "engines.describe": {"engine": "nvme", "capabilities": [], "identity": IDENTITY},
            "engines.backends": {"type1": "", "type1v2": "", "iommufd": "no /dev/iommu"},
        }
        return answers[func]


SESSION = HostSession(Host("lab-3", {}, None), FACTS, FakeChannel())


@pytest.fixture
def dut_device(request):
    return DeviceLease(request.param, SESSION)
"""
)
