"""ISO-001..008 judge a platform the same whatever DMA engine proves it (issue 8, item 3).

No kernel or QEMU option of the virtual rack breaks DMA isolation while VFIO still attaches,
so the rack never shows an ISO FAIL. Here the platform is a fake machine whose IOMMU can be
broken in the ways the checks look for, and everything above it is real: the conformance
checks of ``conformance/test_isolation.py`` call the DUT functions of
``vfio_hil.dut.isolation`` through the in-process DUT channel, which open the device through
``engine_in_container`` and drive it with the real edu or NVMe engine. Only the machine is
fake: the IOMMU contexts (``open_iommu``), the devices (edu, NVMe: DMA through the context
their function was opened in), the kernel log (Intel VT-d fault lines for blocked DMA), the
physical addresses of the process's pages, the huge page pool and the clock.

Each broken platform must FAIL exactly the checks covering the broken guarantee, with a
reason naming it, through edu and through NVMe alike, and the evidence must have one shape.
"""

from __future__ import annotations

import ctypes
import inspect
import sys
from collections import deque
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest
from check_modules import load_checks

from vfio_hil.core import uapi
from vfio_hil.core.backend import IommuBackend
from vfio_hil.core.device import PCI_COMMAND, PCI_COMMAND_MASTER
from vfio_hil.core.dma import DmaBuffer
from vfio_hil.core.drivers import edu
from vfio_hil.core.drivers import engine as engine_api
from vfio_hil.core.drivers.nvme import controller
from vfio_hil.core.errors import VfioError
from vfio_hil.core.iova import IovaRange
from vfio_hil.dut import engines, isolation
from vfio_hil.dut import evidence as kernel_log
from vfio_hil.dut.isolation import FaultWatch
from vfio_hil.lab.channel import LocalDutChannel
from vfio_hil.lab.inventory import DutDevice, Host
from vfio_hil.lab.session import DeviceLease, HostSession
from vfio_hil_pytest.checks import MARK
from vfio_hil_pytest.plugin import Evidence

# The fakes of the core tests (pytest puts their folder on sys.path only when it gets there).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from nvme_fake import PAGE, FakeClock, FakeIommu, FakeNvme, FakePciDevice
from test_core_edu import FakeEduBar

HOST = "lab0"
DUT, PEER = "0000:00:04.0", "0000:00:05.0"
ENGINES = ("edu", "nvme")
WRITE = uapi.VFIO_DMA_MAP_FLAG_WRITE
RW = uapi.VFIO_DMA_MAP_FLAG_READ | WRITE
#: Where the fake machine puts the process's pages the checks ask the physical address of:
#: above every IOVA they map, below edu's 28-bit reach, outside the engines' DMA window.
PHYS_BASE = 0x4000000

# -- the platforms ----------------------------------------------------------------------------

CONFORMANT = "conformant"
#: DMA to an IOVA the context does not map reaches physical memory untranslated, unlogged.
PASSES_THROUGH = "passes-through"
#: Unmapping leaves the translation in place (an IOTLB never invalidated).
STALE_UNMAP = "stale-unmap"
#: A mapping without VFIO_DMA_MAP_FLAG_WRITE takes device writes.
READ_ONLY_WRITABLE = "read-only-writable"
#: A device's DMA is translated through every context's mappings, not only its own.
SHARED_SPACE = "shared-space"

#: The checks each platform must FAIL, and what each failure must say.
EXPECTED_FAILURES: Dict[str, Dict[str, str]] = {
    CONFORMANT: {},
    PASSES_THROUGH: {
        "ISO-002": "changed the memory at that physical address: the IOMMU did not translate it",
        "ISO-003": "secret bytes at that address to the device",
        # Untranslated, the unmapped IOVA is some memory of no one's: only the fault's absence
        # shows it there.
        "ISO-004": "no IOMMU fault logged for the blocked DMA write after unmap",
        "ISO-006": "no IOMMU fault logged for the blocked DMA write into another container's",
    },
    STALE_UNMAP: {"ISO-004": "still reached the memory after UNMAP_DMA (stale IOMMU translation)"},
    READ_ONLY_WRITABLE: {"ISO-005": "wrote into the read-only mapping"},
    SHARED_SPACE: {"ISO-006": f"reached memory mapped only in the container of {PEER}"},
}
ISO_CHECKS = {f"ISO-00{n}" for n in range(1, 9)}


