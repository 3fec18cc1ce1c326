"""vfio_hil.dut.kernel_io without a device: fio's JSON report parsed from genuine fio 3.33
output (data/, captured by running fio on a file), the command lines, the namespace found on
a fake sysfs tree, and every path where the kernel-driver measurement cannot run, with the
device's binding faked at the module's boundary (ownership's bind and restore)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pytest

from vfio_hil.dut import kernel_io

DATA = Path(__file__).parent / "data"
RANDREAD = (DATA / "fio-randread-4k-qd32-io_uring.json").read_text()
SEQREAD = (DATA / "fio-read-128k-qd8-io_uring.json").read_text()
#: fio's stdout when the kernel refuses the engine's queue (seccomp returning EPERM for
#: io_uring_setup, then also for io_setup): its error line, then a report of a failed job.
IO_URING_REFUSED = (DATA / "fio-io_uring-refused.stdout").read_text()
LIBAIO_REFUSED = (DATA / "fio-libaio-refused.stdout").read_text()
BDF = "0000:00:06.0"
FIO = "/usr/bin/fio"


# -- fio's JSON report ------------------------------------------------------------------


def test_parse_randread_report() -> None:
    m = kernel_io.parse_fio_json(RANDREAD)

    assert m.ios == 112225
    assert m.iops == pytest.approx(112112.887113)
    assert m.bw_mib_s == pytest.approx(459214385 / 2**20)
    assert (m.lat_min_ns, m.lat_max_ns) == (36874, 31104755)
    assert m.lat_mean_ns == pytest.approx(284308.759492)
    assert m.lat_percentiles_ns == {
        "p50": 242688,
        "p90": 350208,
        "p99": 733184,
        "p99.9": 1499136,
        "p99.99": 30539776,
    }
    # usr 5.9 % + sys 28.4 % of a 1000 ms job over 112225 reads.
    assert m.cpu_ns_per_io == pytest.approx(0.343 * 1000e6 / 112225)
    assert m.runtime_s == pytest.approx(1.001)


def test_parse_takes_total_latency_not_completion_latency() -> None:
    report = json.loads(RANDREAD)
    read = report["jobs"][0]["read"]
    read["clat_ns"]["percentile"] = {k: 1 for k in read["clat_ns"]["percentile"]}
    read["clat_ns"].update(min=1, max=1, mean=1.0)

    m = kernel_io.parse_fio_json(json.dumps(report))

    assert m.lat_min_ns == 36874 and m.lat_percentiles_ns["p50"] == 242688


def test_parse_sequential_read_bandwidth() -> None:
    m = kernel_io.parse_fio_json(SEQREAD)

    assert m.ios == 8733
    assert m.bw_mib_s == pytest.approx(1091.4085912704468)
    assert m.lat_percentiles_ns["p99.99"] == 3850240


def test_parse_skips_fio_messages_before_the_report() -> None:
    noisy = "fio: some note about the job\n" + RANDREAD

    assert kernel_io.parse_fio_json(noisy) == kernel_io.parse_fio_json(RANDREAD)


def test_parse_refuses_a_failed_job() -> None:
    with pytest.raises(ValueError, match="'kernel-io' failed with error 1"):
        kernel_io.parse_fio_json(IO_URING_REFUSED)


def test_parse_names_missing_percentiles() -> None:
    report = json.loads(RANDREAD)
    del report["jobs"][0]["read"]["lat_ns"]["percentile"]

    with pytest.raises(ValueError, match=r"lacks 'percentile'.*--lat_percentiles=1"):
        kernel_io.parse_fio_json(json.dumps(report))


def test_parse_refuses_a_job_without_reads() -> None:
    report = json.loads(RANDREAD)
    report["jobs"][0]["read"]["total_ios"] = 0

    with pytest.raises(ValueError, match="no read"):
        kernel_io.parse_fio_json(json.dumps(report))


def test_parse_refuses_output_without_a_report() -> None:
    with pytest.raises(ValueError, match=r"no JSON document.*oops"):
        kernel_io.parse_fio_json("fio: oops\n")


# -- the command line -------------------------------------------------------------------


def test_randread_command() -> None:
    assert kernel_io.fio_command(
        FIO, "/dev/nvme0n1", "randread", 4096, 32, 2.0, 0.5, "io_uring"
    ) == [
        FIO,
        "--name=kernel-io",
        "--filename=/dev/nvme0n1",
        "--readonly",
        "--direct=1",
        "--rw=randread",
        "--bs=4096",
        "--iodepth=32",
        "--ioengine=io_uring",
        "--numjobs=1",
        "--time_based",
        "--runtime=2000ms",
        "--ramp_time=500ms",
        "--lat_percentiles=1",
        "--percentile_list=50:90:99:99.9:99.99",
        "--output-format=json",
        "--random_distribution=random",
        "--norandommap",
        "--randrepeat=0",
    ]


def test_sequential_read_command() -> None:
    command = kernel_io.fio_command(FIO, "/dev/nvme0n1", "read", 131072, 8, 1.25, 0, "libaio")

    assert {"--rw=read", "--bs=131072", "--iodepth=8", "--ioengine=libaio"} <= set(command)
    assert {"--readonly", "--direct=1", "--runtime=1250ms", "--ramp_time=0ms"} <= set(command)
    assert not [arg for arg in command if "random" in arg]


@pytest.mark.parametrize("rw", ["write", "randwrite", "rw", "randrw", "trim"])
def test_no_command_that_could_write(rw: str) -> None:
    with pytest.raises(ValueError, match="read-only"):
        kernel_io.fio_command(FIO, "/dev/nvme0n1", rw, 4096, 1, 1.0, 0.0, "io_uring")


@pytest.mark.parametrize(
    ("block_size", "queue_depth", "seconds", "warmup_s"),
    [
        (0, 1, 1.0, 0.0),
        (1000, 1, 1.0, 0.0),
        (4096, 0, 1.0, 0.0),
        (4096, 1, 0, 0.0),
        (4096, 1, 1, -1),
    ],
)
def test_workload_bounds(
    block_size: int, queue_depth: int, seconds: float, warmup_s: float
) -> None:
    with pytest.raises(ValueError):
        kernel_io.check_workload("randread", block_size, queue_depth, seconds, warmup_s)


def test_ioengine_refusal_from_genuine_fio_output() -> None:
    assert kernel_io.ioengine_refused("io_uring", IO_URING_REFUSED)
    assert not kernel_io.ioengine_refused("libaio", IO_URING_REFUSED)
    assert kernel_io.ioengine_refused("libaio", LIBAIO_REFUSED)
    assert kernel_io.ioengine_refused("io_uring", "fio: engine io_uring not loadable\n")
    assert not kernel_io.ioengine_refused("io_uring", RANDREAD)


# -- the namespace's block device -------------------------------------------------------


def _namespace(root: Path, block: str, size: int = 2097152, node: bool = True) -> None:
    (root / "sys/class/block" / block).mkdir(parents=True)
    (root / "sys/class/block" / block / "size").write_text(f"{size}\n")
    if node:
        (root / "dev").mkdir(exist_ok=True)
        (root / "dev" / block).touch()


def _controller(root: Path, *entries: str) -> None:
    ctrl = root / "sys/bus/pci/devices" / BDF / "nvme/nvme0"
    ctrl.mkdir(parents=True)
    for entry in ("device", "subsysnqn", "ng0n1", *entries):
        (ctrl / entry).mkdir()


def test_namespace_without_multipath(tmp_path: Path) -> None:
    _controller(tmp_path, "nvme0n2", "nvme0n1")
    _namespace(tmp_path, "nvme0n1")
    _namespace(tmp_path, "nvme0n2")

    assert kernel_io.namespace_block_device(BDF, str(tmp_path)) == str(tmp_path / "dev/nvme0n1")


def test_namespace_through_its_multipath_path(tmp_path: Path) -> None:
    # Subsystem 1, controller 0, head 2: the path nvme1c0n2 of the disk nvme1n2.
    _controller(tmp_path, "nvme1c0n2")
    _namespace(tmp_path, "nvme1n2")
    _namespace(tmp_path, "nvme0n2")

    assert kernel_io.namespace_block_device(BDF, str(tmp_path)) == str(tmp_path / "dev/nvme1n2")


@pytest.mark.parametrize(
    "layout", ["no controller", "no namespace", "empty namespace", "no node", "no head"]
)
def test_no_namespace_yet(tmp_path: Path, layout: str) -> None:
    (tmp_path / "sys/bus/pci/devices" / BDF).mkdir(parents=True)
    if layout == "no namespace":
        _controller(tmp_path)
    elif layout == "empty namespace":
        _controller(tmp_path, "nvme0n1")
        _namespace(tmp_path, "nvme0n1", size=0)
    elif layout == "no node":
        _controller(tmp_path, "nvme0n1")
        _namespace(tmp_path, "nvme0n1", node=False)
    elif layout == "no head":
        _controller(tmp_path, "nvme1c0n1")
        _namespace(tmp_path, "nvme0n1")

    assert kernel_io.namespace_block_device(BDF, str(tmp_path)) is None
    assert kernel_io.wait_for_namespace(BDF, 0.2, str(tmp_path)) is None


# -- fio_run: the paths where it cannot run, and the device always going back -----------


class FakeHost:
    """The DUT as fio_run sees it: the device's driver, ownership's bind / restore and
    loaded_module, and fio's processes answering by ioengine."""

    def __init__(self) -> None:
        self.driver: Optional[str] = "vfio-pci"
        self.probes = {"nvme"}
        self.module_missing: Optional[str] = None
        self.restores = True
        self.namespace: Optional[str] = "/dev/nvme0n1"
        self.fio: dict[str, tuple[int, str]] = {"io_uring": (0, RANDREAD)}
        self.events: list[str] = []

    def bind(self, bdf: str, driver: Optional[str]) -> Optional[str]:
        self.events.append(f"bind {driver}")
        self.driver = driver if driver in self.probes else None
        return self.driver

    @contextmanager
    def restored_binding(self, bdf: str) -> Iterator[None]:
        before = self.driver
        try:
            yield
        finally:
            self.events.append("restore")
            if self.restores:
                self.driver = before

    @contextmanager
    def loaded_module(self, name: str) -> Iterator[Optional[str]]:
        yield self.module_missing

    def run(self, argv: list[str], **_: Any) -> subprocess.CompletedProcess:
        if argv[1:] == ["--version"]:
            return subprocess.CompletedProcess(argv, 0, "fio-3.33\n", "")
        engine = next(a.split("=", 1)[1] for a in argv if a.startswith("--ioengine="))
        self.events.append(f"fio {engine}")
        returncode, stdout = self.fio.get(engine, (1, "fio: pid=1, err=5/file:io_u.c:1, EIO\n"))
        return subprocess.CompletedProcess(argv, returncode, stdout, "")


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost()
    monkeypatch.setattr(kernel_io.shutil, "which", lambda name: FIO if name == "fio" else None)
    monkeypatch.setattr(kernel_io.subprocess, "run", fake.run)
    monkeypatch.setattr(kernel_io, "bind", fake.bind)
    monkeypatch.setattr(kernel_io, "restored_binding", fake.restored_binding)
    monkeypatch.setattr(kernel_io, "loaded_module", fake.loaded_module)
    monkeypatch.setattr(kernel_io.sysfs, "driver", lambda bdf: fake.driver)
    monkeypatch.setattr(kernel_io, "wait_for_namespace", lambda bdf, timeout_s: fake.namespace)
    return fake


