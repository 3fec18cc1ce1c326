"""Interrupts of a device driven through VFIO (VFIO_DEVICE_GET_IRQ_INFO / SET_IRQS). Runs on
the DUT.

Device-raised interrupts come from the device's DMA engine (edu: MSI or INTx; NVMe: MSI-X or
INTx, from a completed admin command); MSI-X
vectors are exercised by loopback (ACTION_TRIGGER with DATA_NONE/BOOL makes the kernel signal
a vector's eventfd as if it fired). Every function opens the device in an IOMMU context of
its own (``backend``: a type1v2 container by default, or iommufd through the device's cdev)
and leaves the device's interrupts disabled and its interrupt status acknowledged.
"""

from __future__ import annotations

import os
import struct
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..core import pci, uapi
from ..core.container import Container
from ..core.device import Device
from ..core.drivers import DmaEngine
from ..core.errors import VfioError
from ..core.group import Group
from ..core.irq import EventFd
from .common import DEFAULT_BACKEND, Transcript, answer, device_in, skipped
from .engines import engine_in_container
from .mapping import EINVAL, OK, Case, Expected, run_case

INTX = uapi.VFIO_PCI_INTX_IRQ_INDEX
MSI = uapi.VFIO_PCI_MSI_IRQ_INDEX
MSIX = uapi.VFIO_PCI_MSIX_IRQ_INDEX
ERR = uapi.VFIO_PCI_ERR_IRQ_INDEX
REQ = uapi.VFIO_PCI_REQ_IRQ_INDEX
INDEX_NAMES = {INTX: "INTx", MSI: "MSI", MSIX: "MSI-X", ERR: "ERR", REQ: "REQ"}

EVENTFD_TRIGGER = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
NONE_TRIGGER = uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
INTX_FLAGS = (
    uapi.VFIO_IRQ_INFO_EVENTFD | uapi.VFIO_IRQ_INFO_MASKABLE | uapi.VFIO_IRQ_INFO_AUTOMASKED
)
UNSAFE_INTERRUPTS = "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
#: How long an interrupt that must arrive may take, and how long to watch for one that must not
#: (a delivered interrupt reaches the eventfd within about 20 us to 1 ms, even under TCG).
ARRIVE_S = 5.0
ABSENT_S = 0.3

ENOTTY: Expected = ("ENOTTY",)
EBADF: Expected = ("EBADF",)

# -- IRQ info against config space ----------------------------------------------------------


def irq_mismatches(irqs: Dict[int, Optional[Tuple[int, int]]], config: Dict[str, Any]) -> List[str]:
    """Where the IRQ info disagrees with the capabilities config space shows.

    ``irqs`` maps each index to ``(flags, count)``, or None when GET_IRQ_INFO refused it;
    ``config`` holds ``pin``, ``msi`` (multiple message capable, 0 without the capability),
    ``msix`` (table size, 0 without it) and ``pcie`` (bool).
    """
    expected_counts = {
        INTX: 1 if config["pin"] else 0,
        MSI: config["msi"],
        MSIX: config["msix"],
        ERR: 1 if config["pcie"] else 0,
        REQ: 1,
    }
    why = {
        INTX: f"interrupt pin {config['pin']}",
        MSI: f"MSI multiple message capable {config['msi']}" if config["msi"] else "no MSI",
        MSIX: f"MSI-X table size {config['msix']}" if config["msix"] else "no MSI-X",
        ERR: "a PCI Express capability" if config["pcie"] else "no PCI Express capability",
        REQ: "every vfio-pci device",
    }
    problems = []
    for index, want in expected_counts.items():
        name = INDEX_NAMES[index]
        info = irqs.get(index)
        flags, count = info if info is not None else (0, 0)
        if count != want:
            got = "refused" if info is None else f"count {count}"
            problems.append(f"{name}: {got}, expected {want} for {why[index]}")
        elif count and not flags & uapi.VFIO_IRQ_INFO_EVENTFD:
            problems.append(f"{name}: flags {flags:#x} lack EVENTFD")
        elif index == INTX and count and flags & INTX_FLAGS != INTX_FLAGS:
            problems.append(f"INTx: flags {flags:#x} lack MASKABLE|AUTOMASKED")
    return problems


def _config_summary(config: pci.ConfigSpace) -> Dict[str, Any]:
    msi = config.find(pci.PCI_CAP_ID_MSI)
    msix = config.find(pci.PCI_CAP_ID_MSIX)
    return {
        "pin": config.interrupt_pin,
        "msi": msi.fields["multiple_message_capable"] if msi else 0,
        "msix": msix.fields["table_size"] if msix else 0,
        "pcie": config.find(pci.PCI_CAP_ID_EXP) is not None,
    }


