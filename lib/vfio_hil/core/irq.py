"""eventfd(2) objects, the way VFIO delivers interrupts to userspace and takes ioeventfds."""

from __future__ import annotations

import os
import select
import sys
import time
from typing import TYPE_CHECKING, List

from . import uapi
from .handle import Handle, Owned

if TYPE_CHECKING:
    from .device import Device

_SINGLE_TRIGGER_INDICES = (uapi.VFIO_PCI_ERR_IRQ_INDEX, uapi.VFIO_PCI_REQ_IRQ_INDEX)


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


class IrqEventFds(Owned["Device"]):
    """Eventfds routed to consecutive vectors of one IRQ index (VFIO_IRQ_SET_DATA_EVENTFD).

    From :meth:`Device.irq_eventfds`. Closing disables the whole index (for MSI/MSI-X that
    also turns the capability off) and closes the eventfds.
    """

    _registry = "_irqs"

    def __init__(self, device: Device, index: int, count: int, start: int = 0) -> None:
        if count <= 0:
            raise ValueError(f"need at least one vector, not {count}")
        super().__init__(device)
        self.index = index
        self.start = start
        self.eventfds: List[EventFd] = []
        try:
            for _ in range(count):
                self.eventfds.append(EventFd())
            device.set_irqs_eventfd(index, [e.fd for e in self.eventfds], start)
        except BaseException:
            self._close_eventfds()
            raise

    def __getitem__(self, vector: int) -> EventFd:
        return self.eventfds[vector]

    def __len__(self) -> int:
        return len(self.eventfds)

    def wait(self, vector: int = 0, timeout_s: float = 1.0) -> int:
        """Wait for vector ``vector`` (relative to ``start``) to fire; return the count of
        interrupts since the last wait (0 on timeout)."""
        return self.eventfds[vector].read_count(timeout_s)

    def _close_eventfds(self) -> None:
        for eventfd in self.eventfds:
            eventfd.close()

    def _teardown(self, device: Device) -> None:
        try:
            if self.index in _SINGLE_TRIGGER_INDICES:
                # These only hold one eventfd, and refuse a DATA_NONE teardown when it is
                # already gone; de-assigning it always works.
                device.set_irqs_eventfd(self.index, [-1], self.start)
            else:
                device.disable_irqs(self.index)
        finally:
            self._close_eventfds()


class IoEventFd(Owned["Device"]):
    """An eventfd registered with VFIO_DEVICE_IOEVENTFD: signalling it makes the kernel write
    ``data`` (``width`` bytes) at ``offset`` of region ``index``.

    From :meth:`Device.ioeventfd`; closing removes the ioeventfd and closes the eventfd.
    """

    _registry = "_ioeventfds"

    def __init__(self, device: Device, index: int, offset: int, width: int, data: int) -> None:
        super().__init__(device)
        self.index, self.offset, self.width, self.data = index, offset, width, data
        self.eventfd = EventFd()
        try:
            device.set_ioeventfd(index, offset, width, data, self.eventfd.fd)
        except BaseException:
            self.eventfd.close()
            raise

    def signal(self) -> None:
        """Trigger the write (the kernel performs it asynchronously)."""
        self.eventfd.signal()

    def _teardown(self, device: Device) -> None:
        try:
            device.set_ioeventfd(self.index, self.offset, self.width, self.data, -1)
        finally:
            self.eventfd.close()