def test_a_run(host: FakeHost) -> None:
    result = kernel_io.fio_run(BDF, seconds=1.0)

    assert result["available"] and result["why_not"] is None and result["why_not_kind"] is None
    assert (result["driver"], result["block_device"]) == ("nvme", "/dev/nvme0n1")
    assert (result["fio_version"], result["ioengine"]) == ("fio-3.33", "io_uring")
    assert result["command"][:3] == [FIO, "--name=kernel-io", "--filename=/dev/nvme0n1"]
    assert result["measurement"]["iops"] == pytest.approx(112112.887113)
    assert result["measurement"]["lat_percentiles_ns"]["p99.9"] == 1499136
    assert host.events == ["bind nvme", "fio io_uring", "restore"]
    assert host.driver == "vfio-pci"


def test_several_workloads_on_one_binding(host: FakeHost) -> None:
    results = kernel_io.fio_runs(BDF, [("randread", 4096, 1), ("randread", 4096, 32)], 1.0, 0.1)

    assert [(r["queue_depth"], r["available"]) for r in results] == [(1, True), (32, True)]
    assert host.events == ["bind nvme", "fio io_uring", "fio io_uring", "restore"]
    assert any("--iodepth=1" in a for a in results[0]["command"])
    assert any("--iodepth=32" in a for a in results[1]["command"])


