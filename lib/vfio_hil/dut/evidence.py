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


def _read_records(fd: int) -> List[Tuple[int, str]]:
    """The kernel log records ``fd`` (an open /dev/kmsg) has not read yet, as (sequence
    number, message)."""
    records = []
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
    return records


def _kmsg_records() -> List[Tuple[int, str]]:
    """Every record in the kernel log buffer as (sequence number, message)."""
    fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return _read_records(fd)
    finally:
        os.close(fd)


class _KmsgTail:
    """The newest kernel log sequence number, kept by reading only the records logged since
    the last look (the agent lives across calls, and so does this): the cursor taken before
    every check does not re-read the whole log buffer."""

    fd: Optional[int] = None
    newest = -1

    @classmethod
    def newest_seq(cls) -> int:
        """The newest record's sequence number (-1 while the log is empty)."""
        if cls.fd is None:
            cls.fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
        records = _read_records(cls.fd)
        if records:
            cls.newest = records[-1][0]
        return cls.newest


def kmsg_cursor() -> int:
    """The sequence number of the newest kernel log record (-1 when empty)."""
    return _KmsgTail.newest_seq()


def kmsg_since(cursor: int) -> Dict[str, Any]:
    """Kernel log records after ``cursor``, and those among them that show kernel trouble."""
    lines = [msg for seq, msg in _kmsg_records() if seq > cursor]
    return {"lines": lines, "trouble": [m for m in lines if KERNEL_TROUBLE.search(m)]}


def read_file(path: str) -> Optional[str]:
    """A sysfs or procfs file's content without surrounding white space; None when it cannot
    be read."""
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
        "driver_override": read_file(f"{base}/driver_override"),
        "iommu_group": int(group) if group is not None else None,
        "group_members": members,
        "group_type": read_file(f"/sys/kernel/iommu_groups/{group}/type") if group else None,
        "enable": read_file(f"{base}/enable"),
        "power_state": read_file(f"{base}/power_state"),
    }


def after_check(cursor: int, bdf: Optional[str] = None) -> Dict[str, Any]:
    """The evidence of a check that began at kernel log ``cursor``, in one call: the kernel
    log since (:func:`kmsg_since`) under ``kernel_log``, and under ``sysfs`` the state of
    device ``bdf`` (:func:`device_state`), None without a device."""
    return {
        "kernel_log": kmsg_since(cursor),
        "sysfs": None if bdf is None else device_state(bdf),
    }