# -- the fake machine ---------------------------------------------------------------------------


def _translate(
    maps: Dict[int, Tuple[int, int]], iova: int, length: int
) -> Optional[Tuple[int, int]]:
    """``(mapping IOVA, process address)`` of ``[iova, iova + length)`` in ``maps`` (``iova ->
    (vaddr, size)``, as FakeIommu keeps them), or None when no mapping holds it all."""
    for start, (vaddr, size) in maps.items():
        if start <= iova and iova + length <= start + size:
            return start, vaddr + iova - start
    return None


class FakeContext(IommuBackend):
    """An IOMMU context of the fake machine (``name``: the backend asked for): its mappings
    in a FakeIommu, with VFIO's permission flags, walked for every DMA of its devices."""

    def __init__(self, machine: Machine, name: str) -> None:
        super().__init__()
        self.machine = machine
        self.name = name
        self.table = FakeIommu()
        self.flags: Dict[int, int] = {}
        #: Translations a broken unmap left behind.
        self.stale: Dict[int, Tuple[int, int]] = {}
        machine.contexts.append(self)

    def _attach(self, bdf: str) -> FakeFunction:  # type: ignore[override]
        return self.machine.function(bdf, self)

    def raw_map_dma(self, vaddr: int, iova: int, size: int, flags: int = RW) -> int:
        self.table.map(vaddr, iova, size)
        self.flags[iova] = flags
        return 0

    def raw_unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        if iova not in self.table.maps:
            return 0
        if self.machine.broken == STALE_UNMAP:
            self.stale[iova] = self.table.maps[iova]
        self.table.unmap(iova, size)
        del self.flags[iova]
        return size

    def map_dma(
        self, vaddr: int, iova: int, size: int, readable: bool = True, writable: bool = True
    ) -> None:
        flags = (uapi.VFIO_DMA_MAP_FLAG_READ if readable else 0) | (WRITE if writable else 0)
        ret = self.raw_map_dma(vaddr, iova, size, flags)
        if ret < 0:
            raise VfioError(-ret, "map DMA", repr(self), {"iova": iova, "size": size})

    def unmap_dma(self, iova: int, size: int) -> int:
        return self.raw_unmap_dma(iova, size)

    def _unmap_everything(self) -> int:
        return sum(
            self.raw_unmap_dma(iova, size) for iova, (_, size) in list(self.table.maps.items())
        )

    def iova_ranges(self) -> List[IovaRange]:
        return [IovaRange(0, (1 << 48) - 1)]

    def hot_reset(self, device: Any) -> None:
        raise NotImplementedError("no ISO check resets a bus")

    def _close_context(self) -> None:
        self.machine.contexts.remove(self)

    def walk(self, bdf: str, iova: int, length: int, access: str) -> Optional[int]:
        """Where a DMA of ``bdf`` (``access``: "read" or "write") at ``iova`` lands in the
        process, or None when the IOMMU blocks it (recorded, and logged as a fault)."""
        hit = _translate(self.table.maps, iova, length)
        if hit is None:
            vaddr = self._untranslated(iova, length)
        else:
            start, vaddr = hit
            if access == "write" and not self._writable(start):
                vaddr = None
        if vaddr is None:
            self.table.faults.append(iova)
            self.machine.log_fault(bdf, iova, access)
        return vaddr

    def _writable(self, start: int) -> bool:
        return bool(self.flags[start] & WRITE) or self.machine.broken == READ_ONLY_WRITABLE

    def _untranslated(self, iova: int, length: int) -> Optional[int]:
        """Where a broken IOMMU lets DMA to an IOVA this context does not map go (None: it
        blocks it, as it must)."""
        broken = self.machine.broken
        if broken == PASSES_THROUGH:
            return self.machine.physical(iova, length)
        if broken == STALE_UNMAP:
            tables = [self.stale]
        elif broken == SHARED_SPACE:
            tables = [c.table.maps for c in self.machine.contexts if c is not self]
        else:
            return None
        hits = (_translate(maps, iova, length) for maps in tables)
        return next((hit[1] for hit in hits if hit is not None), None)


