"""Evidence the DUT gives about each check: its kernel log delta and the sysfs state of a
device. Runs on the DUT (Python 3.9+, stdlib only)."""

from __future__ import annotations

import errno
import os
import re
from typing import Any, Dict, List, Optional, Tuple

KMSG = "/dev/kmsg"
# Lines that mean the kernel itself went wrong while a check ran.
KERNEL_TROUBLE = re.compile(
    r"(WARNING:|BUG:|Oops|general protection fault|Call Trace:|"
    r"kernel BUG|UBSAN:|KASAN:|INFO: task .* blocked)"
)


def _kmsg_records() -> List[Tuple[int, str]]:
    """Every record in the kernel log buffer as (sequence number, message)."""
    records = []
    fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                raw = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                if exc.errno == errno.EPIPE:  # overwritten while we read: go on
                    continue
                raise
            head, _, message = raw.decode("utf-8", "replace").partition(";")
            fields = head.split(",")
            records.append((int(fields[1]), message.splitlines()[0] if message else ""))
    finally:
        os.close(fd)
    return records


def kmsg_cursor() -> int:
    """The sequence number of the newest kernel log record (-1 when empty)."""
    records = _kmsg_records()
    return records[-1][0] if records else -1


def kmsg_since(cursor: int) -> Dict[str, Any]:
    """Kernel log records after ``cursor``, and those among them that show kernel trouble."""
    lines = [msg for seq, msg in _kmsg_records() if seq > cursor]
    return {"lines": lines, "trouble": [m for m in lines if KERNEL_TROUBLE.search(m)]}


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def device_state(bdf: str) -> Dict[str, Any]:
    """What sysfs says about a device and its IOMMU group."""
    base = f"/sys/bus/pci/devices/{bdf}"
    driver = os.path.realpath(f"{base}/driver") if os.path.exists(f"{base}/driver") else None
    group_link = f"{base}/iommu_group"
    group = os.path.basename(os.path.realpath(group_link)) if os.path.exists(group_link) else None
    members = {}
    if group is not None:
        for member in sorted(os.listdir(f"/sys/kernel/iommu_groups/{group}/devices")):
            mdrv = f"/sys/bus/pci/devices/{member}/driver"
            members[member] = (
                os.path.basename(os.path.realpath(mdrv)) if os.path.exists(mdrv) else None
            )
    return {
        "bdf": bdf,
        "driver": os.path.basename(driver) if driver else None,
        "driver_override": _read(f"{base}/driver_override"),
        "iommu_group": int(group) if group is not None else None,
        "group_members": members,
        "group_type": _read(f"/sys/kernel/iommu_groups/{group}/type") if group else None,
        "enable": _read(f"{base}/enable"),
        "power_state": _read(f"{base}/power_state"),
    }
