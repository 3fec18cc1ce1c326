"""The DUT-side lock keeper: ownership of a DUT host and leases of its IOMMU groups, held on the
DUT itself by a process that lives exactly as long as the controller's session to it.

The controller starts this file as a script (``python3 -c SOURCE``) over SSH, or as a local
process for a local DUT, and talks to it in JSON lines on stdin and stdout. Its locks are
``flock(2)`` locks on files under ``/run/vfio-hil`` (a tmpfs: gone at reboot); the kernel drops
them when the keeper exits for any reason, and the keeper exits when its stdin closes, which
is what happens when the controller or its SSH session dies. So a killed controller never
leaves a stale lock, and a second controller (another CI runner) sees the same locks.

Requests and replies, one JSON object per line:

``{"op": "own", "holder": {...}}``
    Own the host: take the host lock, or join it when it is already held by the same run (the
    ``run_id`` of ``holder``: the ``vfio-hil run`` process and its pytest workers are one run).
    While another run holds it, replies ``{"waiting": HOLDER}`` (again when the holder
    changes) and retries; then ``{"owned": "held"|"joined", "holder": HOLDER}``.
``{"op": "lease", "key": "group-12", "holder": {...}}``
    Exclusive use of an IOMMU group (or of a device in no group): ``{"waiting": ...}`` while
    another keeper holds it, then ``{"leased": KEY}``. Counted: leasing a key this keeper
    already holds only counts it again.
``{"op": "release", "key": KEY}``
    ``{"released": KEY}`` once the count drops to zero.
``{"op": "holder"}``
    ``{"holder": HOLDER or None}``: who owns the host now (None when nobody does).

Needs only the Python standard library (3.9+): it runs before the DUT package is deployed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import sys
import time
from typing import IO, Any, Dict, Optional, Tuple

LOCK_DIR = "/run/vfio-hil"
HOST_KEY = "host"
#: How often a blocked request tries its lock again.
RETRY_S = 0.5


def _holder_path(lock_dir: str, key: str) -> str:
    return os.path.join(lock_dir, f"{key}.json")


def read_holder(lock_dir: str, key: str) -> Optional[Dict[str, Any]]:
    """Who holds ``key`` (as its keeper wrote it), or None when the lock is free."""
    fd = os.open(os.path.join(lock_dir, f"{key}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return None  # nobody holds it (the file is what a dead keeper left)
    finally:
        os.close(fd)
    try:
        with open(_holder_path(lock_dir, key), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {"run_id": None, "note": "holder not recorded yet"}


class Keeper:
    """The locks one controller session holds on this DUT."""

    def __init__(self, lock_dir: str = LOCK_DIR) -> None:
        self.lock_dir = lock_dir
        os.makedirs(lock_dir, mode=0o755, exist_ok=True)
        self.held: Dict[str, Tuple[int, int]] = {}  # key -> (fd, count)

    def try_lock(self, key: str, holder: Dict[str, Any]) -> bool:
        """Take ``key`` without waiting; on success record ``holder`` beside it."""
        if key in self.held:
            fd, count = self.held[key]
            self.held[key] = (fd, count + 1)
            return True
        fd = os.open(os.path.join(self.lock_dir, f"{key}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        record = dict(
            holder, since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), dut_pid=os.getpid()
        )
        tmp = _holder_path(self.lock_dir, key) + f".{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, _holder_path(self.lock_dir, key))
        self.held[key] = (fd, 1)
        return True

    def release(self, key: str) -> None:
        """Drop one count of ``key``; unlock it at zero."""
        if key not in self.held:
            return
        fd, count = self.held[key]
        if count > 1:
            self.held[key] = (fd, count - 1)
            return
        del self.held[key]
        with contextlib.suppress(OSError):
            os.unlink(_holder_path(self.lock_dir, key))
        os.close(fd)  # closing the last descriptor drops the flock


def _send(out: IO[str], reply: Dict[str, Any]) -> None:
    out.write(json.dumps(reply) + "\n")
    out.flush()


def _stdin_closed(inp: IO[str], wait_s: float) -> bool:
    """Wait up to ``wait_s`` for stdin; True when it reached EOF (the controller is gone)."""
    ready, _, _ = select.select([inp], [], [], wait_s)
    if not ready:
        return False
    # The controller sends nothing while it waits for a reply: readable means EOF.
    return inp.readline() == ""


def _acquire(keeper: Keeper, key: str, holder: Dict[str, Any], inp: IO[str], out: IO[str]) -> bool:
    """Block until ``key`` is ours, telling the controller who holds it meanwhile; False when
    the controller went away while waiting."""
    last = None
    while not keeper.try_lock(key, holder):
        current = read_holder(keeper.lock_dir, key)
        if current is not None and current != last:
            _send(out, {"waiting": current})
            last = current
        if _stdin_closed(inp, RETRY_S):
            return False
    return True


def _own(keeper: Keeper, holder: Dict[str, Any], inp: IO[str], out: IO[str]) -> bool:
    current = read_holder(keeper.lock_dir, HOST_KEY)
    if (
        current is not None
        and HOST_KEY not in keeper.held
        and current.get("run_id") == holder.get("run_id")
    ):
        _send(out, {"owned": "joined", "holder": current})
        return True
    if not _acquire(keeper, HOST_KEY, holder, inp, out):
        return False
    _send(out, {"owned": "held", "holder": read_holder(keeper.lock_dir, HOST_KEY)})
    return True


def serve(inp: IO[str], out: IO[str], lock_dir: str = LOCK_DIR) -> None:
    """Answer requests until stdin closes; every lock goes with this process."""
    try:
        keeper = Keeper(lock_dir)
    except OSError as exc:
        _send(out, {"error": f"cannot create {lock_dir}: {exc}"})
        return
    _send(out, {"ready": os.getpid()})
    for line in iter(inp.readline, ""):
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "own":
                if not _own(keeper, request["holder"], inp, out):
                    return
            elif op == "lease":
                if not _acquire(keeper, request["key"], request["holder"], inp, out):
                    return
                _send(out, {"leased": request["key"]})
            elif op == "release":
                keeper.release(request["key"])
                _send(out, {"released": request["key"]})
            elif op == "holder":
                _send(out, {"holder": read_holder(lock_dir, HOST_KEY)})
            else:
                _send(out, {"error": f"unknown request {op!r}"})
        except (ValueError, KeyError, TypeError, OSError) as exc:
            _send(out, {"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout, sys.argv[1] if len(sys.argv) > 1 else LOCK_DIR)