def irq_info_vs_config(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """GET_IRQ_INFO of every index next to what the config space (as VFIO shows it) says."""
    with device_in(bdf, backend) as (_iommu, device):
        config = _config_summary(device.pci_config())
        num_irqs = device.info().num_irqs
        irqs: Dict[int, Optional[Tuple[int, int]]] = {}
        refusals = {}
        for index in range(num_irqs):
            try:
                info = device.irq_info(index)
                irqs[index] = (info.flags, info.count)
            except VfioError as exc:
                irqs[index] = None
                refusals[INDEX_NAMES.get(index, str(index))] = os.strerror(exc.errno)
    return {
        "config": config,
        "num_irqs": num_irqs,
        "irqs": {
            INDEX_NAMES.get(i, str(i)): None if v is None else {"flags": v[0], "count": v[1]}
            for i, v in irqs.items()
        },
        "refused": refusals,
        "mismatches": irq_mismatches(irqs, config),
    }


# -- device-raised interrupts (any DMA engine) ------------------------------------------------


class _Raiser:
    """A device's engine wired to an eventfd on vector 0 of the IRQ index ``pick`` chooses
    for it, if the engine raises that index (else :attr:`why` says why not): its interrupt
    acknowledged before the eventfd is wired (a leftover would fire at once) and again on
    the way out (which deasserts INTx before it is torn down)."""

    def __init__(
        self,
        stack: ExitStack,
        bdf: str,
        pick: Callable[[DmaEngine], int],
        scratch: bool,
        backend: str,
    ) -> None:
        _iommu, self.device, self.engine = stack.enter_context(
            engine_in_container(bdf, scratch, backend)
        )
        self.index = pick(self.engine)
        self.statuses: List[str] = []
        self.why = ""
        if (
            self.index not in self.engine.caps.irq_indexes
            or not self.device.irq_info(self.index).count
        ):
            problem = self.engine.irq_problem(self.index)
            self.why = f"its {self.engine.name} engine raises no {INDEX_NAMES[self.index]}" + (
                f" ({problem})" if problem else ""
            )
            return
        self.engine.ack_irq()
        self.irqs = stack.enter_context(self.device.irq_eventfds(self.index, 1))
        stack.callback(self.engine.ack_irq)

    def raise_irq(self) -> None:
        """Have the device raise its interrupt (it stays asserted until :meth:`ack`)."""
        self.statuses.append(self.engine.raise_irq(self.index).status)

    def ack(self) -> None:
        """Acknowledge it on the device."""
        self.engine.ack_irq()

    def wait(self, seconds: float) -> int:
        """Signals counted within ``seconds``."""
        return self.irqs.wait(0, seconds)

    def result(self, **fields: Any) -> Dict[str, Any]:
        """The probe's counts, with the engine, the IRQ index and the device's statuses."""
        return {
            **fields,
            "engine": self.engine.name,
            "index": INDEX_NAMES[self.index],
            "raise_status": self.statuses,
        }


def _intx(_engine: DmaEngine) -> int:
    return INTX


def _message_signalled(engine: DmaEngine) -> int:
    """MSI where the engine raises it, else MSI-X."""
    return MSI if MSI in engine.caps.irq_indexes else MSIX


def msi_per_raise(
    bdf: str, raises: int = 1, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """Raise the device's message-signalled interrupt (MSI, else MSI-X vector 0) ``raises``
    times, acknowledging each; count what each raise delivered."""
    with ExitStack() as stack:
        raiser = _Raiser(stack, bdf, _message_signalled, scratch, backend)
        if raiser.why:
            return skipped("capability", raiser.why)
        counts = []
        for _ in range(raises):
            raiser.raise_irq()
            counts.append(raiser.wait(ARRIVE_S))
            raiser.ack()
        return raiser.result(raises=raises, per_raise=counts, late=raiser.wait(ABSENT_S))


def intx_mask(bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """INTx with ACTION_MASK: an interrupt raised while masked stays pending, ACTION_UNMASK
    delivers it once."""
    with ExitStack() as stack:
        raiser = _Raiser(stack, bdf, _intx, scratch, backend)
        if raiser.why:
            return skipped("capability", raiser.why)
        device = raiser.device
        device.mask_irqs(INTX)
        raiser.raise_irq()
        while_masked = raiser.wait(ABSENT_S)
        device.unmask_irqs(INTX)
        on_unmask = raiser.wait(ARRIVE_S)
        raiser.ack()
        device.unmask_irqs(INTX)  # delivery auto-masked it again
        after = raiser.wait(ABSENT_S)
        return raiser.result(while_masked=while_masked, on_unmask=on_unmask, after=after)


def intx_automask(
    bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """INTx is masked by the kernel when it fires: a second interrupt is held back until
    ACTION_UNMASK, and an unmask with nothing pending delivers nothing."""
    with ExitStack() as stack:
        raiser = _Raiser(stack, bdf, _intx, scratch, backend)
        if raiser.why:
            return skipped("capability", raiser.why)
        device = raiser.device
        raiser.raise_irq()
        first = raiser.wait(ARRIVE_S)
        raiser.ack()
        raiser.raise_irq()
        while_automasked = raiser.wait(ABSENT_S)
        device.unmask_irqs(INTX)
        on_unmask = raiser.wait(ARRIVE_S)
        raiser.ack()
        device.unmask_irqs(INTX)
        idle_unmask = raiser.wait(ABSENT_S)
        return raiser.result(
            flags=device.irq_info(INTX).flags,
            first=first,
            while_automasked=while_automasked,
            on_unmask=on_unmask,
            idle_unmask=idle_unmask,
        )


def msi_mask(bdf: str, scratch: bool = False, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Masking of the device's message-signalled interrupt (MSI, else MSI-X) through
    ACTION_MASK/UNMASK, where GET_IRQ_INFO says it is MASKABLE."""
    with ExitStack() as stack:
        raiser = _Raiser(stack, bdf, _message_signalled, scratch, backend)
        if raiser.why:
            return skipped("capability", raiser.why)
        device, index = raiser.device, raiser.index
        info = device.irq_info(index)
        if not info.maskable:
            # Not offered: show the request is refused rather than silently ignored.
            refused = device.raw_set_irqs(
                index, uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_MASK, 0, 1
            )
            return raiser.result(maskable=False, flags=info.flags, mask_request=answer(refused))
        device.mask_irqs(index)
        raiser.raise_irq()
        while_masked = raiser.wait(ABSENT_S)
        device.unmask_irqs(index)
        on_unmask = raiser.wait(ARRIVE_S)
        return raiser.result(
            maskable=True, flags=info.flags, while_masked=while_masked, on_unmask=on_unmask
        )


# -- MSI-X by loopback ----------------------------------------------------------------------


def _counts(eventfds: List[EventFd], wait_for: Optional[int] = None) -> List[int]:
    """Every eventfd's count; the one at ``wait_for`` gets time to arrive. Loopback signals
    from inside the ioctl, so the others are already final."""
    return [e.read_count(ARRIVE_S if i == wait_for else 0) for i, e in enumerate(eventfds)]


def msix_loopback(bdf: str, max_vectors: int = 8, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """An eventfd per MSI-X vector; ACTION_TRIGGER (DATA_NONE) on each vector in turn must
    signal exactly that vector's eventfd once, and DATA_BOOL exactly the vectors set true."""
    with ExitStack() as stack:
        _iommu, device = stack.enter_context(device_in(bdf, backend))
        available = device.irq_info(MSIX).count
        n = min(available, max_vectors)
        if not n:
            return {"vectors": 0}
        irqs = stack.enter_context(device.irq_eventfds(MSIX, n))
        per_vector = []
        for vector in range(n):
            device.trigger_irqs(MSIX, vector, 1)
            per_vector.append(_counts(irqs.eventfds, vector))
        pattern = [v % 2 == 0 for v in range(n)]
        device.trigger_irqs(MSIX, 0, n, pattern)
        by_bool = _counts(irqs.eventfds)
    return {
        "available": available,
        "vectors": n,
        "per_vector": per_vector,
        "bool_pattern": [int(p) for p in pattern],
        "by_bool": by_bool,
    }


def vector_deassign(
    bdf: str, vectors: int = 4, victim: int = 1, backend: str = DEFAULT_BACKEND
) -> Dict[str, Any]:
    """MSI-X vector ``victim`` de-assigned (fd -1) while the others stay: its old eventfd must
    receive nothing when all vectors are triggered; a new eventfd assigned to it must."""
    with ExitStack() as stack:
        _iommu, device = stack.enter_context(device_in(bdf, backend))
        n = min(device.irq_info(MSIX).count, vectors)
        if n <= victim:
            return {"vectors": n}
        irqs = stack.enter_context(device.irq_eventfds(MSIX, n))
        device.set_irqs_eventfd(MSIX, [-1], start=victim)
        device.trigger_irqs(MSIX, 0, n)
        after_deassign = _counts(irqs.eventfds)
        fresh = stack.enter_context(EventFd())
        device.set_irqs_eventfd(MSIX, [fresh.fd], start=victim)
        device.trigger_irqs(MSIX, 0, n)
        after_reassign = _counts(irqs.eventfds)
        fresh_count = fresh.read_count(ARRIVE_S)
    return {
        "vectors": n,
        "victim": victim,
        "after_deassign": after_deassign,
        "after_reassign": after_reassign,
        "new_eventfd": fresh_count,
    }


# -- SET_IRQS validation ---------------------------------------------------------------------


class _IrqBench:
    """A device, a spare eventfd and fds that are no eventfd, for the SET_IRQS table."""

    def __init__(self, device: Device, eventfd: EventFd, not_eventfd: int, closed: int) -> None:
        self.device = device
        self.num_irqs = device.info().num_irqs
        self.eventfd = eventfd.fd
        self.not_eventfd = not_eventfd
        self.closed = closed
        self.transcript = Transcript()

    def set(self, index: int, flags: int, start: int = 0, count: int = 1, data: bytes = b"") -> int:
        """SET_IRQS through the raw tier."""
        ret = self.device.raw_set_irqs(index, flags, start, count, data)
        args = {"index": index, "flags": flags, "start": start, "count": count, "data": data.hex()}
        return self.transcript.record("VFIO_DEVICE_SET_IRQS", args, ret)

    def req(self, fds: Tuple[int, ...], start: int = 0, count: Optional[int] = None) -> int:
        """Eventfds ``fds`` for the REQ index (every vfio-pci device has its one vector)."""
        data = struct.pack(f"={len(fds)}i", *fds)
        return self.set(REQ, EVENTFD_TRIGGER, start, len(fds) if count is None else count, data)


SET_IRQS_CASES: Tuple[Case, ...] = (
    Case("unknown flag bit", EINVAL, lambda b: b.set(REQ, EVENTFD_TRIGGER | 1 << 8)),
    Case(
        "two data types (NONE|BOOL)",
        EINVAL,
        lambda b: b.set(
            REQ,
            uapi.VFIO_IRQ_SET_DATA_NONE
            | uapi.VFIO_IRQ_SET_DATA_BOOL
            | uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
            data=b"\x01",
        ),
    ),
    # vfio-pci validates the data type, then dispatches on the action: an action no handler
    # takes (none, or two at once) is ENOTTY rather than EINVAL.
    Case(
        "two actions (MASK|TRIGGER)",
        ENOTTY,
        lambda b: b.set(REQ, NONE_TRIGGER | uapi.VFIO_IRQ_SET_ACTION_MASK),
    ),
    Case("no action", ENOTTY, lambda b: b.set(REQ, uapi.VFIO_IRQ_SET_DATA_NONE)),
    Case(
        "index beyond the device's IRQ indices",
        EINVAL,
        lambda b: b.set(b.num_irqs, EVENTFD_TRIGGER, data=struct.pack("=i", b.eventfd)),
    ),
    Case("start beyond the index's vectors", EINVAL, lambda b: b.req((b.eventfd,), start=1)),
    Case("start + count beyond the vectors", EINVAL, lambda b: b.req((b.eventfd, b.eventfd))),
    Case("argsz shorter than the eventfd data", EINVAL, lambda b: b.req((), count=1)),
    Case("an fd that is not open", EBADF, lambda b: b.req((b.closed,))),
    Case("an fd that is not an eventfd", EINVAL, lambda b: b.req((b.not_eventfd,))),
    Case(
        "INTx loopback while INTx is not enabled",
        EINVAL,
        lambda b: b.set(INTX, NONE_TRIGGER),
    ),
    Case("a valid REQ eventfd (control)", OK, lambda b: b.req((b.eventfd,))),
    Case("removing it with fd -1 (control)", OK, lambda b: b.req((-1,))),
)


def set_irqs_errnos(bdf: str, backend: str = DEFAULT_BACKEND) -> Dict[str, Any]:
    """Run :data:`SET_IRQS_CASES` on ``bdf`` opened under IOMMU ``backend``."""
    with ExitStack() as stack:
        iommu, device = stack.enter_context(device_in(bdf, backend))
        eventfd = stack.enter_context(EventFd())
        # An fd number that is certainly not open: opened and closed right here.
        closed = os.open("/dev/null", os.O_RDONLY)
        os.close(closed)
        # The device's own fd is open and no eventfd, under either backend.
        bench = _IrqBench(device, eventfd, device.fd, closed)
        results = [run_case(case, bench, backend=iommu.name) for case in SET_IRQS_CASES]
    return {"kernel": os.uname().release, "cases": results, "ioctls": bench.transcript.entries}


# -- interrupt remapping --------------------------------------------------------------------


def remapping_attach(bdf: str) -> Dict[str, Any]:
    """Try to attach ``bdf``'s group to a type1v2 container; report VFIO_SET_IOMMU's answer
    and the allow_unsafe_interrupts parameter it depends on."""
    try:
        with open(UNSAFE_INTERRUPTS) as fh:
            unsafe: Optional[str] = fh.read().strip()
    except FileNotFoundError:
        unsafe = None
    with Container() as container, Group.of_device(bdf) as group:
        group.set_container(container)
        ret = container.raw_set_iommu(uapi.VFIO_TYPE1v2_IOMMU)
    return {"set_iommu": answer(ret), "allow_unsafe_interrupts": unsafe}
