"""One interface over the two IOMMU backends: the legacy VFIO container (type1, type1v2,
no-IOMMU) and iommufd with VFIO device cdevs.

Like libvfn's IOMMU context ops table or rust-vmm's ``VfioOps``: code that needs "a place
to map DMA and open devices" takes an :class:`IommuBackend` and works under both.
:func:`open_iommu` picks the backend from what the kernel offers, or the one the caller
forces. No-IOMMU mode (no DMA isolation at all) is never picked silently.
"""

from __future__ import annotations

import abc
import errno
import os
from typing import Dict, List, Mapping, Optional

from . import sysfs, uapi
from .container import CONTAINER_PATH, Container
from .device import VFIO_CDEV_DIR, Device
from .dma import DmaBuffer
from .errors import BackendUnavailableError, UnsafeModeError
from .group import VFIO_DEV_DIR, Group, group_node
from .handle import Closing, Owned, Registry
from .iommufd import IOMMUFD_PATH, Ioas, Iommufd
from .iommufd import map_flags as iommufd_map_flags
from .iova import IOVA_END, IovaAllocator, IovaRange

#: Backend names :func:`open_iommu` accepts, besides ``"auto"``.
BACKENDS = ("iommufd", "type1v2", "type1", "noiommu")
_CONTAINER_TYPES: Dict[str, int] = {
    "type1v2": uapi.VFIO_TYPE1v2_IOMMU,
    "type1": uapi.VFIO_TYPE1_IOMMU,
    "noiommu": uapi.VFIO_NOIOMMU_IOMMU,
}

_RW = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE
#: How a caller asks for no-IOMMU mode by name, as the refusals say.
ASK_NOIOMMU = "open_iommu('noiommu') or open_iommu(allow_noiommu=True)"
#: The device id GET_PCI_HOT_RESET_INFO reports, with VFIO_PCI_HOT_RESET_FLAG_DEV_ID, for an
#: affected device the caller's iommufd does not own (VFIO_PCI_DEVID_NOT_OWNED, -1 as __u32).
_DEVID_NOT_OWNED = 0xFFFF_FFFF


class DmaMapping(Owned["IommuBackend"]):
    """A buffer mapped for DMA by :meth:`IommuBackend.map_buffer`; closing unmaps it and
    returns its IOVA to the backend's allocator."""

    _registry = "_mappings"

    def __init__(self, backend: IommuBackend, buffer: DmaBuffer, iova: int) -> None:
        super().__init__(backend)
        self.buffer = buffer
        self.iova = iova
        self.size = buffer.length

    def _forget(self) -> None:
        """Mark the mapping closed and give its IOVA back, without unmapping it."""
        backend, self._owner = self._owner, None
        if backend is not None:
            backend.iovas.free(self.iova)

    def _teardown(self, backend: IommuBackend) -> None:
        try:
            backend.unmap_dma(self.iova, self.size)
        finally:
            backend.iovas.free(self.iova)

    def __repr__(self) -> str:
        return f"<DmaMapping iova={self.iova:#x} size={self.size:#x}>"


