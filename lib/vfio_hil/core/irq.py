"""eventfd(2) objects, the way VFIO delivers interrupts to userspace."""

from __future__ import annotations

import os
import select
import sys
import time

from . import uapi
from .handle import Handle


class EventFd(Handle):
    """A non-blocking, close-on-exec eventfd with a counter starting at 0."""

    def __init__(self) -> None:
        fd = uapi.libc.eventfd(0, uapi.EFD_NONBLOCK | uapi.EFD_CLOEXEC)
        if fd < 0:
            err = uapi.ffi.errno
            raise OSError(err, os.strerror(err), "eventfd")
        super().__init__(fd, f"eventfd {fd}")

    def read_count(self, timeout_s: float = 0.0) -> int:
        """Wait up to ``timeout_s`` seconds for the counter to become non-zero.

        Returns the counter (the number of signals since the last read) and resets it to 0,
        or returns 0 if nothing was signalled in time.
        """
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if poller.poll(remaining_ms):
                try:
                    return int.from_bytes(os.read(self.fd, 8), sys.byteorder)
                except BlockingIOError:
                    # Someone else consumed the count between poll and read; keep waiting.
                    pass
            if time.monotonic() >= deadline:
                return 0

    def signal(self, value: int = 1) -> None:
        """Add ``value`` to the counter, as the kernel does when the interrupt fires."""
        os.write(self.fd, value.to_bytes(8, sys.byteorder))
