"""The device under test on the kernel's own nvme driver, measured with fio: the native side
of the near-native ratio (userspace VFIO IOPS / kernel IOPS, same device, same workload).

:func:`fio_run` takes an NVMe controller the run bound to vfio-pci, moves it to the ``nvme``
driver, waits for its first namespace's block device, reads it with fio (``--readonly``,
``--direct=1``; nothing is ever written) and gives it back to vfio-pci with the
driver_override it had, whatever happened. What cannot be measured on this DUT (no fio, no
nvme driver, no namespace, neither io_uring nor libaio) is an answer, not an error:
``available`` is False, ``why_not`` names the reason and ``why_not_kind`` its kind, as the
check SKIPs with it (``vfio_hil.lab.report.SKIP_KINDS``).

fio's latency is total latency (``lat_ns``: submission to completion, ``--lat_percentiles=1``
makes the percentiles of it), as the userspace engine measures it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core import sysfs
from .ownership import bind, loaded_module, restored_binding

NVME_DRIVER = "nvme"
FIO_PACKAGE = "fio"
#: Tried in order: io_uring, and libaio where the kernel refuses io_uring (not built in,
#: ``kernel.io_uring_disabled``, a seccomp filter).
IOENGINES = ("io_uring", "libaio")
#: Read-only workloads only: this module never writes to the device.
WORKLOADS = ("randread", "read")
PERCENTILES = ("50", "90", "99", "99.9", "99.99")
#: How long the nvme driver may take to show a namespace (a TCG guest probes slowly).
NAMESPACE_TIMEOUT_S = 30.0
#: fio's start-up and tear-down on top of warm-up and measurement.
FIO_SLACK_S = 60.0
_POLL_S = 0.1
_TAIL_CHARS = 1500


class KernelIoError(RuntimeError):
    """A step of the kernel-driver measurement failed on ``bdf``; the message names the step,
    the device and what went wrong (for fio: its command line and the tail of its output)."""

    def __init__(self, step: str, bdf: str, detail: str) -> None:
        super().__init__(f"{step} on {bdf}: {detail}")
        self.step = step
        self.bdf = bdf


@dataclass(frozen=True)
class FioMeasurement:
    """What fio measured for one read job. Latencies are total latency in nanoseconds;
    ``lat_percentiles_ns`` is keyed ``p50``, ``p90``, ``p99``, ``p99.9``, ``p99.99``."""

    ios: int
    iops: float
    bw_mib_s: float
    lat_mean_ns: float
    lat_min_ns: int
    lat_max_ns: int
    lat_percentiles_ns: Dict[str, int]
    #: User plus system CPU time of the fio job per completed I/O.
    cpu_ns_per_io: float
    runtime_s: float


@dataclass
class KernelIoResult:
    """One :func:`fio_run`: the workload asked for, whether it could run (``why_not`` and its
    SKIP kind ``why_not_kind`` when not), what ran it and, when it ran, the ``measurement``."""

    bdf: str
    rw: str
    block_size: int
    queue_depth: int
    seconds: float
    warmup_s: float
    available: bool = False
    why_not: Optional[str] = None
    why_not_kind: Optional[str] = None
    driver: Optional[str] = None
    block_device: Optional[str] = None
    fio_version: Optional[str] = None
    ioengine: Optional[str] = None
    #: Why an ioengine tried before ``ioengine`` was refused, by engine (fio's words).
    refused_ioengines: Dict[str, str] = field(default_factory=dict)
    command: List[str] = field(default_factory=list)
    measurement: Optional[FioMeasurement] = None


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def check_workload(
    rw: str, block_size: int, queue_depth: int, seconds: float, warmup_s: float
) -> None:
    """Raise ValueError for a workload :func:`fio_run` does not run (a write among them)."""
    if rw not in WORKLOADS:
        raise ValueError(f"rw must be one of {', '.join(WORKLOADS)} (read-only), not {rw!r}")
    if block_size <= 0 or block_size % 512:
        raise ValueError(f"block_size must be a positive multiple of 512, not {block_size}")
    if queue_depth < 1:
        raise ValueError(f"queue_depth must be at least 1, not {queue_depth}")
    if seconds <= 0 or warmup_s < 0:
        raise ValueError(f"seconds must be > 0 and warmup_s >= 0, not {seconds} and {warmup_s}")


def fio_command(
    fio: str,
    device: str,
    rw: str,
    block_size: int,
    queue_depth: int,
    seconds: float,
    warmup_s: float,
    ioengine: str,
) -> List[str]:
    """The fio command line reading ``device`` read-only and unbuffered: one job, time-based,
    ``warmup_s`` of ramp excluded from the figures, JSON output with total-latency
    percentiles. Random reads are uniform over the whole device and not repeatable across
    runs (no random map: every offset may come any time)."""
    check_workload(rw, block_size, queue_depth, seconds, warmup_s)
    command = [
        fio,
        "--name=kernel-io",
        f"--filename={device}",
        "--readonly",
        "--direct=1",
        f"--rw={rw}",
        f"--bs={block_size}",
        f"--iodepth={queue_depth}",
        f"--ioengine={ioengine}",
        "--numjobs=1",
        "--time_based",
        f"--runtime={round(seconds * 1000)}ms",
        f"--ramp_time={round(warmup_s * 1000)}ms",
        "--lat_percentiles=1",
        f"--percentile_list={':'.join(PERCENTILES)}",
        "--output-format=json",
    ]
    if rw == "randread":
        command += ["--random_distribution=random", "--norandommap", "--randrepeat=0"]
    return command


def _json_document(output: str) -> Dict[str, Any]:
    """fio's JSON report; fio prints its errors on stdout before it."""
    start = re.search(r"^\{", output, re.MULTILINE)
    if start is None:
        raise ValueError(f"no JSON document in fio's output: {_tail(output)!r}")
    document, _ = json.JSONDecoder().raw_decode(output, start.start())
    return document