class IommuBackend(Closing, abc.ABC):
    """An IOMMU context: where DMA mappings live and how devices join it.

    Owns every device it opened and every :class:`DmaMapping` it made; closing the backend
    closes them, then its own fds (which makes the kernel drop the remaining mappings).
    """

    #: ``"iommufd"``, ``"type1v2"``, ``"type1"`` or ``"noiommu"``.
    name: str

    def __init__(self) -> None:
        self._devices: List[Device] = []
        self._mappings: Registry[DmaMapping] = Registry()
        self._iovas: Optional[IovaAllocator] = None
        self._closed = False

    @abc.abstractmethod
    def _attach(self, bdf: str) -> Device:
        """Open ``bdf`` and make it use this context."""

    @abc.abstractmethod
    def map_dma(
        self, vaddr: int, iova: int, size: int, readable: bool = True, writable: bool = True
    ) -> None:
        """Map ``size`` bytes at process address ``vaddr`` to ``iova`` (fixed)."""

    @abc.abstractmethod
    def unmap_dma(self, iova: int, size: int) -> int:
        """Unmap ``[iova, iova+size)``; return the bytes unmapped."""

    @abc.abstractmethod
    def raw_map_dma(self, vaddr: int, iova: int, size: int, flags: int = _RW) -> int:
        """Map at the fixed ``iova`` with VFIO_DMA_MAP_FLAG_READ/WRITE ``flags`` (the
        container's terms, whatever the backend); 0 or ``-errno``."""

    @abc.abstractmethod
    def raw_unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """Unmap ``[iova, iova+size)``; the bytes unmapped or ``-errno``. ``flags`` are
        VFIO_IOMMU_UNMAP_DMA's (iommufd takes none: any flag is ``-EINVAL``)."""

    @abc.abstractmethod
    def _unmap_everything(self) -> int:
        """Unmap every IOVA in the context; return the bytes unmapped."""

    @abc.abstractmethod
    def iova_ranges(self) -> List[IovaRange]:
        """The IOVA ranges mappings may use (they narrow as devices join)."""

    @abc.abstractmethod
    def hot_reset(self, device: Device) -> None:
        """Reset the bus or slot of ``device`` (every affected device must be owned here)."""

    @abc.abstractmethod
    def _close_context(self) -> None:
        """Close the backend's own fds."""

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def open_device(self, bdf: str) -> Device:
        """Open PCI device ``bdf`` (bound to vfio-pci) in this IOMMU context."""
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        device = self._attach(sysfs.normalize_bdf(bdf))
        self._devices.append(device)
        return device

    @property
    def iovas(self) -> IovaAllocator:
        """The allocator :meth:`map_buffer` takes IOVAs from, built on first use from
        :meth:`iova_ranges` (so open the devices first)."""
        if self._iovas is None:
            self._iovas = IovaAllocator(self.iova_ranges())
        return self._iovas

    def unmap_all(self) -> int:
        """Unmap everything, :meth:`map_buffer` mappings included; return the bytes unmapped."""
        unmapped = self._unmap_everything()
        for mapping in self._mappings:
            mapping._forget()
        self._mappings.clear()
        return unmapped

    def map_buffer(
        self,
        buffer: DmaBuffer,
        iova: Optional[int] = None,
        readable: bool = True,
        writable: bool = True,
        limit: int = IOVA_END,
    ) -> DmaMapping:
        """Map the whole of ``buffer``; return the mapping (a context manager).

        The IOVA is ``iova`` if given, otherwise allocated inside the allowed ranges, below
        ``limit`` (e.g. a device's DMA address limit) and aligned to the buffer's page size
        so huge pages stay huge in the IOMMU.
        """
        if iova is None:
            iova = self.iovas.alloc(buffer.length, align=buffer.page_size, limit=limit)
        else:
            self.iovas.reserve(iova, buffer.length)
        try:
            self.map_dma(buffer.vaddr, iova, buffer.length, readable, writable)
        except BaseException:
            self.iovas.free(iova)
            raise
        mapping = DmaMapping(self, buffer, iova)
        self._mappings.add(mapping)
        return mapping

    def close(self) -> None:
        """Unmap, close the devices, then the context. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            while self._mappings:
                self._mappings.newest().close()
        finally:
            try:
                for device in self._devices:
                    device.close()
            finally:
                self._close_context()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}{' closed' if self._closed else ''}>"


class ContainerBackend(IommuBackend):
    """The legacy backend: a VFIO container, with each device's group attached to it."""

    def __init__(
        self,
        container: Container,
        name: str,
        *,
        allow_noiommu: bool = False,
        dev_dir: str = VFIO_DEV_DIR,
        sysfs_root: str = "/",
    ) -> None:
        """``allow_noiommu``: a container not yet given an IOMMU model may become a
        no-IOMMU one (``name`` turns ``"noiommu"``) when the first group opened is a
        no-IOMMU group; without it such a group is refused (:class:`UnsafeModeError`)."""
        if name not in _CONTAINER_TYPES:
            raise ValueError(f"container backend must be one of {tuple(_CONTAINER_TYPES)}")
        super().__init__()
        self.name = name
        self.allow_noiommu = allow_noiommu
        self.container = container
        self._dev_dir = dev_dir
        self._sysfs_root = sysfs_root
        #: Groups attached to the container, by number.
        self.groups: Dict[int, Group] = {}

    def _group_number(self, bdf: str) -> int:
        try:
            return sysfs.iommu_group(bdf, self._sysfs_root)
        except FileNotFoundError:
            path = sysfs.device_path(bdf, self._sysfs_root)
            if not os.path.isdir(path):
                raise FileNotFoundError(errno.ENOENT, f"no PCI device {bdf}", path) from None
            raise BackendUnavailableError(
                f"{bdf} is in no IOMMU group: no IOMMU isolates it (absent or disabled), so a "
                "VFIO container cannot take it"
            ) from None

    def _group(self, bdf: str) -> Group:
        number = self._group_number(bdf)
        if number in self.groups:
            return self.groups[number]
        group = Group(
            number,
            dev_dir=self._dev_dir,
            sysfs_root=self._sysfs_root,
            ioctl_fn=self.container._ioctl_fn,
        )
        try:
            if group.noiommu and self.name != "noiommu":
                if not self.allow_noiommu or self.container.iommu_type is not None:
                    raise UnsafeModeError(noiommu_refusal(bdf, number, self.name))
                # Asked for by name, and nothing has chosen the container's model yet.
                self.name = "noiommu"
            elif not group.noiommu and self.name == "noiommu":
                raise UnsafeModeError(
                    f"{bdf}: group {number} is not a no-IOMMU group, the backend is noiommu "
                    "(open another backend for it)"
                )
            group.set_container(self.container)
            if self.container.iommu_type is None:
                # The IOMMU model can only be chosen once a group is in the container.
                self.container.set_iommu(_CONTAINER_TYPES[self.name])
        except BaseException:
            group.close()
            raise
        self.groups[number] = group
        return group

    def _attach(self, bdf: str) -> Device:
        return self._group(bdf).device(bdf)

    def map_dma(
        self, vaddr: int, iova: int, size: int, readable: bool = True, writable: bool = True
    ) -> None:
        """VFIO_IOMMU_MAP_DMA (see :meth:`Container.map_dma`)."""
        self.container.map_dma(vaddr, iova, size, readable, writable)

    def unmap_dma(self, iova: int, size: int) -> int:
        """VFIO_IOMMU_UNMAP_DMA (see :meth:`Container.unmap_dma`)."""
        return self.container.unmap_dma(iova, size)

    def raw_map_dma(self, vaddr: int, iova: int, size: int, flags: int = _RW) -> int:
        """VFIO_IOMMU_MAP_DMA through the raw tier."""
        return self.container.raw_map_dma(vaddr, iova, size, flags)

    def raw_unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """VFIO_IOMMU_UNMAP_DMA through the raw tier."""
        return self.container.raw_unmap_dma(iova, size, flags)

    def _unmap_everything(self) -> int:
        return self.container.unmap_all()

    def iova_ranges(self) -> List[IovaRange]:
        """The container's IOVA ranges; needs a device opened first (the IOMMU model is only
        set then)."""
        if self.container.iommu_type is None:
            raise RuntimeError(
                "the container has no IOMMU model before a device is opened: open one first"
            )
        return self.container.iova_ranges()

    def hot_reset(self, device: Device) -> None:
        """VFIO_DEVICE_PCI_HOT_RESET with the fds of every group the reset affects."""
        needed = sorted({d.group_id for d in device.hot_reset_info().devices})
        missing = [n for n in needed if n not in self.groups]
        if missing:
            raise ValueError(
                f"hot reset of {device.bdf} affects groups {needed}; groups {missing} are not "
                "open in this container (open a device of each first)"
            )
        device.hot_reset([self.groups[n] for n in needed])

    def _close_context(self) -> None:
        try:
            for group in self.groups.values():
                group.close()
        finally:
            self.container.close()