def test_fio_not_installed(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_io.shutil, "which", lambda name: None)

    result = kernel_io.fio_run(BDF)

    assert not result["available"]
    assert result["why_not"] == "fio is not installed on the DUT: install Debian package fio"
    assert result["why_not_kind"] == "lab"
    assert host.events == []


def test_nvme_driver_missing(host: FakeHost) -> None:
    host.module_missing = "modprobe nvme failed: Module nvme not found"

    result = kernel_io.fio_run(BDF)

    assert result["why_not"] == (
        "the nvme driver is not available: modprobe nvme failed: Module nvme not found"
    )
    assert result["why_not_kind"] == "kernel"
    assert host.events == [] and result["fio_version"] == "fio-3.33"


def test_nvme_driver_refuses_the_device(host: FakeHost) -> None:
    host.probes = {"vfio-pci"}

    result = kernel_io.fio_run(BDF)

    assert result["why_not"] == f"the nvme driver did not bind {BDF} (left on no driver)"
    assert result["why_not_kind"] == "kernel"
    assert host.events == ["bind nvme", "restore"] and host.driver == "vfio-pci"


def test_no_namespace(host: FakeHost) -> None:
    host.namespace = None

    result = kernel_io.fio_run(BDF, namespace_timeout_s=7)

    assert result["why_not"] == (
        f"no namespace block device of {BDF} appeared within 7 s on the nvme driver"
    )
    assert result["why_not_kind"] == "capability"
    assert host.events == ["bind nvme", "restore"]