def parse_fio_json(output: str) -> FioMeasurement:
    """The measurement of the single read job in fio's ``--output-format=json`` output.

    Raises ValueError, naming what is missing, for a report that is not of one read job run
    with ``--lat_percentiles=1``, for a job fio says failed, and for a job that completed no
    read.
    """
    jobs = _json_document(output).get("jobs", [])
    if len(jobs) != 1:
        raise ValueError(f"fio reported {len(jobs)} jobs, expected 1")
    job = jobs[0]
    if job.get("error"):
        raise ValueError(f"fio job {job.get('jobname')!r} failed with error {job['error']}")
    try:
        read = job["read"]
        ios = int(read["total_ios"])
        if ios == 0:
            raise ValueError("fio completed no read in the measured time")
        lat = read["lat_ns"]
        percentiles = {f"p{float(k):g}": int(v) for k, v in lat["percentile"].items()}
        cpu_fraction = (job["usr_cpu"] + job["sys_cpu"]) / 100.0
        return FioMeasurement(
            ios=ios,
            iops=float(read["iops"]),
            bw_mib_s=read["bw_bytes"] / 2**20,
            lat_mean_ns=float(lat["mean"]),
            lat_min_ns=int(lat["min"]),
            lat_max_ns=int(lat["max"]),
            lat_percentiles_ns={f"p{p}": percentiles[f"p{p}"] for p in PERCENTILES},
            # fio's CPU percentages are of the job's runtime (stat.c: usr_time / runtime).
            cpu_ns_per_io=cpu_fraction * job["job_runtime"] * 1e6 / ios,
            runtime_s=read["runtime"] / 1000.0,
        )
    except KeyError as exc:
        raise ValueError(
            f"fio's JSON lacks {exc} (a read job run with --lat_percentiles=1 "
            f"--percentile_list={':'.join(PERCENTILES)} has it)"
        ) from exc


def ioengine_refused(ioengine: str, output: str) -> bool:
    """Whether fio's ``output`` says ``ioengine`` itself could not start (its queue setup
    refused: ``file:engines/io_uring.c:998, func=io_queue_init, error=Operation not
    permitted``, or the engine is not loadable), as opposed to the I/O failing."""
    engine = re.escape(ioengine)
    pattern = rf"file:engines/{engine}\.c:\d+, func=io_queue_init|engine {engine} not loadable"
    return re.search(pattern, output) is not None


