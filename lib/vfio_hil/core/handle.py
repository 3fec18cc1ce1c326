"""Base class for objects that own a VFIO file descriptor."""

from __future__ import annotations

import os
import warnings
from types import TracebackType
from typing import Any, Optional, Type, TypeVar

from . import uapi
from .errors import VfioError

_H = TypeVar("_H", bound="Handle")


def open_node(path: str, target: str) -> int:
    """Open a VFIO character device read-write, close-on-exec.

    Raises VfioError (``ioctl="open"``) so that callers see kernel refusals, such as EBUSY for
    a group that is already open, in the same form as ioctl failures.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise VfioError(e.errno, "open", target, {"path": path}) from None


class Handle:
    """Owns one file descriptor; closing the handle closes it, exactly once."""

    def __init__(self, fd: int, target: str) -> None:
        self._fd = fd
        self.target = target

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

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

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
        return uapi.ioctl(self.fd, name, arg, target=self.target, arguments=arguments)

    def _ioctl_raw(self, name: str, arg: Any = None) -> int:
        return uapi.ioctl_raw(self.fd, name, arg)
