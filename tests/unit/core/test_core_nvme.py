"""The NVMe driver against a recording fake controller (nvme_fake.py): media safety without
the scratch mark, PRP entries and lists, completions and phases, hangs and resets, the
engine's capabilities."""

from __future__ import annotations

import re
import struct
import time
from typing import Callable, Iterator, List

import pytest
from nvme_fake import (
    MEDIA_WRITING_ADMIN,
    MEDIA_WRITING_IO,
    ONCS_COMPARE,
    ONCS_TIMESTAMP,
    FakeClock,
    FakeIommu,
    FakeNvme,
    FakePciDevice,
    Issued,
    block_pattern,
)

from vfio_hil.core.dma import DmaBuffer
from vfio_hil.core.drivers.engine import EngineError, EngineMemory, Transfer
from vfio_hil.core.drivers.nvme import controller, spec
from vfio_hil.core.drivers.nvme.controller import (
    IO_QID,
    CommandTimeout,
    MediaWriteRefused,
    NvmeController,
    NvmeEngine,
    QueuePair,
)
from vfio_hil.core.drivers.nvme.spec import Cap, Command, Completion

PAGE = spec.PAGE
#: Where tests map their own buffers (the engine's window is far above).
IOVA = 0x100000
#: An IOVA nobody maps: a DMA there is blocked.
UNMAPPED = 0x700000
#: A short timeout for hang tests.
HANG_S = 0.1

MapHost = Callable[..., DmaBuffer]


# -- fixtures: the fake rig, parametrizable with indirect=True --------------------------------


@pytest.fixture
def iommu() -> FakeIommu:
    return FakeIommu()


@pytest.fixture
def nvme(iommu: FakeIommu, request: pytest.FixtureRequest) -> FakeNvme:
    return FakeNvme(iommu, **getattr(request, "param", {}))


@pytest.fixture
def device(nvme: FakeNvme, request: pytest.FixtureRequest) -> FakePciDevice:
    return FakePciDevice(nvme, **getattr(request, "param", {}))


@pytest.fixture
def memory(iommu: FakeIommu) -> Iterator[EngineMemory]:
    mem = EngineMemory(iommu.map, iommu.unmap)
    yield mem
    mem.close()
    assert not any(mem.contains(iova) for iova in iommu.maps), "engine memory left mapped"


@pytest.fixture
def host(iommu: FakeIommu) -> Iterator[MapHost]:
    """``host(iova, size)``: a DmaBuffer of the test's, mapped at ``iova``."""
    mapped: List[tuple] = []

    def map_host(iova: int = IOVA, size: int = PAGE) -> DmaBuffer:
        buf = DmaBuffer(size)
        iommu.map(buf.vaddr, iova, buf.length)
        mapped.append((buf, iova))
        return buf

    yield map_host
    for buf, iova in mapped:
        iommu.unmap(iova, buf.length)
        buf.close()


@pytest.fixture
def ctrl(
    device: FakePciDevice, memory: EngineMemory, nvme: FakeNvme, request: pytest.FixtureRequest
) -> Iterator[NvmeController]:
    # The fake completes a command as its doorbell is rung: waiting 1 s means a lost one.
    options = {"timeout_s": 1.0, **getattr(request, "param", {})}
    c = NvmeController(device, memory, **options)  # type: ignore[arg-type]
    yield c
    if not nvme.closed:
        c.close()


@pytest.fixture
def engine(device: FakePciDevice, memory: EngineMemory, nvme: FakeNvme) -> Iterator[NvmeEngine]:
    e = NvmeEngine(device, memory)  # type: ignore[arg-type]
    e.ctrl.timeout_s = 1.0
    yield e
    if not nvme.closed:
        e.close()


def unsafe(issued: List[Issued]) -> List[Issued]:
    return [i for i in issued if not spec.media_safe(i.admin, i.opcode, i.cdw10)]


def timestamp(ms: int) -> bytes:
    return ms.to_bytes(6, "little") + b"\x00\x00"