def _fio_messages(output: str) -> str:
    """fio's own messages (``fio: ...`` lines; on stdout, before its JSON report)."""
    lines = [line for line in output.splitlines() if line.startswith("fio: ")]
    return "\n".join(lines) if lines else _tail(output)


def _namespace_disk(entry: str) -> Optional[Tuple[int, str]]:
    """(namespace instance, block device name) of a controller's sysfs entry naming a
    namespace, None for any other entry. ``nvme0n1`` is the block device itself; with native
    multipath the controller holds a hidden path ``nvme<S>c<C>n<H>`` of the head disk
    ``nvme<S>n<H>`` (subsystem S, controller C, head H: drivers/nvme/host/multipath.c
    nvme_set_disk_name())."""
    match = re.fullmatch(r"nvme(\d+)(?:c\d+)?n(\d+)", entry)
    if match is None:
        return None
    return int(match.group(2)), f"nvme{match.group(1)}n{match.group(2)}"


def namespace_block_device(bdf: str, root: str = "/") -> Optional[str]:
    """The block device (``/dev/nvme0n1``) of the lowest-numbered namespace of ``bdf``'s
    NVMe controller that has a capacity and a device node, None while there is none.

    Found from the controller's sysfs directory (``<device>/nvme/nvmeN``), where a namespace
    is its block device ``nvmeSnH`` or, with native multipath, a path ``nvmeScCnH`` of it.
    """
    disks = set()
    for controller in glob.glob(os.path.join(sysfs.device_path(bdf, root), "nvme", "nvme*")):
        for entry in os.listdir(controller):
            disk = _namespace_disk(entry)
            if disk is not None:
                disks.add(disk)
    for _instance, name in sorted(disks):
        node = os.path.join(root, "dev", name)
        if _capacity(os.path.join(root, "sys/class/block", name)) and os.path.exists(node):
            return node
    return None