def test_libaio_where_io_uring_is_refused(host: FakeHost) -> None:
    host.fio = {"io_uring": (1, IO_URING_REFUSED), "libaio": (0, RANDREAD)}

    result = kernel_io.fio_run(BDF)

    assert result["available"] and result["ioengine"] == "libaio"
    assert "--ioengine=libaio" in result["command"]
    assert result["refused_ioengines"] == {
        "io_uring": "fio: pid=2959, err=1/file:engines/io_uring.c:998, func=io_queue_init, "
        "error=Operation not permitted"
    }


def test_both_ioengines_refused(host: FakeHost) -> None:
    host.fio = {"io_uring": (1, IO_URING_REFUSED), "libaio": (1, LIBAIO_REFUSED)}

    result = kernel_io.fio_run(BDF)

    assert not result["available"] and result["measurement"] is None
    assert result["why_not"].startswith("io_uring and libaio both unavailable: io_uring: fio:")
    assert "engines/libaio.c:485, func=io_queue_init" in result["why_not"]
    assert result["why_not_kind"] == "kernel"
    assert host.driver == "vfio-pci"


def test_fio_failing_on_the_device_is_an_error_with_context(host: FakeHost) -> None:
    host.fio = {}

    with pytest.raises(
        kernel_io.KernelIoError,
        match=rf"^fio on {BDF}: .*--ioengine=io_uring.* "
        r"exited 1: fio: pid=1, err=5/file:io_u.c:1, EIO$",
    ):
        kernel_io.fio_run(BDF)

    assert host.events[-1] == "restore" and host.driver == "vfio-pci"


def test_a_device_not_given_back_is_an_error(host: FakeHost) -> None:
    host.restores = False

    with pytest.raises(
        kernel_io.KernelIoError, match=f"restore binding on {BDF}: was on vfio-pci, left on nvme"
    ):
        kernel_io.fio_run(BDF)


def test_write_workloads_are_refused_before_anything_is_touched(host: FakeHost) -> None:
    with pytest.raises(ValueError, match="read-only"):
        kernel_io.fio_run(BDF, rw="randwrite")

    assert host.events == []
