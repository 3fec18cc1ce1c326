"""Bindings for the VFIO user API (``linux/vfio.h``) through cffi in ABI mode.

Nothing here is compiled: the structures are declared to cffi, which lays them out with the
platform C ABI, and the ioctl request numbers are computed with the kernel's ``_IOC`` encoding.
That keeps the package importable from a zip file on a host that only has Python and cffi.
The unit tests compare every layout and number with the real header.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Mapping, Optional

import cffi

from .errors import VfioError

CDEF = """
struct vfio_info_cap_header {
    uint16_t id;
    uint16_t version;
    uint32_t next;
};

struct vfio_group_status {
    uint32_t argsz;
    uint32_t flags;
};

struct vfio_device_info {
    uint32_t argsz;
    uint32_t flags;
    uint32_t num_regions;
    uint32_t num_irqs;
    uint32_t cap_offset;
};

struct vfio_region_info {
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t cap_offset;
    uint64_t size;
    uint64_t offset;
};

struct vfio_irq_info {
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t count;
};

struct vfio_irq_set {
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t start;
    uint32_t count;
    uint8_t data[];
};

struct vfio_iommu_type1_info {
    uint32_t argsz;
    uint32_t flags;
    uint64_t iova_pgsizes;
    uint32_t cap_offset;
};

struct vfio_iova_range {
    uint64_t start;
    uint64_t end;
};

struct vfio_iommu_type1_info_cap_iova_range {
    struct vfio_info_cap_header header;
    uint32_t nr_iovas;
    uint32_t reserved;
    struct vfio_iova_range iova_ranges[];
};

struct vfio_iommu_type1_info_dma_avail {
    struct vfio_info_cap_header header;
    uint32_t avail;
};

struct vfio_iommu_type1_dma_map {
    uint32_t argsz;
    uint32_t flags;
    uint64_t vaddr;
    uint64_t iova;
    uint64_t size;
};

struct vfio_iommu_type1_dma_unmap {
    uint32_t argsz;
    uint32_t flags;
    uint64_t iova;
    uint64_t size;
    uint8_t data[];
};

int ioctl(int fd, unsigned long request, ...);
int eventfd(unsigned int initval, int flags);
/* off_t is a long on the LP64 targets VFIO runs on. */
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)
libc = ffi.dlopen(None)

# Request encoding from include/uapi/asm-generic/ioctl.h; the architectures listed use a
# 13-bit size field and a non-zero "no direction" value.
if platform.machine().startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
    _IOC_SIZEBITS, _IOC_NONE = 13, 1
else:
    _IOC_SIZEBITS, _IOC_NONE = 14, 0
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS


def _IOC(direction: int, type_: str, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (ord(type_) << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: str, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


VFIO_API_VERSION = 0
VFIO_TYPE = ";"
VFIO_BASE = 100

# Extensions / IOMMU types (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU).
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
VFIO_TYPE1_NESTING_IOMMU = 6
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2
VFIO_DEVICE_FLAGS_AMBA = 1 << 3
VFIO_DEVICE_FLAGS_CCW = 1 << 4
VFIO_DEVICE_FLAGS_AP = 1 << 5
VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6
VFIO_DEVICE_FLAGS_CAPS = 1 << 7

VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK = (
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD
)
VFIO_IRQ_SET_ACTION_TYPE_MASK = (
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER
)

VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9

VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2

# eventfd(2) flags are defined by the kernel as the matching open(2) flags.
EFD_NONBLOCK = os.O_NONBLOCK
EFD_CLOEXEC = os.O_CLOEXEC

#: Request number of every VFIO ioctl, by its name in ``linux/vfio.h``. Several numbers are
#: shared between fd types (e.g. 112 is a device ioctl and an IOMMU ioctl).
IOCTLS: dict[str, int] = {
    name: _IO(VFIO_TYPE, VFIO_BASE + nr)
    for nr, name in (
        (0, "VFIO_GET_API_VERSION"),
        (1, "VFIO_CHECK_EXTENSION"),
        (2, "VFIO_SET_IOMMU"),
        (3, "VFIO_GROUP_GET_STATUS"),
        (4, "VFIO_GROUP_SET_CONTAINER"),
        (5, "VFIO_GROUP_UNSET_CONTAINER"),
        (6, "VFIO_GROUP_GET_DEVICE_FD"),
        (7, "VFIO_DEVICE_GET_INFO"),
        (8, "VFIO_DEVICE_GET_REGION_INFO"),
        (9, "VFIO_DEVICE_GET_IRQ_INFO"),
        (10, "VFIO_DEVICE_SET_IRQS"),
        (11, "VFIO_DEVICE_RESET"),
        (12, "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"),
        (13, "VFIO_DEVICE_PCI_HOT_RESET"),
        (14, "VFIO_DEVICE_QUERY_GFX_PLANE"),
        (15, "VFIO_DEVICE_GET_GFX_DMABUF"),
        (16, "VFIO_DEVICE_IOEVENTFD"),
        (17, "VFIO_DEVICE_FEATURE"),
        (12, "VFIO_IOMMU_GET_INFO"),
        (13, "VFIO_IOMMU_MAP_DMA"),
        (14, "VFIO_IOMMU_UNMAP_DMA"),
        (15, "VFIO_IOMMU_ENABLE"),
        (16, "VFIO_IOMMU_DISABLE"),
        (17, "VFIO_IOMMU_DIRTY_PAGES"),
    )
}


def new(struct: str, **fields: int) -> Any:
    """Allocate a zeroed ``struct <struct>`` and return a pointer to it.

    ``argsz`` is preset to the structure size when the structure has one; ``fields`` are
    assigned afterwards, so they may override it (negative tests do).
    """
    ptr = ffi.new(f"struct {struct} *")
    if any(name == "argsz" for name, _ in ffi.typeof(ptr[0]).fields):
        ptr.argsz = ffi.sizeof(ptr[0])
    for name, value in fields.items():
        setattr(ptr, name, value)
    return ptr


def _as_cdata(arg: Any) -> Any:
    if arg is None:
        return ffi.cast("unsigned long", 0)
    if isinstance(arg, int):
        return ffi.cast("unsigned long", arg)
    return arg


def ioctl_raw(fd: int, name: str, arg: Any = None) -> int:
    """Issue the VFIO ioctl ``name`` on ``fd``.

    Returns the ioctl's non-negative result, or ``-errno`` if the kernel refused it, so that
    negative tests can assert the exact error code. ``arg`` is a cdata pointer, an integer
    (passed by value as an unsigned long) or None (0).
    """
    ret = libc.ioctl(fd, ffi.cast("unsigned long", IOCTLS[name]), _as_cdata(arg))
    if ret < 0:
        return -ffi.errno
    return ret


def ioctl(
    fd: int,
    name: str,
    arg: Any = None,
    *,
    target: str,
    arguments: Optional[Mapping[str, Any]] = None,
) -> int:
    """Like :func:`ioctl_raw`, but raise :class:`VfioError` instead of returning ``-errno``.

    ``target`` and ``arguments`` only feed the error report.
    """
    ret = ioctl_raw(fd, name, arg)
    if ret < 0:
        raise VfioError(-ret, name, target, arguments)
    return ret