# -- 1. media safety ----------------------------------------------------------------------


def test_no_media_writing_command_without_scratch(
    engine: NvmeEngine, nvme: FakeNvme, host: MapHost
) -> None:
    """Every public method a check uses, on a device not marked scratch."""
    ctrl = engine.ctrl
    buf = host(IOVA, 16 * PAGE)
    ctrl.identify(spec.IDENTIFY_CONTROLLER)
    ctrl.identify(spec.IDENTIFY_NAMESPACE, 1)
    assert ctrl.log_page(0x02, 512, IOVA).ok
    assert ctrl.set_timestamp(1_000_000).ok
    assert ctrl.get_timestamp() >= 1_000_000
    assert ctrl.read(0, 16, IOVA).ok
    assert ctrl.compare(0, 16, IOVA).ok
    assert ctrl.io_queue() is ctrl.io
    ctrl.registers()
    engine.describe()
    engine.prime(b"anything")
    assert engine.to_host(IOVA).ok
    buf.fill(timestamp(42_000))
    assert engine.from_host(IOVA).ok
    assert engine.holds(buf.read(0, 8))
    assert not engine.to_host(UNMAPPED).ok
    assert engine.raise_irq(2).ok
    engine.ack_irq()
    engine.reset()
    engine.probe_registers()
    nvme.hang = True
    assert engine.to_host(IOVA, timeout_s=HANG_S).timed_out
    assert ctrl.read(0, 1, IOVA).ok  # after the reset: I/O queues created again
    engine.close()

    names = {i.name for i in nvme.issued}
    assert names >= {"Identify", "Get Log Page", "Set Features", "Get Features", "Read"}
    assert names >= {"Compare", "Create I/O CQ", "Create I/O SQ"}
    assert unsafe(nvme.issued) == []
    assert not [i for i in nvme.issued if not i.admin and i.opcode in MEDIA_WRITING_IO]
    assert not [i for i in nvme.issued if i.admin and i.opcode in MEDIA_WRITING_ADMIN]
    assert not [
        i
        for i in nvme.issued
        if i.admin and i.opcode == spec.ADMIN_SET_FEATURES and i.cdw10 & spec.SET_FEATURES_SAVE
    ]
    assert nvme.media == {}


def _io(ctrl: NvmeController, opcode: int) -> int:
    return ctrl.submit(ctrl.io_queue(), Command(opcode, nsid=1))


def _admin(ctrl: NvmeController, opcode: int, cdw10: int = 0) -> int:
    return ctrl.submit(ctrl.admin, Command(opcode, nsid=1, cdw10=cdw10))


def _refused(admin: bool, opcode: int, cdw10: int = 0, test_id: str = "") -> object:
    """A submission of ``opcode`` (named as the refusal must name it)."""
    return pytest.param(
        lambda c: _admin(c, opcode, cdw10) if admin else _io(c, opcode),
        spec.opcode_name(admin, opcode),
        id=test_id or f"{'admin' if admin else 'io'}-{opcode:#04x}",
    )


REFUSED = [
    pytest.param(lambda c: c.write(0, 1, IOVA), "Write", id="write()"),
    *(_refused(False, op) for op in sorted(MEDIA_WRITING_IO | {spec.NVM_FLUSH, 0x80})),
    *(_refused(True, op) for op in sorted(MEDIA_WRITING_ADMIN | {0xC1})),
    _refused(
        True,
        spec.ADMIN_SET_FEATURES,
        spec.FEATURE_TIMESTAMP | spec.SET_FEATURES_SAVE,
        "set-features-timestamp-save",
    ),
    _refused(
        True,
        spec.ADMIN_SET_FEATURES,
        spec.FEATURE_NUMBER_OF_QUEUES | spec.SET_FEATURES_SAVE,
        "set-features-queues-save",
    ),
    _refused(True, spec.ADMIN_SET_FEATURES, 0x06, "set-features-write-cache"),
]


