"""The platform of a record as the plugin writes it (a rack machine: VT-d in DMA-FQ mode,
remapping on, Debian's 6.1 under QEMU 7.2 TCG), shared by the tests that build records."""

PLATFORM = {
    "iommu": "intel",
    "iommu_mode": "DMA-FQ",
    "interrupt_remapping": True,
    "kernel_release": "6.1.0-28-amd64",
    "qemu_version": "7.2.22",
    "accel": "tcg",
    "firmware": {"vendor": "SeaBIOS", "version": "1.16.2", "date": "04/01/2014"},
    "cpu_model": "QEMU TCG CPU version 2.5+",
    "vm_host_cpu_model": "Intel(R) Xeon(R) Processor",
}
