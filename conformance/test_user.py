"""USR: VFIO used without privileges — the owner of a group node may drive the group's
devices, within its locked-memory limit, and may open no other group.

Each check creates a temporary system user on the DUT, gives it one group node (chown), runs
the VFIO work as that user in a child process, and restores the node and removes the user.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from vfio_hil.lab.inventory import ENGINE_CAPABILITIES
from vfio_hil.lab.session import DeviceLease, HostSession, Lab, Unusable
from vfio_hil_pytest import check, skip

VFIO_RST = "Documentation/driver-api/vfio.rst"
VFIO_H = "include/uapi/linux/vfio.h"
MEMLOCK_LIMIT = 1 << 20
#: What the unprivileged flow exercises: a DMA engine's registers, its DMA and its interrupt.
ENGINE_FLOW = frozenset({"device_registers", "dma_to_host", "device_irq"})


def _failure(answer: dict[str, Any]) -> str | None:
    """What the unprivileged child reported failing, None when it succeeded."""
    error = answer.get("error")
    return error["message"] if error else None


def _identity(answer: dict[str, Any]) -> str:
    who = answer["identity"]
    return f"uid {who['uid']}, capabilities {who['cap_eff']}"


def _child_result(evidence: Any, r: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Keep the unprivileged run as evidence and return what the child found; FAIL, naming
    the user (after ``where``), when the child itself failed."""
    evidence.add("unprivileged run", r)
    failure = _failure(r)
    assert failure is None, f"{where}as {r['user']} ({_identity(r)}): {failure}"
    return r["result"]


@contextlib.contextmanager
def _usable_device(
    dut_host: HostSession, lab: Lab, needs: frozenset[str] = frozenset()
) -> Iterator[DeviceLease]:
    """Lease the first device under test that has ``needs`` and that VFIO can drive on the
    host; SKIP if there is none, for the first device's reason."""
    reasons = []
    for device in dut_host.devices:
        if not device.may_have(needs):
            continue
        unusable = dut_host.vfio_unusable(device.bdf)
        if unusable is None and needs & ENGINE_CAPABILITIES:
            engine = dut_host.engine(device.bdf)
            offered = set(engine["capabilities"])
            if not needs & ENGINE_CAPABILITIES <= offered:
                missing = ", ".join(sorted(needs - offered))
                # No engine at all: the library has no driver for the device (as dut_device).
                kind = "capability" if engine["engine"] else "lab"
                unusable = Unusable(kind, f"{device.bdf}: its DMA engine offers no {missing}")
        if unusable is None:
            with lab.lease(device) as lease:
                yield lease
            return
        reasons.append(unusable)
    if reasons:
        skip(reasons[0].kind, reasons[0].reason)
    # No device with the capabilities, or no device listed on the host at all.
    wanted = f" with {', '.join(sorted(needs))}" if needs else ""
    skip("capability" if needs else "lab", f"no device under test{wanted} on {dut_host.name}")


@check(
    "USR-001",
    "A non-root owner of the group node runs container, device, BAR access, DMA and MSI",
    level="MUST",
    spec=f"{VFIO_RST}: VFIO Usage Example (permissions on /dev/vfio/$GROUP)",
)
def test_unprivileged_flow(dut_host: HostSession, vfio_lab: Lab, evidence: Any) -> None:
    """VFIO's security model is that ownership of /dev/vfio/$GROUP is all a user needs to
    drive the group's devices: no root, no capabilities. A user given the node must be able
    to open the container, attach the group, get the device fd, access BAR0, map memory for
    DMA, run a DMA round trip and receive an MSI, exactly as root does. The check drives the
    first device on the host whose DMA engine VFIO can drive."""
    with _usable_device(dut_host, vfio_lab, ENGINE_FLOW) as lease:
        r = lease.call("unprivileged.basic_flow", bdf=lease.bdf)
    flow = _child_result(evidence, r, f"{lease.bdf} ")
    assert not flow["mmio"]["identity_problem"], (
        f"{flow['mmio']['identity_problem']} as {r['user']}"
    )
    assert flow["dma"]["mismatched_bytes"] == 0 and flow["dma"]["obtained"] is not False, (
        f"the DMA round trip failed as {r['user']}: {flow['dma']}"
    )
    msi = flow["msi"]
    assert msi["per_raise"] == [1] and msi["late"] == 0, (
        f"the {msi['index']} eventfd counted {msi['per_raise']} (+{msi['late']} late) "
        f"interrupts for one raise as {r['user']}"
    )


@check(
    "USR-002",
    "An unprivileged user's DMA mappings are bounded by RLIMIT_MEMLOCK (ENOMEM beyond it)",
    level="MUST",
    spec=f"{VFIO_RST}: VFIO Usage Example (locked memory limits); {VFIO_H} VFIO_IOMMU_MAP_DMA",
)
def test_memlock_bound(dut_host: HostSession, vfio_lab: Lab, evidence: Any) -> None:
    """Mapped memory is pinned for as long as the mapping lasts, so type1 charges it to the
    user's locked-memory limit; otherwise any group owner could pin all of the host's RAM.
    With RLIMIT_MEMLOCK at 1 MiB, mapping half of it must work, mapping the other half and
    one page more must fail with ENOMEM, and the same mapping must work once the first half
    is unmapped (the charge is given back)."""
    with _usable_device(dut_host, vfio_lab) as lease:
        r = lease.call("unprivileged.memlock_bound", bdf=lease.bdf, limit=MEMLOCK_LIMIT)
    m = _child_result(evidence, r)
    assert m["first"] == "0", f"mapping half of RLIMIT_MEMLOCK as {r['user']} got {m['first']}"
    assert m["over_limit"] == "-ENOMEM", (
        f"mapping past RLIMIT_MEMLOCK ({MEMLOCK_LIMIT} bytes) as {r['user']} got "
        f"{m['over_limit']}, expected -ENOMEM"
    )
    assert m["after_unmap"] == "0", (
        "the locked memory of an unmapped range was not given back: mapping again got "
        f"{m['after_unmap']}"
    )


@check(
    "USR-003",
    "An unprivileged user cannot open a group node it was not given (EACCES)",
    level="MUST",
    spec=f"{VFIO_RST}: Groups, Devices, and IOMMUs (group file permissions)",
)
def test_foreign_group_refused(dut_host: HostSession, vfio_lab: Lab, evidence: Any) -> None:
    """Access control over devices is file permissions on the group nodes: owning one group
    must give nothing over any other. The user given one node must open it and the container
    node, and must get EACCES for another group's node, owned by root."""
    facts = dut_host.platform["devices"]
    with _usable_device(dut_host, vfio_lab) as lease:
        own = facts[lease.bdf]["iommu_group"]
        foreign = sorted(
            {
                facts[d.bdf]["iommu_group"]
                for d in dut_host.devices
                if dut_host.vfio_unusable(d.bdf) is None and facts[d.bdf]["iommu_group"] != own
            }
        )
        if not foreign:
            skip("lab", f"no second VFIO group on {dut_host.name} to try")
        r = lease.call("unprivileged.foreign_node_refused", bdf=lease.bdf, foreign_group=foreign[0])
    opens = _child_result(evidence, r)["opens"]
    for label in ("own", "container"):
        assert opens[label]["result"] == "0", (
            f"{r['user']} could not open {opens[label]['path']}: {opens[label]['result']}"
        )
    foreign = opens["foreign"]
    assert foreign["result"] == "-EACCES", (
        f"{r['user']} ({_identity(r)}) opening {foreign['path']}, which it was not given, got "
        f"{foreign['result']}, expected -EACCES"
    )