def _capacity(block_dir: str) -> int:
    try:
        with open(os.path.join(block_dir, "size")) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def wait_for_namespace(bdf: str, timeout_s: float, root: str = "/") -> Optional[str]:
    """:func:`namespace_block_device` once it appears, None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        device = namespace_block_device(bdf, root)
        if device is not None or time.monotonic() >= deadline:
            return device
        time.sleep(_POLL_S)


def _fio_version(fio: str, bdf: str) -> str:
    """``fio --version`` (``fio-3.33``)."""
    proc = subprocess.run([fio, "--version"], capture_output=True, text=True, timeout=FIO_SLACK_S)
    if proc.returncode != 0:
        raise KernelIoError(f"{fio} --version", bdf, _tail(proc.stderr + proc.stdout))
    return proc.stdout.strip()


def _measure(fio: str, result: KernelIoResult) -> None:
    """Run fio on ``result.block_device`` with the first ioengine the kernel accepts and fill
    in ``result``; ``why_not`` when the kernel accepts none."""
    assert result.block_device is not None
    timeout_s = result.seconds + result.warmup_s + FIO_SLACK_S
    for ioengine in IOENGINES:
        result.command = fio_command(
            fio,
            result.block_device,
            result.rw,
            result.block_size,
            result.queue_depth,
            result.seconds,
            result.warmup_s,
            ioengine,
        )
        try:
            proc = subprocess.run(result.command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise KernelIoError(
                "fio", result.bdf, f"{' '.join(result.command)} still running after {timeout_s:g} s"
            ) from exc
        output = proc.stdout + proc.stderr
        if proc.returncode == 0:
            try:
                result.measurement = parse_fio_json(proc.stdout)
            except ValueError as exc:
                raise KernelIoError(
                    "fio report", result.bdf, f"{exc}; {' '.join(result.command)}: {_tail(output)}"
                ) from exc
            result.ioengine, result.available = ioengine, True
            return
        if not ioengine_refused(ioengine, output):
            raise KernelIoError(
                "fio",
                result.bdf,
                f"{' '.join(result.command)} exited {proc.returncode}: {_tail(output)}",
            )
        result.refused_ioengines[ioengine] = _fio_messages(output)
    result.why_not_kind = "kernel"
    result.why_not = "io_uring and libaio both unavailable: " + "; ".join(
        f"{engine}: {why}" for engine, why in result.refused_ioengines.items()
    )


def fio_run(
    bdf: str,
    rw: str = "randread",
    block_size: int = 4096,
    queue_depth: int = 32,
    seconds: float = 2.0,
    warmup_s: float = 0.5,
    namespace_timeout_s: float = NAMESPACE_TIMEOUT_S,
) -> Dict[str, Any]:
    """Measure ``bdf``, an NVMe controller bound to vfio-pci, on the kernel's nvme driver with
    fio: ``rw`` (``randread`` or ``read``) of ``block_size`` bytes at ``queue_depth`` for
    ``seconds`` after ``warmup_s`` of warm-up, read-only, on its first namespace.

    Returns ``dataclasses.asdict`` of a :class:`KernelIoResult` (see :func:`fio_runs`)."""
    (result,) = fio_runs(
        bdf, [(rw, block_size, queue_depth)], seconds, warmup_s, namespace_timeout_s
    )
    return result


def fio_runs(
    bdf: str,
    workloads: Sequence[Tuple[str, int, int]],
    seconds: float = 2.0,
    warmup_s: float = 0.5,
    namespace_timeout_s: float = NAMESPACE_TIMEOUT_S,
) -> List[Dict[str, Any]]:
    """:func:`fio_run` for each ``(rw, block_size, queue_depth)`` of ``workloads``, one after
    the other on one binding of the nvme driver (a rebind costs seconds on a slow host).

    Returns ``dataclasses.asdict`` of a :class:`KernelIoResult` per workload. The device
    goes back to the driver and driver_override it had (vfio-pci) whatever happens, and the
    nvme module is unloaded again if this call loaded it. Raises ValueError for a workload it
    does not run and :class:`KernelIoError` when a step fails (fio failing on the device, the
    device not going back to its driver).
    """
    bdf = sysfs.normalize_bdf(bdf)
    for rw, block_size, queue_depth in workloads:
        check_workload(rw, block_size, queue_depth, seconds, warmup_s)
    results = [KernelIoResult(bdf, *w, seconds, warmup_s) for w in workloads]
    fio = shutil.which("fio")
    if fio is None:
        return _unavailable(
            results, "lab", f"fio is not installed on the DUT: install Debian package {FIO_PACKAGE}"
        )
    version = _fio_version(fio, bdf)
    for result in results:
        result.fio_version = version
    driver_before = sysfs.driver(bdf)
    with loaded_module(NVME_DRIVER) as missing:
        if missing:
            return _unavailable(results, "kernel", f"the nvme driver is not available: {missing}")
        with restored_binding(bdf):
            _measure_on_nvme(fio, results, namespace_timeout_s)
    driver_after = sysfs.driver(bdf)
    if driver_after != driver_before:
        raise KernelIoError(
            "restore binding", bdf, f"was on {driver_before}, left on {driver_after or 'no driver'}"
        )
    return [asdict(r) for r in results]


def _unavailable(results: List[KernelIoResult], kind: str, why: str) -> List[Dict[str, Any]]:
    for result in results:
        result.why_not_kind, result.why_not = kind, why
    return [asdict(r) for r in results]


def _measure_on_nvme(fio: str, results: List[KernelIoResult], namespace_timeout_s: float) -> None:
    """Bind the device to nvme, wait for its namespace and measure each result's workload;
    ``why_not`` when one of those cannot be done. The caller restores the binding."""
    bdf = results[0].bdf
    driver = bind(bdf, NVME_DRIVER)
    block_device = wait_for_namespace(bdf, namespace_timeout_s) if driver == NVME_DRIVER else None
    for result in results:
        result.driver, result.block_device = driver, block_device
        if driver != NVME_DRIVER:
            result.why_not_kind = "kernel"
            result.why_not = f"the nvme driver did not bind {bdf} (left on {driver or 'no driver'})"
        elif block_device is None:
            result.why_not_kind = "capability"
            result.why_not = (
                f"no namespace block device of {bdf} appeared within "
                f"{namespace_timeout_s:g} s on the nvme driver"
            )
        else:
            _measure(fio, result)
