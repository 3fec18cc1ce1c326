"""Base class for objects that own a VFIO file descriptor."""

from __future__ import annotations

import os
import warnings
from types import TracebackType
from typing import Any, Dict, Generic, Iterator, Mapping, NoReturn, Optional, Type, TypeVar

from . import uapi
from .errors import VfioError

_C = TypeVar("_C", bound="Closing")
_O = TypeVar("_O", bound="Owned[Any]")
_Owner = TypeVar("_Owner")
_T = TypeVar("_T")


def open_node(path: str, target: str) -> int:
    """Open a VFIO character device read-write, close-on-exec.

    Raises VfioError (``ioctl="open"``) so that callers see kernel refusals, such as EBUSY for
    a group that is already open, in the same form as ioctl failures.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise VfioError(e.errno, "open", target, {"path": path}) from None


def checked(ret: int, name: str, target: str, arguments: Mapping[str, Any]) -> int:
    """Return ``ret``, a raw-tier result, or raise the VfioError that ``-errno`` stands for."""
    if ret < 0:
        raise VfioError(-ret, name, target, arguments)
    return ret


class Closing:
    """Context-manager support for anything that has ``close()``: ``with x:`` closes ``x``."""

    def close(self) -> None:
        """Release what the object holds (subclasses define it)."""
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class Handle(Closing):
    """Owns one file descriptor; closing the handle closes it, exactly once.

    ``ioctl_fn`` issues the ioctls (default: the real :func:`~vfio_hil.core.uapi.ioctl_raw`);
    unit tests pass a recorder to check call sequences and structure bytes without a kernel.
    Objects a handle creates (a group's devices, an iommufd's IOAS) inherit it.
    """

    def __init__(self, fd: int, target: str, ioctl_fn: uapi.IoctlFn = uapi.ioctl_raw) -> None:
        self._fd = fd
        self.target = target
        self._ioctl_fn = ioctl_fn

    @property
    def fd(self) -> int:
        """The owned file descriptor. Raises ValueError once the handle is closed."""
        if self._fd < 0:
            raise ValueError(f"{self.target} is closed")
        return self._fd

    def fileno(self) -> int:
        """Same as :attr:`fd`, so handles work with select/poll."""
        return self.fd

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._fd < 0

    def _release(self) -> None:
        """Free what depends on the fd; runs just before it is closed."""

    def close(self) -> None:
        """Release dependent resources and close the fd. Idempotent."""
        if self._fd < 0:
            return
        try:
            self._release()
        finally:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __del__(self) -> None:
        # Like io objects: a forgotten handle is a bug worth a warning, not a leaked fd.
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target} fd={self._fd}>"

    def _ioctl(self, name: str, arg: Any = None, /, **arguments: Any) -> int:
        """Issue ioctl ``name`` on the owned fd, raising VfioError naming this target.

        ``arguments`` only feed the error report (positional-only parameters leave every
        keyword free for it).
        """
        return checked(self._ioctl_fn(self.fd, name, arg), name, self.target, arguments)

    def _refused(self, errno: int, name: str, /, **arguments: Any) -> NoReturn:
        """Raise the VfioError for ioctl ``name`` refused with ``errno``; for hot paths that
        issue the raw ioctl on ``_fd`` and only build the report when it fails.

        On a closed handle (the kernel said EBADF) it raises what :attr:`fd` raises.
        """
        self.fd  # noqa: B018 - the closed-handle check
        raise VfioError(errno, name, self.target, arguments)

    def _ioctl_raw(self, name: str, arg: Any = None) -> int:
        return self._ioctl_fn(self.fd, name, arg)

    def _info(self, name: str, struct: str, /, **fields: int) -> bytes:
        """Issue INFO ioctl ``name`` with a ``struct <struct>`` carrying ``fields`` and return
        the whole answer, capability chain included, as bytes.

        The kernel fills the chain only when ``argsz`` covers it, and otherwise reports the
        size it needs in ``argsz``: ask again with a buffer of that size. ``fields`` also feed
        the error report.
        """
        info = uapi.new(struct, **fields)
        self._ioctl(name, info, **fields)
        fixed = uapi.ffi.sizeof(info[0])
        if info.argsz <= fixed:
            return bytes(uapi.ffi.buffer(info, fixed))
        raw = uapi.ffi.new("uint8_t[]", info.argsz)
        full = uapi.ffi.cast(f"struct {struct} *", raw)
        full.argsz = info.argsz
        for field, value in fields.items():
            setattr(full, field, value)
        self._ioctl(name, full, **fields)
        return bytes(uapi.ffi.buffer(raw, min(int(full.argsz), len(raw))))


class Registry(Generic[_T]):
    """The live objects an owner made, in creation order: adding and removing any one of
    them takes constant time, so an owner of tens of thousands (DMA mappings) closes them
    in linear time whatever the order."""

    def __init__(self) -> None:
        self._items: Dict[_T, None] = {}

    def add(self, item: _T) -> None:
        """Register ``item`` as the newest."""
        self._items[item] = None

    def remove(self, item: _T) -> None:
        """Forget ``item``; KeyError if it is not registered."""
        del self._items[item]

    def newest(self) -> _T:
        """The most recently added live item; IndexError when empty."""
        for item in reversed(self._items):
            return item
        raise IndexError("the registry is empty")

    def clear(self) -> None:
        """Forget every item."""
        self._items.clear()

    def __iter__(self) -> Iterator[_T]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({list(self._items)!r})"


class Owned(Closing, Generic[_Owner]):
    """Something an owner (a device, a backend, an iommufd) creates, lists in its
    ``_registry`` attribute and closes with itself, unless closed first."""

    #: Name of the owner's list attribute that holds the live objects of this kind.
    _registry: str

    def __init__(self, owner: _Owner) -> None:
        self._owner: Optional[_Owner] = owner

    @property
    def closed(self) -> bool:
        """True once closed, directly or with its owner."""
        return self._owner is None

    def _live_owner(self) -> _Owner:
        if self._owner is None:
            raise ValueError(f"{self!r} is closed")
        return self._owner

    def _teardown(self, owner: _Owner) -> None:
        """Undo the kernel-side setup; the owner is still usable."""
        raise NotImplementedError

    def close(self) -> None:
        """Undo the setup and release the resources. Idempotent."""
        owner, self._owner = self._owner, None
        if owner is None:
            return
        getattr(owner, self._registry).remove(self)
        self._teardown(owner)
