"""Bindings for the VFIO and iommufd user APIs (``linux/vfio.h``, ``linux/iommufd.h``) through
cffi in ABI mode.

Nothing here is compiled: the structures are declared to cffi, which lays them out with the
platform C ABI, and the ioctl request numbers are computed with the kernel's ``_IOC`` encoding.
That keeps the package importable from a zip file on a host that only has Python and cffi.
The unit tests compare every layout and number with the real headers.

One exception to "through cffi": the DMA map and unmap requests, the hot path of any DMA
user, are also laid out for :mod:`struct` (:data:`PACKED`) and issued through
:func:`fcntl.ioctl` on a ``bytearray``. A libffi call costs about as much as the kernel's own
work for a 4 KiB mapping (``make bench`` prints the figures); ``fcntl.ioctl`` costs a
fraction. :func:`ioctl_raw` takes either form of argument.

The declarations come in three groups because kernels (and their headers) grew them at
different times: :data:`VFIO_CDEF` (``linux/vfio.h`` as of Linux 6.1), :data:`VFIO_CDEV_CDEF`
(the VFIO device cdev interface, Linux 6.6) and :data:`IOMMUFD_CDEF` (``linux/iommufd.h``).
Structures are bound in their first layout: VFIO structures grow at the end and carry their
size in ``argsz``/``size``, so a kernel accepts the shorter form.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import struct
import threading
from typing import Any, Callable, Dict, FrozenSet, Mapping, NamedTuple, Optional

import cffi

from .errors import VfioError

VFIO_CDEF = """
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

struct vfio_region_sparse_mmap_area {
    uint64_t offset;
    uint64_t size;
};

struct vfio_region_info_cap_sparse_mmap {
    struct vfio_info_cap_header header;
    uint32_t nr_areas;
    uint32_t reserved;
    struct vfio_region_sparse_mmap_area areas[];
};