class IommufdBackend(IommuBackend):
    """The iommufd backend: one IOAS in /dev/iommu, devices opened through their cdevs."""

    name = "iommufd"

    def __init__(
        self,
        iommufd_path: str = IOMMUFD_PATH,
        *,
        cdev_dir: str = VFIO_CDEV_DIR,
        dev_dir: str = VFIO_DEV_DIR,
        sysfs_root: str = "/",
        ioctl_fn: uapi.IoctlFn = uapi.ioctl_raw,
    ) -> None:
        """``dev_dir`` holds the group nodes, which tell a no-IOMMU device (refused)."""
        super().__init__()
        self.iommufd = Iommufd(iommufd_path, ioctl_fn=ioctl_fn)
        try:
            self.ioas: Ioas = self.iommufd.alloc_ioas()
        except BaseException:
            self.iommufd.close()
            raise
        self._cdev_dir = cdev_dir
        self._dev_dir = dev_dir
        self._sysfs_root = sysfs_root

    def _attach(self, bdf: str) -> Device:
        try:
            number: Optional[int] = sysfs.iommu_group(bdf, self._sysfs_root)
        except FileNotFoundError:
            number = None  # open_cdev says what is missing
        if number is not None and group_node(number, self._dev_dir)[1]:
            # The kernel gives a no-IOMMU device no cdev (its vfio-dev entry has no dev_t),
            # so only the container's no-IOMMU model can open it.
            raise UnsafeModeError(
                noiommu_refusal(
                    bdf,
                    number,
                    self.name,
                    "iommufd cannot open it (the kernel gives no-IOMMU devices no VFIO device "
                    "cdev); to use it anyway ask for the container's no-IOMMU mode by name: "
                    "open_iommu('noiommu')",
                )
            )
        device = Device.open_cdev(
            bdf,
            dev_dir=self._cdev_dir,
            sysfs_root=self._sysfs_root,
            ioctl_fn=self.iommufd._ioctl_fn,
        )
        try:
            device.bind_iommufd(self.iommufd)
            device.attach_ioas(self.ioas.id)
        except BaseException:
            device.close()
            raise
        return device

    def map_dma(
        self, vaddr: int, iova: int, size: int, readable: bool = True, writable: bool = True
    ) -> None:
        """IOMMU_IOAS_MAP at the fixed ``iova``."""
        self.ioas.map(vaddr, size, iova, readable, writable)

    def unmap_dma(self, iova: int, size: int) -> int:
        """IOMMU_IOAS_UNMAP."""
        return self.ioas.unmap(iova, size)

    def raw_map_dma(self, vaddr: int, iova: int, size: int, flags: int = _RW) -> int:
        """IOMMU_IOAS_MAP at the fixed ``iova`` through the raw tier, READ/WRITE from the
        VFIO flags; any other VFIO flag has no IOMMU_IOAS_MAP meaning and is ``-EINVAL``
        (as the container answers an unknown flag), never silently dropped."""
        if flags & ~_RW:
            return -errno.EINVAL
        ret = self.ioas.raw_map(
            vaddr,
            size,
            iova,
            iommufd_map_flags(
                iova,
                bool(flags & uapi.VFIO_DMA_MAP_FLAG_READ),
                bool(flags & uapi.VFIO_DMA_MAP_FLAG_WRITE),
            ),
        )
        return min(ret, 0)

    def raw_unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """IOMMU_IOAS_UNMAP through the raw tier."""
        return -errno.EINVAL if flags else self.ioas.raw_unmap(iova, size)

    def _unmap_everything(self) -> int:
        return self.ioas.unmap_all()

    def iova_ranges(self) -> List[IovaRange]:
        """IOMMU_IOAS_IOVA_RANGES of the IOAS."""
        return self.ioas.iova_ranges()[0]

    def hot_reset(self, device: Device) -> None:
        """VFIO_DEVICE_PCI_HOT_RESET with no group fds: the kernel checks ownership through
        the iommufd the device is bound to. As under the container, the affected devices are
        asked first (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: ENODEV for a device with no bus or
        slot reset), and a reset affecting a device this iommufd does not own is refused."""
        info = device.hot_reset_info()
        if not info.flags & uapi.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED:
            foreign = [d.bdf for d in info.devices if d.group_id == _DEVID_NOT_OWNED]
            raise ValueError(
                f"hot reset of {device.bdf} affects {foreign or 'devices'} not bound to this "
                "iommufd (open each of them in this backend first)"
            )
        device.hot_reset([])

    def _close_context(self) -> None:
        try:
            self.ioas.close()
        finally:
            self.iommufd.close()


