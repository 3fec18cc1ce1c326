"""Ownership of DUT hosts and leases of their IOMMU groups, held on the DUT.

A run owns each host it drives through the DUT-side lock keeper (``vfio_hil.dut.hostlock``),
started over its own SSH session: the lock lives as long as that session, so a run that dies,
however it dies, leaves no stale lock, and every controller that reaches the host (several CI
runners, several checkouts) sees it. A second run waits, saying who holds the host, up to its
wait limit, then fails with :class:`HostBusyError` (exit 3) naming the holder.

Devices are leased per IOMMU group (the unit of ownership in VFIO) through the same keeper.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vfio_hil.dut import hostlock
from vfio_hil.lab import CHECKOUT
from vfio_hil.lab.errors import ChannelError, HilError

#: How long a run waits for a host another run holds, unless told otherwise.
DEFAULT_WAIT_S = 3600.0
#: How long the keeper may take to start (SSH login, Python start on a slow DUT).
START_TIMEOUT_S = 90.0
#: How often a waiting run says again who it waits for.
WAIT_NOTE_S = 30.0


class HostBusyError(HilError):
    """Another run held the host for longer than this run would wait."""


@dataclass(frozen=True)
class Holder:
    """Who owns a host: the run, the controller it runs on, its process and checkout."""

    run_id: str
    controller: str
    pid: int
    checkout: str

    @classmethod
    def this_process(cls, run_id: str) -> Holder:
        """The holder record of this process for run ``run_id``."""
        return cls(
            run_id=run_id,
            controller=socket.gethostname(),
            pid=os.getpid(),
            checkout=str(CHECKOUT),
        )


def holder_text(holder: dict[str, Any] | None) -> str:
    """One line naming a holder as the keeper recorded it."""
    if not holder:
        return "nobody"
    if not holder.get("run_id"):
        return "a run that is starting"
    return (
        f"run {holder['run_id']} (controller {holder.get('controller')}, pid {holder.get('pid')}, "
        f"checkout {holder.get('checkout')}) since {holder.get('since')}"
    )


def keeper_command(
    ssh: list[str] | None, python: str, lock_dir: str = hostlock.LOCK_DIR
) -> list[str]:
    """The command that starts the lock keeper: over ``ssh`` (an ssh command line ending with
    its destination), or locally when ``ssh`` is None."""
    source = Path(hostlock.__file__).read_text()
    if ssh is None:
        return [python, "-c", source, lock_dir]
    # Its own connection, never a shared master: the keeper must die with this session.
    return [
        *ssh[:1],
        "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes",
        "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
        *ssh[1:],
        f"{shlex.quote(python)} -c {shlex.quote(source)} {shlex.quote(lock_dir)}",
    ]  # fmt: skip


class LockKeeper:
    """The controller's end of one lock-keeper session on one DUT."""

    def __init__(self, host: str, command: list[str], log: Callable[[str], None] = print) -> None:
        self.host = host
        self.log = log
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            # Out of the terminal's process group: Ctrl-C must not drop the lock while the
            # run is still restoring the host. The keeper ends when this end of its stdin
            # closes, which our death (even SIGKILL) does too.
            start_new_session=True,
        )
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._ended: str | None = None
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._reply(START_TIMEOUT_S, "start")
        if "ready" not in ready:
            self.close()
            raise ChannelError(f"lock keeper on {host} did not start: {ready.get('error')}")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self._replies.put(json.loads(line))
            except ValueError:
                continue  # a login banner or a shell's noise, not ours
        self._replies.put(None)

    def lost(self) -> str | None:
        """Why the keeper's session is gone (the SSH error), or None while it lives. Read
        once: the session's error output can be read only once."""
        if self._ended is None and self._proc.poll() is not None:
            assert self._proc.stderr is not None
            err = self._proc.stderr.read().strip().splitlines()
            tail = err[-1] if err else f"exit status {self._proc.returncode}"
            self._ended = f"the session to {self.host} ended: {tail}"
        return self._ended

    def _next(self, timeout: float) -> dict[str, Any] | None:
        """The keeper's next reply, None when it said nothing for ``timeout`` seconds;
        ChannelError when its session ended."""
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            return None
        if reply is None:
            self._replies.put(None)  # every later read sees the end too
            self._proc.wait(10)
            raise ChannelError(f"lock keeper on {self.host}: {self.lost()}")
        return reply

    def _reply(self, timeout: float, what: str) -> dict[str, Any]:
        reply = self._next(timeout)
        if reply is None:
            raise ChannelError(
                f"lock keeper on {self.host}: no answer to {what} in {timeout:.0f} s"
            )
        return reply

    def _request(self, request: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except OSError:
            self._proc.wait(10)
            raise ChannelError(f"lock keeper on {self.host}: {self.lost()}") from None

    def _acquire(self, request: dict[str, Any], done: str, what: str, wait_s: float) -> dict:
        """Send a blocking request; log who holds the lock meanwhile; give up after
        ``wait_s`` (HostBusyError naming the holder, the request abandoned with the keeper)."""
        self._request(request)
        start = time.monotonic()
        holder: dict[str, Any] | None = None
        next_note = 0.0
        while True:
            now = time.monotonic()
            left = start + wait_s - now
            if left <= 0:
                self.close()
                raise HostBusyError(
                    f"{what} is held by {holder_text(holder)}; gave up after waiting "
                    f"{wait_s:.0f} s (--lock-wait)"
                )
            reply = self._next(min(left, WAIT_NOTE_S)) or {}
            if done in reply:
                return reply
            if "error" in reply:
                raise ChannelError(f"lock keeper on {self.host}: {reply['error']}")
            holder = reply.get("waiting", holder)
            if time.monotonic() >= next_note:
                self.log(f"{what} is held by {holder_text(holder)}: waiting")
                next_note = time.monotonic() + WAIT_NOTE_S

    def own(self, holder: Holder, wait_s: float = DEFAULT_WAIT_S) -> str:
        """Own the host for ``holder``'s run: ``"held"`` (taken now) or ``"joined"`` (the run
        already holds it through another process)."""
        reply = self._acquire(
            {"op": "own", "holder": asdict(holder)}, "owned", f"host {self.host}", wait_s
        )
        return str(reply["owned"])

    def lease(self, key: str, holder: Holder, wait_s: float = DEFAULT_WAIT_S) -> None:
        """Exclusive use of ``key`` (``group-12``) on this host."""
        self._acquire(
            {"op": "lease", "key": key, "holder": asdict(holder)},
            "leased",
            f"{key} of {self.host}",
            wait_s,
        )

    def release(self, key: str) -> None:
        """Give ``key`` back."""
        self._request({"op": "release", "key": key})
        self._reply(START_TIMEOUT_S, f"release of {key}")

    def holder(self) -> dict[str, Any] | None:
        """Who owns the host now, as its keeper recorded it."""
        self._request({"op": "holder"})
        return self._reply(START_TIMEOUT_S, "holder").get("holder")

    def close(self) -> None:
        """End the session: every lock it holds on the DUT goes with it."""
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
                self._proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
