"""VFIO used by an unprivileged user: the owner of a group node may drive the group's
devices, within its RLIMIT_MEMLOCK, and nothing else.

The DUT-side entry points run as root: they create a temporary system user, give it one
group node (chown), run this module as that user in a child process (``python3 -m
vfio_hil.dut.unprivileged REQUEST``, which answers one JSON line on stdout), and restore the
node and remove the user in ``finally`` blocks.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import stat
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Dict, Iterator, Tuple

from ..core import sysfs
from ..core.container import CONTAINER_PATH
from ..core.dma import DmaBuffer
from ..core.errors import VfioError
from ..core.group import group_node
from . import interrupts, probes
from .common import Transcript, container_for, errno_name

USER = "vfiohil-unpriv"
#: Marks the user as ours, so one left behind by a crashed run is recognised and removed.
USER_COMMENT = "vfio-hil temporary user"
CHILD_TIMEOUT_S = 180.0
MEMLOCK_IOVA = 0x1000000
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the parent side (root) -----------------------------------------------------------------


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@contextmanager
def temporary_user() -> Iterator[Tuple[int, int]]:
    """A system user without home or login shell for the block: yields (uid, gid)."""
    try:
        existing = pwd.getpwnam(USER)
    except KeyError:
        existing = None
    if existing is not None and existing.pw_gecos != USER_COMMENT:
        raise RuntimeError(f"user {USER} exists on this host and is not vfio-hil's")
    if existing is None:
        subprocess.run(
            [_tool("useradd"), "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
             "--comment", USER_COMMENT, USER],
            check=True, capture_output=True,
        )  # fmt: skip
    try:
        entry = pwd.getpwnam(USER)
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run([_tool("userdel"), USER], check=True, capture_output=True)


@contextmanager
def given_node(path: str, uid: int, gid: int) -> Iterator[None]:
    """Make ``uid:gid`` the owner of ``path`` for the block; restore owner and mode after."""
    before = os.stat(path)
    os.chown(path, uid, gid)
    try:
        yield
    finally:
        os.chown(path, before.st_uid, before.st_gid)
        os.chmod(path, stat.S_IMODE(before.st_mode))


def _package_root() -> str:
    """The sys.path entry (directory or zip) this package is imported from."""
    here = os.path.abspath(__file__)
    return os.path.dirname(os.path.dirname(os.path.dirname(here)))


def run_as(uid: int, gid: int, op: str, **kwargs: Any) -> Dict[str, Any]:
    """Run child operation ``op`` as ``uid:gid`` with no supplementary groups."""
    proc = subprocess.run(
        [sys.executable, "-m", __name__, json.dumps({"op": op, "kwargs": kwargs})],
        user=uid,
        group=gid,
        extra_groups=[],
        cwd="/",
        env={"PYTHONPATH": _package_root(), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = proc.stderr[-800:]
        raise RuntimeError(f"child {op} as uid {uid} exited {proc.returncode}: {tail}")
    answer: Dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return answer


def _group_node(bdf: str) -> str:
    return group_node(sysfs.iommu_group(sysfs.normalize_bdf(bdf)))[0]


def _as_owner_of(device: str, op: str, **kwargs: Any) -> Dict[str, Any]:
    node = _group_node(device)
    with temporary_user() as (uid, gid), given_node(node, uid, gid):
        answer = run_as(uid, gid, op, **kwargs)
    return {"user": USER, "uid": uid, "node": node, **answer}


def basic_flow(bdf: str) -> Dict[str, Any]:
    """As the owner of ``bdf``'s group node: container, group, device, BAR0 access, DMA
    through a mapping and an MSI (``bdf`` is an edu device)."""
    return _as_owner_of(bdf, "basic_flow", bdf=sysfs.normalize_bdf(bdf))


def memlock_bound(bdf: str, limit: int = 1 << 20) -> Dict[str, Any]:
    """As the owner of ``bdf``'s group node with RLIMIT_MEMLOCK ``limit``: map half the
    limit, then more than the rest, then the same again once the first half is unmapped."""
    return _as_owner_of(bdf, "memlock_bound", bdf=sysfs.normalize_bdf(bdf), limit=limit)


def foreign_node_refused(bdf: str, foreign_group: int) -> Dict[str, Any]:
    """As the owner of ``bdf``'s group node, open it, the container node, and the node of
    ``foreign_group``, which belongs to someone else."""
    paths = {
        "own": _group_node(bdf),
        "container": CONTAINER_PATH,
        "foreign": group_node(foreign_group)[0],
    }
    return _as_owner_of(bdf, "open_nodes", paths=paths)


# -- the child side (the unprivileged user) -----------------------------------------------


def _identity() -> Dict[str, Any]:
    with open("/proc/self/status") as fh:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "cap_eff": status.get("CapEff", "").strip(),
        "memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK)[0],
    }


def _child_basic_flow(bdf: str) -> Dict[str, Any]:
    return {
        "mmio": probes.engine_mmio(bdf),
        "dma": probes.engine_dma_roundtrip(bdf),
        "msi": interrupts.msi_per_raise(bdf),
    }


def _locked_kib() -> int:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmLck:"))
    return int(line.split()[1])


def _child_memlock_bound(bdf: str, limit: int) -> Dict[str, Any]:
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
    half = limit // 2
    log = Transcript()
    iova_a, iova_b = MEMLOCK_IOVA, MEMLOCK_IOVA + 2 * limit
    with ExitStack() as stack:
        container, _group = stack.enter_context(container_for(bdf))
        a = stack.enter_context(DmaBuffer(half))
        b = stack.enter_context(DmaBuffer(half + PAGE))

        def map_(buf: DmaBuffer, iova: int, what: str) -> str:
            ret = container.raw_map_dma(buf.vaddr, iova, buf.length)
            return log.add("VFIO_IOMMU_MAP_DMA", ret, iova=iova, size=buf.length, what=what)

        first = map_(a, iova_a, "half the limit")
        locked = _locked_kib()
        over = map_(b, iova_b, "the other half plus a page")
        if over == "0":
            container.unmap_dma(iova_b, b.length)
        if first == "0":
            container.unmap_dma(iova_a, a.length)
        after_unmap = map_(b, iova_b, "the same, after unmapping the first half")
        if after_unmap == "0":
            container.unmap_dma(iova_b, b.length)
    return {
        "limit": limit,
        "first": first,
        "locked_kib_after_first": locked,
        "over_limit": over,
        "after_unmap": after_unmap,
        "ioctls": log.entries,
    }


def _child_open_nodes(paths: Dict[str, str]) -> Dict[str, Any]:
    log = Transcript()
    opens = {}
    for label, path in paths.items():
        fd = log.open(path)
        if fd >= 0:
            os.close(fd)
        opens[label] = {"path": path, "result": errno_name(min(fd, 0))}
    return {"opens": opens, "ioctls": log.entries}


CHILD_OPS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "basic_flow": _child_basic_flow,
    "memlock_bound": _child_memlock_bound,
    "open_nodes": _child_open_nodes,
}


def _child_main(request: str) -> None:
    req = json.loads(request)
    answer: Dict[str, Any] = {}
    try:
        answer["result"] = CHILD_OPS[req["op"]](**req["kwargs"])
    except VfioError as exc:
        answer["error"] = {
            "errno": exc.errno,
            "ioctl": exc.ioctl,
            "target": exc.target,
            "message": str(exc),
        }
    answer["identity"] = _identity()
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1])