def noiommu_refusal(bdf: str, group: int, backend: str, how: str = "") -> str:
    """Why ``backend`` refuses ``bdf``, whose ``group`` is a no-IOMMU group, and how to ask
    for no-IOMMU mode by name (``how``, by default :data:`ASK_NOIOMMU`): one message, for
    :class:`UnsafeModeError`."""
    return (
        f"{bdf}: group {group} is a no-IOMMU group (/dev/vfio/noiommu-{group}: VFIO no-IOMMU "
        "mode, vfio.enable_unsafe_noiommu_mode=1): nothing isolates the device's DMA, so the "
        f"{backend} backend refuses it; "
        + (how or f"to use it anyway ask for no-IOMMU mode by name: {ASK_NOIOMMU}")
    )


def choose_backend(
    requested: str,
    *,
    iommufd: bool,
    cdev: bool,
    extensions: Mapping[str, bool],
    allow_noiommu: bool = False,
) -> str:
    """Decide which backend :func:`open_iommu` opens.

    ``iommufd``/``cdev``: whether /dev/iommu and /dev/vfio/devices exist; ``extensions``:
    :meth:`Container.extensions` (empty if there is no container). ``"auto"`` prefers
    iommufd, then type1v2, then type1; it picks no-IOMMU mode only with ``allow_noiommu``
    and otherwise raises :class:`UnsafeModeError`. A forced backend the kernel lacks raises
    :class:`BackendUnavailableError`.
    """
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"IOMMU backend must be 'auto' or one of {BACKENDS}, not {requested!r}")
    if requested == "iommufd" or (requested == "auto" and iommufd and cdev):
        if not (iommufd and cdev):
            raise BackendUnavailableError(iommufd_missing(iommufd=iommufd, cdev=cdev))
        return "iommufd"
    ext_names = {
        "type1v2": "VFIO_TYPE1v2_IOMMU",
        "type1": "VFIO_TYPE1_IOMMU",
        "noiommu": "VFIO_NOIOMMU_IOMMU",
    }
    if requested != "auto":
        if not extensions.get(ext_names[requested]):
            raise BackendUnavailableError(
                f"the VFIO container does not offer {ext_names[requested]}"
                + ("" if extensions else " (no /dev/vfio/vfio)")
            )
        return requested
    for name in ("type1v2", "type1"):
        if extensions.get(ext_names[name]):
            return name
    if extensions.get("VFIO_NOIOMMU_IOMMU"):
        if allow_noiommu:
            return "noiommu"
        raise UnsafeModeError(
            "the kernel only offers VFIO no-IOMMU mode (vfio.enable_unsafe_noiommu_mode=1): "
            f"devices are not isolated; to use it anyway: {ASK_NOIOMMU}"
        )
    raise BackendUnavailableError(
        "no IOMMU backend: no /dev/iommu with device cdevs and no VFIO container IOMMU driver"
        + ("" if extensions else " (no /dev/vfio/vfio)")
    )