class Port:
    """What a device's DMA goes through: nothing while its Bus Master Enable is clear, else its
    IOMMU context. Reads and writes as FakeIommu's, which the fake devices DMA through."""

    def __init__(self, context: FakeContext, bdf: str) -> None:
        self.context = context
        self.bdf = bdf
        self.device: Optional[FakeFunction] = None

    @property
    def mastering(self) -> bool:
        return self.device is not None and self.device.bus_master

    def _reach(self, iova: int, length: int, access: str) -> Optional[int]:
        if not self.mastering:
            return None  # the request never reaches the IOMMU: nothing to log
        return self.context.walk(self.bdf, iova, length, access)

    def read(self, iova: int, length: int) -> Optional[bytes]:
        vaddr = self._reach(iova, length, "read")
        return None if vaddr is None else ctypes.string_at(vaddr, length)

    def write(self, iova: int, data: bytes) -> bool:
        vaddr = self._reach(iova, len(data), "write")
        if vaddr is not None:
            ctypes.memmove(vaddr, data, len(data))
        return vaddr is not None


class FakeFunction(FakePciDevice):
    """FakePciDevice with a command register: Bus Master Enable reads back and gates DMA."""

    def config_read(self, offset: int, width: int = 4) -> int:
        if offset == PCI_COMMAND:
            return PCI_COMMAND_MASTER if self.bus_master else 0
        return super().config_read(offset, width)

    def config_write(self, offset: int, value: int, width: int = 4) -> None:
        assert (offset, width) == (PCI_COMMAND, 2), f"config write at {offset:#x}/{width}"
        self.bus_master = bool(value & PCI_COMMAND_MASTER)

    def close(self) -> None:
        """Nothing to release: the engine closed the BAR."""


class DmaEdu(FakeEduBar):
    """FakeEduBar whose DMA commands move bytes between its 4 KiB buffer and host memory
    through ``port`` at once (the command reads as done at the first poll). A blocked read
    brings nothing; edu reports nothing either way."""

    def __init__(self, port: Port) -> None:
        super().__init__(busy_polls=0)
        self.port = port
        self.buffer = bytearray(edu.DMA_BUFFER_SIZE)

    def write64(self, offset: int, value: int) -> None:
        super().write64(offset, value)
        if offset != edu.REG_DMA_CMD or not value & edu.DMA_CMD_START:
            return
        src, dst, count = (
            self.regs[r] for r in (edu.REG_DMA_SRC, edu.REG_DMA_DST, edu.REG_DMA_COUNT)
        )
        if value & edu.DMA_CMD_TO_RAM:
            at = src - edu.DMA_BUFFER_ADDR
            self.port.write(dst, bytes(self.buffer[at : at + count]))
        else:
            data = self.port.read(src, count)
            if data is not None:
                at = dst - edu.DMA_BUFFER_ADDR
                self.buffer[at : at + count] = data


class GatedNvme(FakeNvme):
    """FakeNvme that fetches its commands by DMA: with Bus Master Enable clear, nothing."""

    def _run(self, qid: int) -> None:
        if self.iommu.mastering:  # type: ignore[attr-defined]
            super()._run(qid)


#: Each engine's device: its BAR and controller behind a port, and its config space IDs.
HARDWARE: Dict[str, Tuple[Callable[[Port], Any], Dict[str, int]]] = {
    "edu": (
        DmaEdu,
        {"vendor": edu.EDU_VENDOR_ID, "device": edu.EDU_DEVICE_ID, "class_code": 0x00FF00},
    ),
    "nvme": (GatedNvme, {}),  # FakePciDevice's defaults: QEMU's NVMe, class 01:08:02
}


def base_pages(size: int, page_size: int = PAGE, backing: str = "anonymous") -> DmaBuffer:
    """A DmaBuffer of base pages whatever page size is asked: the fake IOMMU maps any, and the
    host's huge page pool stays untouched."""
    return DmaBuffer(size, backing=backing)