@pytest.mark.parametrize(("action", "name"), REFUSED)
def test_media_writes_refused_without_scratch(
    ctrl: NvmeController, nvme: FakeNvme, host: MapHost, action: Callable, name: str
) -> None:
    host(IOVA)
    queues = (ctrl.admin, ctrl.io_queue())  # the I/O queues exist before the refusal

    def seen() -> tuple:
        sqs = tuple((q.sq.read(), q.tail, q.next_cid) for q in queues)
        return list(nvme.issued), list(nvme.doorbells), sqs

    before = seen()
    with pytest.raises(MediaWriteRefused) as refused:
        action(ctrl)
    message = str(refused.value)
    assert ctrl.device.bdf in message
    assert "scratch" in message and name in message
    assert seen() == before, "a refused command reached the controller"
    assert nvme.media == {}


@pytest.mark.parametrize("ctrl", [{"scratch": True}], indirect=True)
def test_scratch_device_gets_writes(ctrl: NvmeController, nvme: FakeNvme, host: MapHost) -> None:
    buf = host(IOVA, 2 * PAGE)
    data = buf.fill_random()[: 6 * 512]
    assert ctrl.write(8, 6, IOVA).ok
    assert nvme.issued[-1][:3] == (False, spec.NVM_WRITE, 8)
    assert b"".join(nvme.media[lba] for lba in range(8, 14)) == data
    buf.zero()
    assert ctrl.read(8, 6, IOVA).ok and buf.read(0, len(data)) == data
    assert ctrl.compare(8, 6, IOVA).ok
    _admin(ctrl, spec.ADMIN_FORMAT_NVM)  # reaches the controller (the fake does not format)
    assert nvme.issued[-1][:2] == (True, spec.ADMIN_FORMAT_NVM)


# -- 2. PRP entries and lists ---------------------------------------------------------------

DEPTH = 8


@pytest.fixture
def queue(memory: EngineMemory, nvme: FakeNvme) -> QueuePair:
    return QueuePair(IO_QID, DEPTH, memory, nvme, Cap(nvme.cap))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("iova", "size", "prp2"),
    [
        (IOVA, 4, 0),
        (IOVA, PAGE, 0),
        (IOVA + PAGE - 4, 4, 0),
        (IOVA + 0x800, 0x800, 0),
        (IOVA + 0x800, 0x801, IOVA + PAGE),
        (IOVA, PAGE + 4, IOVA + PAGE),
        (IOVA + 4, 2 * PAGE - 4, IOVA + PAGE),
        (IOVA, 2 * PAGE, IOVA + PAGE),
    ],
)
def test_prps_within_two_pages(queue: QueuePair, iova: int, size: int, prp2: int) -> None:
    assert queue.prps(3, iova, size) == (iova, prp2)


@pytest.mark.parametrize(
    ("iova", "size", "pages"),
    [
        (IOVA + 4, 2 * PAGE, 2),
        (IOVA, 3 * PAGE, 2),
        (IOVA + 0x800, 3 * PAGE, 3),
        (IOVA, 513 * PAGE, 512),  # a full list page
        (IOVA + 4, 512 * PAGE + PAGE - 4, 512),
    ],
)
@pytest.mark.parametrize("cid", [3, DEPTH + 3, 5])
def test_prp_list(queue: QueuePair, iova: int, size: int, pages: int, cid: int) -> None:
    prp1, prp2 = queue.prps(cid, iova, size)
    slot = cid % DEPTH
    assert (prp1, prp2) == (iova, queue.lists_iova + slot * PAGE)
    listed = struct.unpack(f"<{pages}Q", queue.lists.read(slot * PAGE, 8 * pages))
    assert list(listed) == [IOVA + PAGE * (i + 1) for i in range(pages)]