def iommufd_missing(*, iommufd: bool, cdev: bool) -> str:
    """Why the iommufd backend cannot be opened, given whether /dev/iommu and
    /dev/vfio/devices exist (not both). Neither node says the kernel lacks anything by its
    absence alone: /dev/iommu comes with the iommufd module, the device cdevs with a device
    bound to vfio-pci."""
    needs = "iommufd backend needs /dev/iommu and VFIO device cdevs (/dev/vfio/devices)"
    cdevs = (
        "the device cdevs appear once vfio-pci binds a device (on a kernel with "
        "CONFIG_VFIO_DEVICE_CDEV, and never for a no-IOMMU device)"
    )
    iommu = "/dev/iommu appears once the iommufd module is loaded (CONFIG_IOMMUFD)"
    if iommufd:
        return f"{needs}: /dev/vfio/devices is missing; {cdevs}"
    if cdev:
        return f"{needs}: /dev/iommu is missing; {iommu}"
    return f"{needs}: both are missing; {iommu}, and {cdevs}"


def open_iommu(
    backend: str = "auto",
    *,
    allow_noiommu: bool = False,
    dev_dir: str = VFIO_DEV_DIR,
    container_path: str = CONTAINER_PATH,
    iommufd_path: str = IOMMUFD_PATH,
    cdev_dir: str = VFIO_CDEV_DIR,
    sysfs_root: str = "/",
) -> IommuBackend:
    """Open an IOMMU context: ``backend`` ``"auto"`` (see :func:`choose_backend`) or one of
    :data:`BACKENDS`. With ``allow_noiommu``, an ``"auto"`` container whose first device is
    in a no-IOMMU group takes the no-IOMMU model (:class:`ContainerBackend`); without it, or
    ``backend="noiommu"``, no-IOMMU devices are refused. The paths only move the device
    nodes (tests)."""
    have_iommufd = os.path.exists(iommufd_path)
    have_cdev = os.path.isdir(cdev_dir)
    container: Optional[Container] = None
    if backend != "iommufd" and not (backend == "auto" and have_iommufd and have_cdev):
        container = Container(container_path) if os.path.exists(container_path) else None
    try:
        name = choose_backend(
            backend,
            iommufd=have_iommufd,
            cdev=have_cdev,
            extensions=container.extensions() if container else {},
            allow_noiommu=allow_noiommu or backend == "noiommu",
        )
        if name == "iommufd":
            if container is not None:
                container.close()
            return IommufdBackend(
                iommufd_path, cdev_dir=cdev_dir, dev_dir=dev_dir, sysfs_root=sysfs_root
            )
        assert container is not None
        return ContainerBackend(
            container,
            name,
            allow_noiommu=allow_noiommu and backend == "auto",
            dev_dir=dev_dir,
            sysfs_root=sysfs_root,
        )
    except BaseException:
        if container is not None:
            container.close()
        raise


def available_backends(
    *,
    container_path: str = CONTAINER_PATH,
    iommufd_path: str = IOMMUFD_PATH,
    cdev_dir: str = VFIO_CDEV_DIR,
) -> Dict[str, str]:
    """Every backend name and why it cannot be used here (``""``: it can), for test
    parametrization and skip reasons."""
    extensions: Dict[str, bool] = {}
    if os.path.exists(container_path):
        with Container(container_path) as container:
            extensions = container.extensions()
    reasons: Dict[str, str] = {}
    for name in BACKENDS:
        try:
            choose_backend(
                name,
                iommufd=os.path.exists(iommufd_path),
                cdev=os.path.isdir(cdev_dir),
                extensions=extensions,
                allow_noiommu=True,
            )
            reasons[name] = ""
        except BackendUnavailableError as e:
            reasons[name] = str(e)
    return reasons
