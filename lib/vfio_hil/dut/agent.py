"""The DUT-side agent: answers calls from the controller over an execnet channel.

execnet sends this module's source to the DUT and runs it as ``__channelexec__``. The first
message names where the deployed ``vfio_hil`` package is (a zip on sys.path); each further
message is ``{"func": "probes.edu_msi", "kwargs": {...}}`` and gets ``{"result": ...}`` or
``{"error": {...}}`` back; ``None`` ends the loop. Needs only Python 3.9+ (and cffi for the
core library).
"""

from __future__ import annotations

import errno
import sys
import traceback
from typing import Any, Callable, List


def dispatch(importer: Callable[[str], Any], func: str, kwargs: dict) -> dict:
    """Call ``vfio_hil.dut.<func>`` and wrap its result or its error as a plain dict.

    A VfioError (the kernel refused an ioctl) is marked ``vfio`` so the controller can tell
    a platform finding from a harness failure.
    """
    module_name, _, attr = func.rpartition(".")
    issued: List[tuple] = []
    uapi = importer("vfio_hil.core.uapi")
    uapi.record_ioctls(issued)
    try:
        module = importer(f"vfio_hil.dut.{module_name}")
        fn = getattr(module, attr)
        return {"result": fn(**kwargs), "ioctls": _ioctl_entries(issued)}
    except Exception as exc:
        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(limit=8),
            "vfio": type(exc).__name__ == "VfioError",
        }
        for key in ("errno", "ioctl", "target"):
            value = getattr(exc, key, None)
            if value is not None:
                error[key] = value if isinstance(value, (int, str)) else str(value)
        return {"error": error, "ioctls": _ioctl_entries(issued)}
    finally:
        uapi.record_ioctls(None)


def _ioctl_entries(issued: List[tuple]) -> List[dict]:
    return [
        {
            "ioctl": name,
            "fd": fd,
            "result": errno.errorcode.get(-ret, str(ret)) if ret < 0 else ret,
        }
        for name, fd, ret in issued
    ]


def _serve(channel: Any) -> None:
    import importlib

    config = channel.receive()
    sys.path.insert(0, config["sys_path"])
    try:
        importlib.import_module("vfio_hil.core")
    except Exception as exc:
        channel.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    channel.send({"python": sys.version.split()[0]})
    while True:
        request = channel.receive()
        if request is None:
            return
        channel.send(dispatch(importlib.import_module, request["func"], request["kwargs"]))


if __name__ == "__channelexec__":
    _serve(channel)  # type: ignore[name-defined]  # noqa: F821