@pytest.mark.parametrize(
    ("iova", "size", "problem"),
    [
        (IOVA + 2, 16, "not dword aligned"),
        (IOVA + 1, PAGE, "not dword aligned"),
        (IOVA, 513 * PAGE + 4, "more than one PRP list page"),
        (IOVA + 4, 513 * PAGE, "more than one PRP list page"),
    ],
)
def test_prps_rejected(queue: QueuePair, iova: int, size: int, problem: str) -> None:
    before = queue.lists.read()
    with pytest.raises(ValueError, match=problem):
        queue.prps(3, iova, size)
    assert queue.lists.read() == before


@pytest.mark.parametrize(
    ("offset", "blocks"),
    [(0, 8), (0x200, 8), (0x200, 24), (0x604, 8), (0, 64)],
    ids=["one-page", "two-pages", "list", "unaligned-block", "list-8-pages"],
)
def test_read_lands_where_the_prps_say(
    ctrl: NvmeController, host: MapHost, offset: int, blocks: int
) -> None:
    """End to end: the fake follows the driver's PRP1/PRP2/list to the host pages."""
    buf = host(IOVA, 18 * PAGE)
    assert ctrl.read(100, blocks, IOVA + offset).ok
    expected = b"".join(block_pattern(lba, 512) for lba in range(100, 100 + blocks))
    assert buf.read(offset, len(expected)) == expected
    assert buf.compare(bytes(offset)) == 0
    assert buf.compare(bytes(PAGE), offset + len(expected)) == 0


@pytest.mark.parametrize(("log_id", "size"), [(0x02, 512), (0x01, 64), (0x03, 4), (0x05, PAGE)])
def test_log_page_asks_for_its_size(
    ctrl: NvmeController, host: MapHost, log_id: int, size: int
) -> None:
    buf = host(IOVA, 2 * PAGE)
    assert ctrl.log_page(log_id, size, IOVA).ok
    assert buf.read(0, size) == bytes([log_id]) * size  # the fake fills it with the ID
    assert buf.compare(bytes(PAGE), size) == 0


# -- 3. completions, status text, phases --------------------------------------------------


@pytest.mark.parametrize(
    ("sct", "sc", "dnr", "text"),
    [
        (0, 0x00, 0, "ok"),
        (0, 0x04, 1, "Data Transfer Error (SCT 0, SC 0x04, DNR)"),
        (0, 0x04, 0, "Data Transfer Error (SCT 0, SC 0x04)"),
        (0, 0x80, 1, "LBA Out of Range (SCT 0, SC 0x80, DNR)"),
        (1, 0x01, 0, "Invalid Queue Identifier (SCT 1, SC 0x01)"),
        (2, 0x85, 1, "Compare Failure (SCT 2, SC 0x85, DNR)"),
        (7, 0xFF, 0, "status (SCT 7, SC 0xff)"),
    ],
)
@pytest.mark.parametrize("phase", [0, 1])
@pytest.mark.parametrize("more", [0, 1], ids=["", "M-CRD"])
def test_completion_unpack(sct: int, sc: int, dnr: int, text: str, phase: int, more: int) -> None:
    # DW2: SQHD 15:0, SQID 31:16; DW3: CID 15:0, P 16, SC 24:17, SCT 27:25, CRD 29:28, M 30,
    # DNR 31. More and CRD change nothing the driver reports.
    dw3 = 0x1234 | phase << 16 | sc << 17 | sct << 25 | more * 0b111 << 28 | dnr << 31
    cqe = Completion.unpack(struct.pack("<IIII", 0xDEADBEEF, 0, 7 | 3 << 16, dw3))
    fields = (cqe.result, cqe.sq_head, cqe.sq_id, cqe.cid, cqe.phase)
    assert fields == (0xDEADBEEF, 7, 3, 0x1234, phase)
    assert (cqe.status_code_type, cqe.status_code, cqe.do_not_retry) == (sct, sc, bool(dnr))
    assert cqe.ok == ((sct, sc) == (0, 0))
    assert cqe.status_text == text