class Machine:
    """The DUT under the checks: ``engine``'s devices at DUT and PEER, an Intel IOMMU
    (``broken`` as told), the kernel log, physical memory and a virtual clock."""

    def __init__(self, engine: str, broken: str) -> None:
        self.engine = engine
        self.broken = broken
        self.contexts: List[FakeContext] = []
        self.log: List[str] = []
        self.clock = FakeClock()
        #: Physical address -> the buffer there (those pages whose address was asked).
        self.memory: Dict[int, DmaBuffer] = {}
        self._next_phys = PHYS_BASE
        #: The rest of physical memory: where untranslated DMA to any other address lands.
        self.elsewhere = ctypes.create_string_buffer(2 * PAGE)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make the library's view of the machine this one."""
        monkeypatch.setattr(
            engines, "open_iommu", lambda backend="auto": FakeContext(self, backend)
        )
        monkeypatch.setattr(isolation, "_physical_pages", self.physical_pages)
        monkeypatch.setattr(isolation, "hugepages", lambda count, page_size=0: nullcontext(None))
        monkeypatch.setattr(isolation, "DmaBuffer", base_pages)
        monkeypatch.setattr(kernel_log, "kmsg_cursor", lambda: len(self.log) - 1)
        monkeypatch.setattr(
            kernel_log,
            "kmsg_since",
            lambda cursor: {"lines": self.log[cursor + 1 :], "trouble": []},
        )
        monkeypatch.setattr(FaultWatch, "_provoked", deque(maxlen=3))
        for module in (isolation, engine_api, edu, controller):  # all read one clock
            monkeypatch.setattr(module, "time", self.clock)

    def function(self, bdf: str, context: FakeContext) -> FakeFunction:
        """The device at ``bdf``, opened in ``context`` (fresh: its state is the engine's)."""
        port = Port(context, bdf)
        bar, ids = HARDWARE[self.engine]
        port.device = FakeFunction(bar(port), bdf=bdf, **ids)
        return port.device

    def physical_pages(self, buf: DmaBuffer) -> List[Optional[int]]:
        """``isolation._physical_pages``: the pages of ``buf`` get physical addresses."""
        base, self._next_phys = self._next_phys, self._next_phys + buf.length
        self.memory[base] = buf
        return [base + offset for offset in range(0, buf.length, PAGE)]

    def physical(self, address: int, length: int) -> int:
        """The process address of ``[address, address + length)`` in physical memory."""
        for base, buf in self.memory.items():
            if not buf.closed and base <= address and address + length <= base + buf.length:
                return buf.vaddr + address - base
        return ctypes.addressof(self.elsewhere)

    def log_fault(self, bdf: str, iova: int, access: str) -> None:
        """The line intel-iommu (Linux 6.1) logs for a blocked DMA."""
        kind, reason = ("Write", 0x05) if access == "write" else ("Read", 0x06)
        self.log.append(
            f"DMAR: [DMA {kind} NO_PASID] Request device [{bdf[5:]}] fault addr "
            f"{iova & ~(PAGE - 1):#x} [fault reason {reason:#04x}] PTE {kind} access is not set"
        )


# -- the controller side ----------------------------------------------------------------------


class Outcome(NamedTuple):
    """A check's result as the plugin records it."""

    verdict: str  # PASS, FAIL or SKIP
    reason: str
    evidence: Dict[str, Any]


@pytest.fixture(scope="module")
def checks() -> Dict[str, Callable[..., None]]:
    """The ISO checks of conformance/test_isolation.py by ID, imported as the catalogue does
    (not into this module: pytest would collect them here)."""
    module = load_checks("test_isolation.py", "iso_checks")
    found = {
        mark.args[0].id: fn
        for fn in vars(module).values()
        for mark in getattr(fn, "pytestmark", [])
        if mark.name == MARK
    }
    assert set(found) >= ISO_CHECKS
    return found


def _judge(check: Callable[..., None], fixtures: Dict[str, Any]) -> Outcome:
    """Run ``check`` with the fixtures it names; its verdict as the plugin would record it
    (any other exception is the harness's: it propagates)."""
    evidence = Evidence()
    args = {name: fixtures.get(name, evidence) for name in inspect.signature(check).parameters}
    try:
        check(**args)
    except AssertionError as exc:
        return Outcome("FAIL", str(exc), evidence.items)
    except pytest.skip.Exception as exc:
        return Outcome("SKIP", exc.msg, evidence.items)
    return Outcome("PASS", "", evidence.items)


@pytest.fixture(scope="module")
def runs() -> Dict[Tuple[str, str], Dict[str, Outcome]]:
    """What each (engine, platform) gave, so each runs once here."""
    return {}