struct vfio_region_info_cap_type {
    struct vfio_info_cap_header header;
    uint32_t type;
    uint32_t subtype;
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

struct vfio_pci_dependent_device {
    uint32_t group_id;
    uint16_t segment;
    uint8_t bus;
    uint8_t devfn;
};

struct vfio_pci_hot_reset_info {
    uint32_t argsz;
    uint32_t flags;
    uint32_t count;
    struct vfio_pci_dependent_device devices[];
};

struct vfio_pci_hot_reset {
    uint32_t argsz;
    uint32_t flags;
    uint32_t count;
    int32_t group_fds[];
};

struct vfio_device_ioeventfd {
    uint32_t argsz;
    uint32_t flags;
    uint64_t offset;
    uint64_t data;
    int32_t fd;
};

struct vfio_device_feature {
    uint32_t argsz;
    uint32_t flags;
    uint8_t data[];
};

struct vfio_device_feature_migration {
    uint64_t flags;
};

struct vfio_device_low_power_entry_with_wakeup {
    int32_t wakeup_eventfd;
    uint32_t reserved;
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

struct vfio_iommu_type1_info_cap_migration {
    struct vfio_info_cap_header header;
    uint32_t flags;
    uint64_t pgsize_bitmap;
    uint64_t max_dirty_bitmap_size;
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

struct vfio_bitmap {
    uint64_t pgsize;
    uint64_t size;
    uint64_t *data;
};

struct vfio_iommu_type1_dirty_bitmap {
    uint32_t argsz;
    uint32_t flags;
    uint8_t data[];
};

struct vfio_iommu_type1_dirty_bitmap_get {
    uint64_t iova;
    uint64_t size;
    struct vfio_bitmap bitmap;
};
"""

VFIO_CDEV_CDEF = """
struct vfio_device_bind_iommufd {
    uint32_t argsz;
    uint32_t flags;
    int32_t iommufd;
    uint32_t out_devid;
};

struct vfio_device_attach_iommufd_pt {
    uint32_t argsz;
    uint32_t flags;
    uint32_t pt_id;
};

struct vfio_device_detach_iommufd_pt {
    uint32_t argsz;
    uint32_t flags;
};
"""

IOMMUFD_CDEF = """
struct iommu_destroy {
    uint32_t size;
    uint32_t id;
};

struct iommu_ioas_alloc {
    uint32_t size;
    uint32_t flags;
    uint32_t out_ioas_id;
};

struct iommu_iova_range {
    uint64_t start;
    uint64_t last;
};

struct iommu_ioas_iova_ranges {
    uint32_t size;
    uint32_t ioas_id;
    uint32_t num_iovas;
    uint32_t __reserved;
    uint64_t allowed_iovas;
    uint64_t out_iova_alignment;
};

struct iommu_ioas_allow_iovas {
    uint32_t size;
    uint32_t ioas_id;
    uint32_t num_iovas;
    uint32_t __reserved;
    uint64_t allowed_iovas;
};

struct iommu_ioas_map {
    uint32_t size;
    uint32_t flags;
    uint32_t ioas_id;
    uint32_t __reserved;
    uint64_t user_va;
    uint64_t length;
    uint64_t iova;
};

struct iommu_ioas_copy {
    uint32_t size;
    uint32_t flags;
    uint32_t dst_ioas_id;
    uint32_t src_ioas_id;
    uint64_t length;
    uint64_t dst_iova;
    uint64_t src_iova;
};

struct iommu_ioas_unmap {
    uint32_t size;
    uint32_t ioas_id;
    uint64_t iova;
    uint64_t length;
};
"""

LIBC_CDEF = """
int ioctl(int fd, unsigned long request, ...);
int eventfd(unsigned int initval, int flags);
/* off_t is a long on the LP64 targets VFIO runs on. */
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
"""

ffi = cffi.FFI()
for _cdef in (VFIO_CDEF, VFIO_CDEV_CDEF, IOMMUFD_CDEF, LIBC_CDEF):
    ffi.cdef(_cdef)
libc = ffi.dlopen(None)
_libc_ioctl = libc.ioctl

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
VFIO_DEVICE_FLAGS_CDX = 1 << 8

VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1
VFIO_REGION_INFO_CAP_TYPE = 2
VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3

VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 1 << 31
VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xFFFF
VFIO_REGION_TYPE_GFX = 1
VFIO_REGION_TYPE_CCW = 2
VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3

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

VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1

VFIO_DEVICE_IOEVENTFD_8 = 1 << 0
VFIO_DEVICE_IOEVENTFD_16 = 1 << 1
VFIO_DEVICE_IOEVENTFD_32 = 1 << 2
VFIO_DEVICE_IOEVENTFD_64 = 1 << 3
VFIO_DEVICE_IOEVENTFD_SIZE_MASK = 0xF

VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0
VFIO_DEVICE_FEATURE_MIGRATION = 1
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5
VFIO_MIGRATION_STOP_COPY = 1 << 0
VFIO_MIGRATION_P2P = 1 << 1

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

VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0
VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1
VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2

#: Names above that ``linux/vfio.h`` only has since the device cdev interface (Linux 6.6;
#: the CDX device flag came with 6.4).
VFIO_CDEV_NAMES: FrozenSet[str] = frozenset(
    {
        "VFIO_DEVICE_FLAGS_CDX",
        "VFIO_PCI_HOT_RESET_FLAG_DEV_ID",
        "VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED",
        "VFIO_DEVICE_BIND_IOMMUFD",
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        "VFIO_DEVICE_DETACH_IOMMUFD_PT",
    }
)

IOMMUFD_TYPE = ";"
IOMMUFD_CMD_BASE = 0x80
IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2

# eventfd(2) flags are defined by the kernel as the matching open(2) flags.
EFD_NONBLOCK = os.O_NONBLOCK
EFD_CLOEXEC = os.O_CLOEXEC

#: Request number of every ioctl, by its name in ``linux/vfio.h`` or ``linux/iommufd.h``.
#: Several numbers are shared between fd types (e.g. 112 is a device ioctl and an IOMMU
#: ioctl), which is why callers name ioctls rather than pass numbers.
IOCTLS: Dict[str, int] = {
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
        (18, "VFIO_DEVICE_BIND_IOMMUFD"),
        (19, "VFIO_DEVICE_ATTACH_IOMMUFD_PT"),
        (20, "VFIO_DEVICE_DETACH_IOMMUFD_PT"),
        (12, "VFIO_IOMMU_GET_INFO"),
        (13, "VFIO_IOMMU_MAP_DMA"),
        (14, "VFIO_IOMMU_UNMAP_DMA"),
        (15, "VFIO_IOMMU_ENABLE"),
        (16, "VFIO_IOMMU_DISABLE"),
        (17, "VFIO_IOMMU_DIRTY_PAGES"),
    )
}
IOCTLS.update(
    (name, _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + nr))
    for nr, name in (
        (0, "IOMMU_DESTROY"),
        (1, "IOMMU_IOAS_ALLOC"),
        (2, "IOMMU_IOAS_ALLOW_IOVAS"),
        (3, "IOMMU_IOAS_COPY"),
        (4, "IOMMU_IOAS_IOVA_RANGES"),
        (5, "IOMMU_IOAS_MAP"),
        (6, "IOMMU_IOAS_UNMAP"),
    )
)

#: How a handle issues an ioctl: ``(fd, ioctl name, argument) -> result or -errno``.
#: :func:`ioctl_raw` is the real one; unit tests substitute a recorder.
IoctlFn = Callable[[int, str, Any], int]


class PackedLayout(NamedTuple):
    """A uapi structure laid out for :mod:`struct`: its C name and the layout of its fields,
    in declaration order, the size field (``argsz``/``size``) first."""

    struct_name: str
    layout: struct.Struct


#: The packed requests, by ioctl name. tests/unit/core/test_core_uapi_abi.py checks each
#: layout field by field against the cffi declaration (itself checked against the headers).
PACKED: Dict[str, PackedLayout] = {
    "VFIO_IOMMU_MAP_DMA": PackedLayout("vfio_iommu_type1_dma_map", struct.Struct("=IIQQQ")),
    "VFIO_IOMMU_UNMAP_DMA": PackedLayout("vfio_iommu_type1_dma_unmap", struct.Struct("=IIQQ")),
    "IOMMU_IOAS_MAP": PackedLayout("iommu_ioas_map", struct.Struct("=IIIIQQQ")),
    "IOMMU_IOAS_UNMAP": PackedLayout("iommu_ioas_unmap", struct.Struct("=IIQQ")),
}


class RequestBuffers(threading.local):
    """One reusable ``bytearray`` per :data:`PACKED` request, per thread.