BLOCKED = [
    pytest.param(lambda e: e.to_host(UNMAPPED), UNMAPPED, id="to_host"),
    pytest.param(lambda e: e.from_host(UNMAPPED), UNMAPPED, id="from_host"),
    pytest.param(lambda e: e.ctrl.read(0, 8, UNMAPPED), UNMAPPED, id="read"),
    pytest.param(lambda e: e.ctrl.read(0, 16, IOVA), IOVA + PAGE, id="read-second-page"),
    pytest.param(lambda e: e.ctrl.log_page(2, 512, UNMAPPED), UNMAPPED, id="log_page"),
]


@pytest.mark.parametrize(("action", "fault"), BLOCKED)
def test_blocked_dma_is_a_data_transfer_error(
    engine: NvmeEngine, iommu: FakeIommu, host: MapHost, action: Callable, fault: int
) -> None:
    host(IOVA, PAGE)
    out = action(engine)
    assert not out.ok
    text = out.status if isinstance(out, Transfer) else out.status_text
    assert text == "Data Transfer Error (SCT 0, SC 0x04, DNR)"
    assert iommu.faults == [fault]
    assert engine.to_host(IOVA).ok  # the controller goes on


@pytest.mark.parametrize("nvme", [{"mqes": n} for n in (2, 5, 32, 256)], indirect=True)
def test_phase_wraps_around(ctrl: NvmeController, nvme: FakeNvme, host: MapHost) -> None:
    host(IOVA)
    for queue, command in (
        (ctrl.admin, lambda: ctrl.admin_command(ctrl.no_data_command())),
        (ctrl.io_queue(), lambda: ctrl.read(7, 1, IOVA)),
    ):
        done = queue.next_cid
        for _ in range(2 * queue.depth + 3):
            cid = queue.next_cid
            cqe = command()
            assert cqe.ok and cqe.cid == cid and cqe.sq_id == queue.qid
            done += 1
        assert (queue.head, queue.phase) == (done % queue.depth, 1 ^ (done // queue.depth) % 2)
        assert (nvme.cqs[queue.qid].tail, nvme.cqs[queue.qid].phase) == (queue.head, queue.phase)
        assert nvme.cqs[queue.qid].head == queue.head  # every completion acknowledged


def test_wait_skips_an_abandoned_completion(ctrl: NvmeController) -> None:
    first = ctrl.submit(ctrl.admin, ctrl.no_data_command())
    second = ctrl.submit(ctrl.admin, ctrl.no_data_command())
    assert ctrl.wait(ctrl.admin, second).cid == second != first
    assert ctrl.admin.poll() is None


@pytest.mark.parametrize("nvme", [{"dstrd": n} for n in (0, 1, 4)], indirect=True)
def test_doorbell_stride(ctrl: NvmeController, nvme: FakeNvme, host: MapHost) -> None:
    host(IOVA)
    assert ctrl.read(0, 1, IOVA).ok
    stride = 4 << (nvme.cap >> 32 & 0xF)
    rung = {offset for offset, _ in nvme.doorbells}
    assert rung == {spec.REG_DOORBELLS + i * stride for i in range(4)}  # SQ/CQ of admin, I/O


# -- 4. hangs and controllers that never become ready ----------------------------------------

HANGING = [
    pytest.param(lambda e: e.to_host(IOVA, timeout_s=HANG_S), id="to_host"),
    pytest.param(lambda e: e.from_host(IOVA, timeout_s=HANG_S), id="from_host"),
    pytest.param(lambda e: e.raise_irq(2, timeout_s=HANG_S), id="raise_irq"),
]


@pytest.mark.parametrize("action", HANGING)
def test_hang_times_out_resets_and_recovers(
    engine: NvmeEngine, nvme: FakeNvme, host: MapHost, action: Callable
) -> None:
    host(IOVA).fill(timestamp(42_000))
    resets, enables, fetched = nvme.resets, nvme.enables, len(nvme.issued)
    nvme.hang = True
    start = time.monotonic()
    out = action(engine)
    took = time.monotonic() - start
    assert out.timed_out and not out.ok
    assert HANG_S <= out.seconds <= took < HANG_S + 0.5
    assert engine.device.bdf in out.status and "reset" in out.status
    assert len(nvme.issued) == fetched + 1, "the hung command reached the controller"
    assert (nvme.resets, nvme.enables, nvme.ready) == (resets + 1, enables + 1, True)
    again = action(engine)
    assert again.ok and not again.timed_out


def test_io_hang_recreates_io_queues(ctrl: NvmeController, nvme: FakeNvme, host: MapHost) -> None:
    host(IOVA)
    ctrl.timeout_s = HANG_S
    assert ctrl.read(0, 1, IOVA).ok
    nvme.hang = True
    with pytest.raises(CommandTimeout, match=re.escape(ctrl.device.bdf)):
        ctrl.read(0, 1, IOVA)
    assert nvme.resets == 1 and nvme.ready
    assert ctrl.read(0, 1, IOVA).ok
    created = [i.name for i in nvme.issued if i.name.startswith("Create")]
    assert created == ["Create I/O CQ", "Create I/O SQ"] * 2


@pytest.mark.parametrize(
    ("nvme", "waited"),
    [({"ready_timeout": 0}, 1.0), ({"ready_timeout": 20}, 10.0)],
    indirect=["nvme"],
)
def test_never_ready(
    nvme: FakeNvme,
    device: FakePciDevice,
    memory: EngineMemory,
    monkeypatch: pytest.MonkeyPatch,
    waited: float,
) -> None:
    """CSTS.RDY never follows CC.EN: EngineError naming the device after CAP.TO (at least
    1 s), on a virtual clock."""
    clock = FakeClock()
    monkeypatch.setattr(controller, "time", clock)
    nvme.never_ready = True
    start = clock.now
    with pytest.raises(EngineError, match=re.escape(device.bdf) + ".*CSTS.RDY"):
        NvmeEngine(device, memory)  # type: ignore[arg-type]
    assert waited <= clock.now - start <= waited + 0.01
    assert nvme.closed and nvme.issued == []


def test_controller_left_enabled_is_reset_first(
    nvme: FakeNvme, device: FakePciDevice, memory: EngineMemory, host: MapHost
) -> None:
    """A controller a previous owner left enabled, with its queues elsewhere."""
    nvme.regs64[spec.REG_ASQ] = nvme.regs64[spec.REG_ACQ] = UNMAPPED
    nvme.write32(spec.REG_CC, spec.CC_EN)
    with NvmeEngine(device, memory) as engine:  # type: ignore[arg-type]
        assert (nvme.resets, nvme.enables) == (1, 2)
        assert nvme.regs64[spec.REG_ASQ] == engine.ctrl.admin.sq_iova
        host(IOVA)
        assert engine.to_host(IOVA).ok


# -- 5. the engine: capabilities, holds, interrupts, registers ------------------------------


@pytest.mark.parametrize(
    ("nvme", "from_host"),
    [
        ({"oncs": ONCS_TIMESTAMP | ONCS_COMPARE}, True),
        ({"oncs": ONCS_TIMESTAMP}, True),
        ({"oncs": ONCS_COMPARE}, False),
        ({"oncs": 0}, False),
    ],
    indirect=["nvme"],
)
def test_from_host_needs_the_timestamp_feature(
    engine: NvmeEngine, nvme: FakeNvme, from_host: bool
) -> None:
    caps = engine.caps
    assert (caps.to_host, caps.from_host) == (True, from_host)
    assert (caps.to_host_size, caps.from_host_size, caps.alignment) == (PAGE, 8, 4)
    assert ("dma_engine" in caps.names()) is from_host
    if not from_host:
        with pytest.raises(ValueError, match="Timestamp"):
            engine.start_from_host(IOVA, 8)
        assert not [i for i in nvme.issued if i.cdw10 & 0xFF == spec.FEATURE_TIMESTAMP]


@pytest.mark.parametrize(
    ("device", "indexes"),
    [
        ({"irq_counts": (1, 1, 65)}, (0, 2)),
        ({"irq_counts": (0, 0, 1)}, (2,)),
        ({"irq_counts": (1, 1, 0)}, (0,)),
        ({"irq_counts": (0, 1, 0)}, ()),
        # INTx still asserted with every completion consumed (QEMU 7.2's model): left out.
        ({"irq_counts": (1, 1, 65), "status": 0x0018}, (2,)),
    ],
    indirect=["device"],
)
def test_irq_indexes_follow_irq_info(engine: NvmeEngine, indexes: tuple) -> None:
    assert engine.caps.irq_indexes == indexes
    assert ("device_irq" in engine.caps.names()) is bool(indexes)
    stuck = engine.device.config_read(6, 2) & 0x8 and engine.device.irq_info(0).count
    assert ("never deasserts" in engine.irq_problem(0)) is bool(stuck)
    assert engine.irq_problem(2) == ""


SENT = timestamp(0x0123456789)


@pytest.mark.parametrize("mapped", [True, False], ids=["delivered", "blocked"])
def test_holds_what_the_device_obtained(
    engine: NvmeEngine, iommu: FakeIommu, host: MapHost, mapped: bool
) -> None:
    host(IOVA).fill(SENT)
    out = engine.from_host(IOVA if mapped else UNMAPPED)
    assert out.ok is mapped
    assert engine.holds(SENT) is mapped
    assert not engine.holds(timestamp(0x0123456789 + 60_000))
    assert iommu.faults == ([] if mapped else [UNMAPPED])


def test_to_host_writes_the_primed_identify_data(
    engine: NvmeEngine, nvme: FakeNvme, host: MapHost
) -> None:
    buf = host(IOVA + PAGE, PAGE)
    payload = engine.prime(b"ignored")
    assert payload == nvme.identify_controller()
    assert engine.to_host(IOVA + PAGE).ok and buf.read() == payload
    with pytest.raises(ValueError):
        engine.start_to_host(IOVA, 512)
    assert engine.identity() == {
        "model": nvme.model,
        "serial": nvme.serial,
        "firmware": nvme.firmware,
        "nvme_version": "1.4.0",
    }


def test_irq_stays_pending_until_acked(engine: NvmeEngine, nvme: FakeNvme) -> None:
    for _ in range(2 * engine.ctrl.admin.depth + 1):
        assert engine.raise_irq(0).ok
        assert nvme.interrupt_pending(0)
        engine.ack_irq()
        assert not nvme.interrupt_pending(0)


@pytest.mark.parametrize(
    ("nvme", "problem"),
    [({"vs": 0x00010400}, ""), ({"vs": 0x00020000}, ""), ({"vs": 0xFFFFFFFF}, "no NVMe version")],
    indirect=["nvme"],
)
def test_probe_registers(engine: NvmeEngine, nvme: FakeNvme, host: MapHost, problem: str) -> None:
    host(IOVA)
    aqa = nvme.regs[spec.REG_AQA]
    probe = engine.probe_registers(0xFFFFFFFF)
    assert (probe.identity_value, probe.scratch_offset) == (nvme.vs, spec.REG_AQA)
    assert problem in probe.identity_problem and bool(probe.identity_problem) is bool(problem)
    assert probe.written == probe.read_back == probe.expected_read_back == spec.AQA_MASK
    assert probe.mmapped
    assert nvme.resets == 1 and nvme.ready and nvme.regs[spec.REG_AQA] == aqa
    assert engine.to_host(IOVA).ok


def test_close_restores_the_clock_and_disables(engine: NvmeEngine, nvme: FakeNvme) -> None:
    nvme.clock = (5, time.monotonic())
    engine.close()
    assert nvme.issued[-1][:3] == (True, spec.ADMIN_SET_FEATURES, spec.FEATURE_TIMESTAMP)
    assert abs(nvme.now_ms() - time.time() * 1000) < 5000
    assert not nvme.ready and nvme.closed