@pytest.fixture
def run_iso(
    monkeypatch: pytest.MonkeyPatch,
    checks: Dict[str, Callable[..., None]],
    runs: Dict[Tuple[str, str], Dict[str, Outcome]],
) -> Callable[[str, str], Dict[str, Outcome]]:
    """``run_iso(engine, broken)``: every ISO check's outcome on a host whose two devices
    (DUT, PEER, an IOMMU group each) are ``engine``'s, its IOMMU broken as ``broken`` says."""

    def run(engine: str, broken: str) -> Dict[str, Outcome]:
        Machine(engine, broken).install(monkeypatch)
        devices = [DutDevice(HOST, bdf, engine) for bdf in (DUT, PEER)]
        platform = {
            "iommu": {"kind": "intel"},
            "devices": {
                d.bdf: {"iommu_group": group, "driver": "vfio-pci"}
                for group, d in enumerate(devices, start=4)
            },
        }
        host = HostSession(Host(HOST, {}, None, devices), platform, LocalDutChannel(HOST), devices)
        fixtures = {
            "dut_device": DeviceLease(devices[0], host),
            "iommu_backend": engines.DEFAULT_BACKEND,
            "vfio_lab": SimpleNamespace(lease=lambda device: nullcontext(device)),
        }
        return {cid: _judge(check, fixtures) for cid, check in sorted(checks.items())}

    def cached(engine: str, broken: str) -> Dict[str, Outcome]:
        if (engine, broken) not in runs:
            runs[engine, broken] = run(engine, broken)
        return runs[engine, broken]

    return cached


def _shape(items: Dict[str, Any]) -> Dict[str, Any]:
    """Evidence without its values: each item's keys (a dict's, or its entries' for a list)
    or its type."""

    def keys(value: Any) -> Any:
        if isinstance(value, dict):
            return sorted(value)
        if isinstance(value, list):
            return sorted({k for entry in value if isinstance(entry, dict) for k in entry})
        return type(value).__name__

    return {name: keys(value) for name, value in items.items()}


# -- the tests ----------------------------------------------------------------------------------


class WrongReason(AssertionError):
    """The right verdict, but a reason that does not name the broken guarantee."""


#: The platforms.
PLATFORMS = list(EXPECTED_FAILURES)


@pytest.mark.parametrize("broken", PLATFORMS)
@pytest.mark.parametrize("engine", ENGINES)
def test_an_iommu_fails_exactly_the_checks_of_what_it_breaks_through_any_engine(
    run_iso: Callable[[str, str], Dict[str, Outcome]], engine: str, broken: str
) -> None:
    outcomes = run_iso(engine, broken)

    expected = EXPECTED_FAILURES[broken]
    verdicts = {cid: o.verdict for cid, o in outcomes.items()}
    assert verdicts == {cid: "FAIL" if cid in expected else "PASS" for cid in outcomes}, {
        cid: o.reason for cid, o in outcomes.items() if o.reason
    }
    assert {o.evidence["engine"] for o in outcomes.values()} == {engine}
    for cid, guarantee in expected.items():
        reason = outcomes[cid].reason
        assert reason.startswith(f"{DUT}: "), f"{cid} does not name the device: {reason}"
        if guarantee not in reason:
            raise WrongReason(f"{cid}: {reason!r} does not say {guarantee!r}")


@pytest.mark.parametrize("broken", list(EXPECTED_FAILURES))
def test_each_check_keeps_one_evidence_shape_whatever_the_engine(
    run_iso: Callable[[str, str], Dict[str, Outcome]], broken: str
) -> None:
    edu_run, nvme_run = (run_iso(engine, broken) for engine in ENGINES)

    assert {c: o.verdict for c, o in edu_run.items()} == {c: o.verdict for c, o in nvme_run.items()}
    assert {c: _shape(o.evidence) for c, o in edu_run.items()} == {
        c: _shape(o.evidence) for c, o in nvme_run.items()
    }
    # Every check kept what the DUT did: its transfers and its mapping ioctls.
    for outcome in (*edu_run.values(), *nvme_run.values()):
        assert outcome.evidence["transfers"] and outcome.evidence["ioctls"], outcome