    Allocating a request costs as much as packing it, so a handle reuses its buffers call
    after call; each thread gets its own, so threads sharing a handle never overwrite each
    other's requests between packing and the ioctl.
    """

    VFIO_IOMMU_MAP_DMA: bytearray
    VFIO_IOMMU_UNMAP_DMA: bytearray
    IOMMU_IOAS_MAP: bytearray
    IOMMU_IOAS_UNMAP: bytearray

    def __init__(self) -> None:
        for name, packed in PACKED.items():
            setattr(self, name, bytearray(packed.layout.size))


def _size_field(ctype: Any) -> Optional[str]:
    # VFIO (argsz) and iommufd (size) both put the structure size first.
    first = ctype.fields[0][0]
    return first if first in ("argsz", "size") else None


def _init(ptr: Any, fields: Mapping[str, int]) -> Any:
    size_field = _size_field(ffi.typeof(ptr[0]))
    if size_field is not None:
        setattr(ptr, size_field, ffi.sizeof(ptr[0]))
    for name, value in fields.items():
        setattr(ptr, name, value)
    return ptr


def new(struct: str, **fields: int) -> Any:
    """Allocate a zeroed ``struct <struct>`` and return a pointer to it.

    ``argsz`` (VFIO) or ``size`` (iommufd) is preset to the structure size when the structure
    starts with one; ``fields`` are assigned afterwards, so they may override it (negative
    tests do).
    """
    return _init(ffi.new(f"struct {struct} *"), fields)


def new_var(struct: str, items: int, **fields: int) -> Any:
    """Like :func:`new` for a structure ending in a flexible array, given ``items`` elements.

    The preset ``argsz`` covers the elements too.
    """
    array = ffi.typeof(f"struct {struct}").fields[-1][0]
    return _init(ffi.new(f"struct {struct} *", {array: items}), fields)


_UNSIGNED_LONG = ffi.typeof("unsigned long")
_fcntl_ioctl = fcntl.ioctl


#: Where :func:`ioctl_raw` records what it issues while someone listens (the DUT agent does,
#: call by call, so that each check's evidence lists its ioctls); None records nothing.
_transcript: Optional[list] = None
#: A check that maps in a loop must not turn its evidence into megabytes.
TRANSCRIPT_LIMIT = 2000


def record_ioctls(into: Optional[list]) -> None:
    """Append ``(name, fd, result)`` of every ioctl issued from now on to ``into``, up to
    :data:`TRANSCRIPT_LIMIT` entries; ``None`` stops recording."""
    global _transcript
    _transcript = into


def ioctl_raw(fd: int, name: str, arg: Any = None) -> int:
    """Issue the ioctl ``name`` (a key of :data:`IOCTLS`) on ``fd``.

    Returns the ioctl's non-negative result, or ``-errno`` if the kernel refused it, so that
    negative tests can assert the exact error code. ``arg`` is a ``bytearray`` holding a
    packed request (see :data:`PACKED`; the kernel's answer is written back into it), a cdata
    pointer, an integer (passed by value as an unsigned long) or None (0).
    """
    if type(arg) is bytearray:
        try:
            ret = _fcntl_ioctl(fd, IOCTLS[name], arg, True)
        except OSError as e:
            ret = -e.errno
        except ValueError:
            # fcntl refuses a negative fd itself; libc would have had the kernel say EBADF.
            if fd >= 0:
                raise
            ret = -errno.EBADF
    else:
        if arg is None or type(arg) is int:
            arg = ffi.cast(_UNSIGNED_LONG, arg or 0)
        ret = _libc_ioctl(fd, IOCTLS[name], arg)
        if ret < 0:
            ret = -ffi.errno
    if _transcript is not None and len(_transcript) < TRANSCRIPT_LIMIT:
        _transcript.append((name, fd, ret))
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
