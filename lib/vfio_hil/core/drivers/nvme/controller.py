"""A userspace NVMe driver over VFIO: controller disable/enable, the admin queue, an I/O queue
pair, PRP entries and lists, polled and interrupt-driven completions, Identify.

It works on any vendor's controller (found by its class code, 01:08:02) and is safe on a
lab's real SSD: every command goes through :meth:`NvmeController.submit`, which refuses any
opcode that could change media or persistent state (:func:`.spec.media_safe`) unless the
device is marked scratch. A controller that does not complete a command in time is reset and
the command reported as timed out; the caller never hangs.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from ... import uapi
from ...device import PCI_STATUS, PCI_STATUS_INTERRUPT, Device
from ...handle import Closing
from ...irq import EventFd
from ...region import Bar
from .. import engine as eng
from . import spec
from .spec import Cap, Command, Completion, ControllerIdentity, NamespaceIdentity

ADMIN_QID = 0
IO_QID = 1
ADMIN_DEPTH = 32
IO_DEPTH = 64
#: The namespace the I/O commands address.
NSID = 1
_POLL_S = 0.0005


class MediaWriteRefused(PermissionError):
    """A command that could change media was asked of a device not marked scratch."""


class CommandTimeout(TimeoutError):
    """The controller did not complete a command in time; it has been reset."""


@contextmanager
def _bringing_up(close: Callable[[], None]) -> Iterator[None]:
    """Run ``close`` when bringing a controller up fails; a command that times out then means
    the controller did not come up (:class:`~..engine.EngineError`, as :func:`probe_engine`
    promises)."""
    try:
        yield
    except CommandTimeout as exc:
        close()
        raise eng.EngineError(f"NVMe controller did not come up: {exc}") from None
    except BaseException:
        close()
        raise


class QueuePair:
    """A submission queue and its completion queue in engine memory, with their doorbells.

    Each slot has a page for its PRP list, so a command may address up to 512 pages.
    """

    def __init__(self, qid: int, depth: int, memory: eng.EngineMemory, bar: Bar, cap: Cap):
        self.qid = qid
        self.depth = depth
        self.bar = bar
        self.sq, self.sq_iova = memory.alloc(depth * spec.SQE_SIZE)
        self.cq, self.cq_iova = memory.alloc(depth * spec.CQE_SIZE)
        self.lists, self.lists_iova = memory.alloc(depth * spec.PAGE)
        self.sq_doorbell = spec.REG_DOORBELLS + (2 * qid) * cap.doorbell_stride
        self.cq_doorbell = spec.REG_DOORBELLS + (2 * qid + 1) * cap.doorbell_stride
        self.restart()

    def restart(self) -> None:
        """Empty queues, as after a controller reset."""
        self.cq.zero()
        self.tail = 0
        self.head = 0
        self.phase = 1
        self.next_cid = 0

    def prps(self, cid: int, iova: int, size: int) -> Tuple[int, int]:
        """PRP1 and PRP2 for ``size`` bytes at ``iova`` (dword aligned): PRP2 is the second
        page, or the PRP list (in this command's list page) when more pages follow."""
        if iova % 4:
            raise ValueError(f"NVMe data pointer {iova:#x} is not dword aligned")
        first = spec.PAGE - iova % spec.PAGE
        if size <= first:
            return iova, 0
        pages = [
            iova - iova % spec.PAGE + spec.PAGE * (i + 1)
            for i in range(-(-(size - first) // spec.PAGE))
        ]
        if len(pages) == 1:
            return iova, pages[0]
        if len(pages) > spec.PAGE // 8:
            raise ValueError(f"NVMe transfer of {size} bytes needs more than one PRP list page")
        slot = cid % self.depth
        entries = b"".join(p.to_bytes(8, "little") for p in pages)
        self.lists.fill(entries, slot * spec.PAGE)
        return iova, self.lists_iova + slot * spec.PAGE

    def submit(self, command: Command) -> int:
        """Place ``command`` at the tail and ring the doorbell; return its command id."""
        cid = self.next_cid
        self.next_cid = (cid + 1) & 0xFFFF
        self.sq.fill(command.pack(cid), self.tail * spec.SQE_SIZE)
        self.tail = (self.tail + 1) % self.depth
        self.bar.write32(self.sq_doorbell, self.tail)
        return cid

    def poll(self) -> Optional[Completion]:
        """The next completion, if the controller posted one (the CQ head doorbell is left
        for :meth:`ring`)."""
        cqe = Completion.unpack(self.cq.read(self.head * spec.CQE_SIZE, spec.CQE_SIZE))
        if cqe.phase != self.phase:
            return None
        self.head += 1
        if self.head == self.depth:
            self.head = 0
            self.phase ^= 1
        return cqe

    def ring(self) -> None:
        """Tell the controller the completions up to the head are consumed (this deasserts a
        level-triggered interrupt)."""
        self.bar.write32(self.cq_doorbell, self.head)


class NvmeController(Closing):
    """An NVMe controller opened through VFIO, enabled with an admin queue.

    ``memory`` holds the queues and data pages; ``scratch`` allows commands that write media.
    The :class:`~vfio_hil.core.Device` stays the caller's; closing disables the controller
    and unmaps BAR0.
    """

    def __init__(
        self,
        device: Device,
        memory: eng.EngineMemory,
        *,
        scratch: bool = False,
        bar: Optional[Bar] = None,
        timeout_s: float = eng.DEFAULT_TIMEOUT_S,
    ) -> None:
        self.device = device
        self.memory = memory
        self.scratch = scratch
        self.timeout_s = timeout_s
        device.enable_bus_master()
        self.bar = bar if bar is not None else device.map_bar(0)
        with _bringing_up(self.bar.close):
            self.cap = Cap(self.bar.read64(spec.REG_CAP))
            if not self.cap.nvm_command_set or self.cap.mps_min > spec.PAGE:
                raise eng.EngineError(
                    f"{device.bdf}: NVMe CAP {self.cap.raw:#x} offers no NVM command set with "
                    "4 KiB pages"
                )
            self.admin = QueuePair(
                ADMIN_QID, min(ADMIN_DEPTH, self.cap.mqes), memory, self.bar, self.cap
            )
            self.io: Optional[QueuePair] = None
            self._io_ready = False
            self.data, self.data_iova = memory.alloc(spec.PAGE)
            self.enable()
            self.identify_data = self.identify(spec.IDENTIFY_CONTROLLER)
            self.identity = ControllerIdentity.parse(self.identify_data)
            self.namespace = self._namespace()

    # -- controller state --------------------------------------------------------------

    def _wait_ready(self, ready: bool) -> None:
        deadline = time.monotonic() + max(self.cap.timeout_s, 1.0)
        while True:
            csts = self.bar.read32(spec.REG_CSTS)
            # A fatal controller is reset by disabling it: only enabling gives up on CFS.
            if ready and csts & spec.CSTS_CFS:
                raise eng.EngineError(
                    f"{self.device.bdf}: NVMe controller fatal status (CSTS {csts:#x})"
                )
            if bool(csts & spec.CSTS_RDY) == ready:
                return
            if time.monotonic() > deadline:
                raise eng.EngineError(
                    f"{self.device.bdf}: NVMe CSTS.RDY still {int(not ready)} "
                    f"{max(self.cap.timeout_s, 1.0):.1f} s after CC.EN={int(ready)}"
                )
            time.sleep(0.001)

    def disable(self) -> None:
        """Clear CC.EN and wait for CSTS.RDY to drop (a controller level reset)."""
        if self.bar.read32(spec.REG_CC) & spec.CC_EN:
            self.bar.write32(spec.REG_CC, 0)
        self._wait_ready(False)

    def enable(self) -> None:
        """Reset the controller and enable it with an empty admin queue (I/O queues are
        created again on next use)."""
        self.disable()
        self.admin.restart()
        if self.io is not None:
            self.io.restart()
        self._io_ready = False
        depth = self.admin.depth - 1
        self.bar.write32(spec.REG_AQA, depth << 16 | depth)
        self.bar.write64(spec.REG_ASQ, self.admin.sq_iova)
        self.bar.write64(spec.REG_ACQ, self.admin.cq_iova)
        self.bar.write32(spec.REG_CC, spec.CC_IO_ENTRY_SIZES | spec.CC_EN)
        self._wait_ready(True)

    # -- commands ----------------------------------------------------------------------

    def check_safe(self, admin: bool, command: Command) -> None:
        """Raise :class:`MediaWriteRefused` for a media-changing command on a device that is
        not scratch (the one gate every command passes)."""
        if not self.scratch and not spec.media_safe(admin, command.opcode, command.cdw10):
            raise MediaWriteRefused(
                f"{self.device.bdf}: {spec.opcode_name(admin, command.opcode)} could change the "
                "media or persistent state; it is issued only to a device the inventory marks "
                "'scratch: true'"
            )

    def submit(self, queue: QueuePair, command: Command) -> int:
        """Submit ``command``; refuse a media-changing one unless the device is scratch."""
        self.check_safe(queue.qid == ADMIN_QID, command)
        return queue.submit(command)

    def wait(
        self,
        queue: QueuePair,
        cid: int,
        timeout_s: Optional[float] = None,
        eventfd: Optional[EventFd] = None,
        hold: bool = False,
    ) -> Completion:
        """Wait for the completion of ``cid``: polling, or sleeping on ``eventfd`` (an
        interrupt-driven completion) and then reading the queue. With ``hold`` the CQ head
        doorbell is not rung (the interrupt stays asserted until :meth:`QueuePair.ring`).
        On timeout the controller is reset and :class:`CommandTimeout` raised."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            cqe = queue.poll()
            if cqe is not None:
                if not hold:
                    queue.ring()
                if cqe.cid == cid:
                    return cqe
                continue  # a completion of an earlier, abandoned command
            left = deadline - time.monotonic()
            if left <= 0:
                self.enable()
                raise CommandTimeout(
                    f"{self.device.bdf}: NVMe command {cid} on queue {queue.qid} not completed "
                    f"within {limit:.1f} s; controller reset"
                )
            if eventfd is not None:
                eventfd.read_count(min(left, 0.1))
            else:
                time.sleep(_POLL_S)

    def admin_command(self, command: Command, timeout_s: Optional[float] = None) -> Completion:
        """Submit an admin command and wait for its completion."""
        return self.wait(self.admin, self.submit(self.admin, command), timeout_s)

    def prepared(self, queue: QueuePair, command: Command, iova: int, size: int) -> Command:
        """``command`` with its data pointer set to ``size`` bytes at ``iova``."""
        prp1, prp2 = queue.prps(queue.next_cid, iova, size)
        return dataclasses.replace(command, prp1=prp1, prp2=prp2)

    def _checked(self, cqe: Completion, what: str) -> Completion:
        if not cqe.ok:
            raise eng.EngineError(f"{self.device.bdf}: NVMe {what} failed: {cqe.status_text}")
        return cqe

    # -- admin commands ------------------------------------------------------------------

    def identify_command(self, cns: int, nsid: int = 0) -> Command:
        """Identify (``cns``: :data:`.spec.IDENTIFY_CONTROLLER`, ...) without data pointer."""
        return Command(spec.ADMIN_IDENTIFY, nsid=nsid, cdw10=cns)

    def identify(self, cns: int, nsid: int = 0) -> bytes:
        """The 4096-byte Identify data structure ``cns`` (read into the driver's page)."""
        self.data.zero()
        command = self.prepared(
            self.admin, self.identify_command(cns, nsid), self.data_iova, spec.PAGE
        )
        self._checked(self.admin_command(command), f"Identify CNS {cns}")
        return self.data.read(0, spec.PAGE)

    def _namespace(self) -> Optional[NamespaceIdentity]:
        if self.identity.namespaces < NSID:
            return None
        ns = NamespaceIdentity.parse(self.identify(spec.IDENTIFY_NAMESPACE, NSID))
        return ns if ns.size_blocks else None

    def log_page(self, log_id: int, size: int, iova: int) -> Completion:
        """Get Log Page ``log_id``: ``size`` bytes (a multiple of 4) to ``iova``."""
        dwords = size // 4 - 1
        command = Command(
            spec.ADMIN_GET_LOG_PAGE,
            nsid=0xFFFFFFFF,
            cdw10=(dwords & 0xFFFF) << 16 | log_id,
            cdw11=dwords >> 16,
        )
        return self.admin_command(self.prepared(self.admin, command, iova, size))

    def timestamp_command(self) -> Command:
        """Set Features Timestamp (8 bytes from the data pointer), never saved."""
        return Command(spec.ADMIN_SET_FEATURES, cdw10=spec.FEATURE_TIMESTAMP)

    def set_timestamp(self, milliseconds: int) -> Completion:
        """Set the controller's clock to ``milliseconds`` since the epoch."""
        self.data.fill((milliseconds & (1 << 48) - 1).to_bytes(8, "little"))
        command = self.prepared(self.admin, self.timestamp_command(), self.data_iova, 8)
        return self.admin_command(command)

    def get_timestamp(self) -> int:
        """The controller's clock, in milliseconds."""
        self.data.zero()
        command = Command(spec.ADMIN_GET_FEATURES, cdw10=spec.FEATURE_TIMESTAMP)
        self._checked(
            self.admin_command(self.prepared(self.admin, command, self.data_iova, 8)),
            "Get Features Timestamp",
        )
        return int.from_bytes(self.data.read(0, 6), "little")

    def no_data_command(self) -> Command:
        """A command that moves no data and changes nothing (Get Features Number of Queues):
        all it does is complete, which raises the admin queue's interrupt."""
        return Command(spec.ADMIN_GET_FEATURES, cdw10=spec.FEATURE_NUMBER_OF_QUEUES)

    # -- I/O -----------------------------------------------------------------------------

    def io_queue(self) -> QueuePair:
        """The I/O queue pair (created on first use; its CQ interrupts on vector 0)."""
        if self.io is None:
            self.io = QueuePair(
                IO_QID, min(IO_DEPTH, self.cap.mqes), self.memory, self.bar, self.cap
            )
        if not self._io_ready:
            pairs = 0  # 0-based: one SQ and one CQ
            self._checked(
                self.admin_command(
                    Command(
                        spec.ADMIN_SET_FEATURES, cdw10=spec.FEATURE_NUMBER_OF_QUEUES, cdw11=pairs
                    )
                ),
                "Set Features Number of Queues",
            )
            size = self.io.depth - 1
            self._checked(
                self.admin_command(
                    Command(
                        spec.ADMIN_CREATE_CQ,
                        prp1=self.io.cq_iova,
                        cdw10=size << 16 | IO_QID,
                        cdw11=0 << 16 | 1 << 1 | 1,  # vector 0, interrupts enabled, contiguous
                    )
                ),
                "Create I/O CQ",
            )
            self._checked(
                self.admin_command(
                    Command(
                        spec.ADMIN_CREATE_SQ,
                        prp1=self.io.sq_iova,
                        cdw10=size << 16 | IO_QID,
                        cdw11=IO_QID << 16 | 1,  # its CQ, contiguous
                    )
                ),
                "Create I/O SQ",
            )
            self._io_ready = True
        return self.io

    def block_command(self, opcode: int, lba: int, blocks: int) -> Command:
        """A Read, Compare or Write of ``blocks`` blocks at ``lba`` of the namespace."""
        if self.namespace is None:
            raise eng.EngineError(f"{self.device.bdf}: NVMe namespace {NSID} is not active")
        return Command(opcode, nsid=NSID, cdw10=lba & 0xFFFFFFFF, cdw11=lba >> 32, cdw12=blocks - 1)

    def io_command(
        self, opcode: int, lba: int, blocks: int, iova: int, eventfd: Optional[EventFd] = None
    ) -> Completion:
        """Issue a block command on the I/O queue with data at ``iova`` and wait (polled, or
        on ``eventfd`` wired to vector 0). A refused command creates no queue first."""
        command = self.block_command(opcode, lba, blocks)
        self.check_safe(False, command)
        queue = self.io_queue()
        assert self.namespace is not None  # block_command raised otherwise
        size = blocks * self.namespace.block_size
        command = self.prepared(queue, command, iova, size)
        return self.wait(queue, self.submit(queue, command), eventfd=eventfd)

    def read(
        self, lba: int, blocks: int, iova: int, eventfd: Optional[EventFd] = None
    ) -> Completion:
        """Read ``blocks`` blocks at ``lba`` into host memory at ``iova``."""
        return self.io_command(spec.NVM_READ, lba, blocks, iova, eventfd)

    def compare(self, lba: int, blocks: int, iova: int) -> Completion:
        """Compare ``blocks`` blocks at ``lba`` with host memory at ``iova`` (changes nothing)."""
        return self.io_command(spec.NVM_COMPARE, lba, blocks, iova)

    def write(self, lba: int, blocks: int, iova: int) -> Completion:
        """Write host memory at ``iova`` to ``blocks`` blocks at ``lba``: scratch devices only."""
        return self.io_command(spec.NVM_WRITE, lba, blocks, iova)

    def registers(self) -> Dict[str, int]:
        """The controller registers, for evidence."""
        return {
            "CAP": self.bar.read64(spec.REG_CAP),
            "VS": self.bar.read32(spec.REG_VS),
            "CC": self.bar.read32(spec.REG_CC),
            "CSTS": self.bar.read32(spec.REG_CSTS),
            "AQA": self.bar.read32(spec.REG_AQA),
            "ASQ": self.bar.read64(spec.REG_ASQ),
            "ACQ": self.bar.read64(spec.REG_ACQ),
        }

    def close(self) -> None:
        """Disable the controller and unmap BAR0."""
        try:
            self.disable()
        finally:
            self.bar.close()


def is_nvme(device: Device) -> bool:
    """True when ``device``'s class code is NVMe's (01:08:02), whatever its vendor."""
    return device.config_read(0x08, 4) >> 8 == spec.NVME_CLASS


@eng.ENGINES.register
class NvmeEngine(eng.DmaEngine):
    """Any NVMe controller as a :class:`~..engine.DmaEngine`, without touching its media.

    * Device-to-host: Identify Controller, 4096 bytes of known content, to any dword-aligned
      IOVA. It reads nothing from the media and its data never changes.
    * Host-to-device: Set Features Timestamp, 8 bytes the controller takes as its clock
      (where the controller supports the feature, ONCS bit 6). Chosen over Compare because
      its data comes back: Get Features Timestamp returns the value plus the milliseconds
      since, so what the device obtained can be read, not just inferred; and it changes no
      media. The driver sets the clock back to the host's time when it closes.
    * Interrupts: a no-data admin command completes on the admin queue, vector 0 of INTx or
      MSI-X; INTx, level-triggered, stays asserted until :meth:`ack_irq` rings the CQ head
      doorbell. INTx is offered only where the controller deasserts it once its completions
      are consumed (:meth:`irq_problem` says why not).
    * A DMA the IOMMU blocks leaves an IOMMU fault; a real controller ends the command with
      an error status (Data Transfer Error), QEMU 7.2's model completes it successfully
      (seen on the virtual rack): the status is evidence, the data and the fault decide.
    """

    name = "nvme"
    #: The Set Features Timestamp payload.
    TIMESTAMP_SIZE = 8

    def __init__(self, device: Device, memory: eng.EngineMemory, scratch: bool = False) -> None:
        super().__init__(device, memory, scratch)
        self.ctrl = NvmeController(device, memory, scratch=scratch)
        self._pending: Optional[Tuple[QueuePair, int, float, bool]] = None
        self._set_at = 0.0
        self._intx_problem = ""
        with _bringing_up(self.ctrl.close):
            self._caps = self._probe_caps()
            self._restore_clock()

    def _probe_caps(self) -> eng.EngineCaps:
        indexes: List[int] = []
        if self.device.irq_info(uapi.VFIO_PCI_INTX_IRQ_INDEX).count:
            # Bring-up consumed every completion, and no interrupt is enabled: a controller
            # whose INTx is sane has deasserted it. QEMU 7.2's NVMe model does not (its count
            # of CQs with pending entries outlives a controller reset: seen on the rack, where
            # the bit stayed set and no INTx reached vfio-pci), and an INTx that never drops
            # cannot be judged: the INTx checks then SKIP with this reason.
            if self.device.config_read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT:
                self._intx_problem = (
                    "its PCI Status Interrupt bit stays set with every completion consumed, so "
                    "its INTx never deasserts"
                )
            else:
                indexes.append(uapi.VFIO_PCI_INTX_IRQ_INDEX)
        if self.device.irq_info(uapi.VFIO_PCI_MSIX_IRQ_INDEX).count:
            indexes.append(uapi.VFIO_PCI_MSIX_IRQ_INDEX)
        return eng.EngineCaps(
            to_host=True,
            from_host=self.ctrl.identity.timestamp,
            to_host_size=spec.PAGE,
            from_host_size=self.TIMESTAMP_SIZE,
            max_transfer=spec.PAGE,
            alignment=4,
            address_bits=64,
            irq_indexes=tuple(indexes),
        )

    @classmethod
    def matches(cls, device: Device) -> bool:
        """Any NVMe controller, by class code."""
        return is_nvme(device)

    def irq_problem(self, index: int) -> str:
        """Why the controller's INTx is not offered, where it was found unusable."""
        return self._intx_problem if index == uapi.VFIO_PCI_INTX_IRQ_INDEX else ""

    @property
    def caps(self) -> eng.EngineCaps:
        """Identify to the host, Timestamp from the host (where supported), INTx/MSI-X."""
        return self._caps

    def identity(self) -> dict:
        """Model, serial and firmware revision from Identify Controller."""
        ident = self.ctrl.identity
        return {
            "model": ident.model,
            "serial": ident.serial,
            "firmware": ident.firmware,
            "nvme_version": spec.version_text(self.ctrl.bar.read32(spec.REG_VS)),
        }

    def _start(self, command: Command, iova: int, size: int, hold: bool = False) -> None:
        queue = self.ctrl.admin
        command = self.ctrl.prepared(queue, command, iova, size)
        self._pending = (queue, self.ctrl.submit(queue, command), time.monotonic(), hold)

    def start_to_host(self, iova: int, size: int) -> None:
        """Identify Controller to ``iova`` (``size`` must be 4096)."""
        if size != spec.PAGE:
            raise ValueError(f"NVMe engine writes the 4096-byte Identify data, not {size} bytes")
        self._start(self.ctrl.identify_command(spec.IDENTIFY_CONTROLLER), iova, size)

    def start_from_host(self, iova: int, size: int) -> None:
        """Set Features Timestamp from ``iova`` (``size`` must be 8)."""
        if not self.caps.from_host:
            raise ValueError(f"{self.device.bdf}: the controller has no Timestamp feature")
        if size != self.TIMESTAMP_SIZE:
            raise ValueError(f"NVMe engine reads the 8-byte timestamp, not {size} bytes")
        self._set_at = time.monotonic()
        self._start(self.ctrl.timestamp_command(), iova, size)

    def wait(self, timeout_s: float = eng.DEFAULT_TIMEOUT_S) -> eng.Transfer:
        """The command's completion status; a hang resets the controller."""
        if self._pending is None:
            raise RuntimeError("no NVMe command in flight")
        queue, cid, started, hold = self._pending
        self._pending = None
        try:
            cqe = self.ctrl.wait(queue, cid, timeout_s, hold=hold)
        except CommandTimeout as exc:
            return eng.Transfer(False, str(exc), round(time.monotonic() - started, 6), True)
        return self._timed(started, cqe.ok, cqe.status_text)

    def prime(self, data: bytes) -> bytes:
        """NVMe cannot choose: its device-to-host transfers carry the Identify data."""
        return self.ctrl.identify_data

    def holds(self, data: bytes) -> bool:
        """Whether the controller's clock now counts from the timestamp in ``data`` (its
        first 6 bytes, little endian): within the time since it was set, plus a margin."""
        now = self.ctrl.get_timestamp()
        sent = int.from_bytes(bytes(data[:6]), "little")
        elapsed_ms = (time.monotonic() - self._set_at) * 1000
        return 0 <= now - sent <= elapsed_ms + 5000

    def raise_irq(self, index: int, timeout_s: float = eng.DEFAULT_TIMEOUT_S) -> eng.Transfer:
        """Complete a no-data admin command; its interrupt stays asserted until acked."""
        self._start(self.ctrl.no_data_command(), 0, 0, hold=True)
        return self.wait(timeout_s)

    def ack_irq(self) -> None:
        """Ring the admin CQ head doorbell."""
        self.ctrl.admin.ring()

    def _restore_clock(self) -> None:
        if self.ctrl.identity.timestamp:
            self.ctrl.set_timestamp(int(time.time() * 1000))

    def reset(self) -> None:
        """Reset and re-enable the controller; its clock back to the host's time."""
        self._pending = None
        self.ctrl.enable()
        self._restore_clock()

    def probe_registers(self, pattern: int = 0x5A5AA5A5) -> eng.RegisterProbe:
        """VS must hold an NVMe version; AQA, written with the controller disabled, reads back
        what was written (its reserved bits left 0). The controller is enabled again after."""
        bar = self.ctrl.bar
        vs = bar.read32(spec.REG_VS)
        written = pattern & spec.AQA_MASK
        try:
            self.ctrl.disable()
            bar.write32(spec.REG_AQA, written)
            read_back = bar.read32(spec.REG_AQA)
        finally:
            self.reset()
        return eng.RegisterProbe(
            bar=0,
            identity_offset=spec.REG_VS,
            identity_value=vs,
            identity_problem=spec.version_problem(vs),
            scratch_offset=spec.REG_AQA,
            written=written,
            read_back=read_back,
            expected_read_back=written,
            mmapped=bar.mmapped,
        )

    def timing_registers(self) -> eng.TimingRegisters:
        """CSTS to read; INTMS written with 0, which masks nothing (the spec forbids INTMS
        only while MSI-X is enabled, and no interrupt is then)."""
        return eng.TimingRegisters(self.ctrl.bar, spec.REG_CSTS, spec.REG_INTMS, 0)

    def close(self) -> None:
        """Set the controller's clock back to the host's time and disable it."""
        try:
            self._pending = None
            self._restore_clock()
        finally:
            self.ctrl.close()
