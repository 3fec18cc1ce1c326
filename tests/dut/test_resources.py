"""Resource safety: after 1000 open/close cycles of a device, with everything the library
can hang off it, the process holds no extra file descriptors or memory mappings."""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from typing import List

from vfio_hil.core import DmaBuffer, open_iommu, uapi
from vfio_hil.core.drivers.edu import REG_LIVENESS, Edu

CYCLES = 1000


def _fds() -> List[str]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        # The fd listdir itself used is gone by now.
        with contextlib.suppress(FileNotFoundError):
            fds.append(f"{name} -> {os.readlink(f'/proc/self/fd/{name}')}")
    return sorted(fds)


def _maps() -> List[str]:
    with open("/proc/self/maps") as f:
        return f.read().splitlines()


def _mapped_path(line: str) -> str:
    """The pathname column of a /proc/self/maps line ("" for anonymous memory)."""
    fields = line.split(None, 5)
    return fields[5] if len(fields) == 6 else ""


def library_mapping(line: str) -> bool:
    """True for a mapping the library makes: a device region (the device fd is an anonymous
    inode ``[vfio-device]``, or a cdev under /dev/vfio) or a memfd DMA buffer. Judged by the
    mapped object, not by the path of whatever file is mapped: the clone itself usually lives
    in a folder named ``vfio-hil``, and so do the venv's shared objects."""
    path = _mapped_path(line)
    return path.startswith(("/dev/vfio/", "anon_inode:[vfio", "/memfd:"))


def _cycle(bdf: str) -> None:
    with open_iommu() as iommu:
        device = iommu.open_device(bdf)
        with (
            Edu(device) as edu,
            DmaBuffer(4096) as anon,
            DmaBuffer(4096, backing="memfd") as memfd,
            iommu.map_buffer(anon),
            iommu.map_buffer(memfd),
            device.irq_eventfds(uapi.VFIO_PCI_MSI_IRQ_INDEX),
            device.ioeventfd(0, REG_LIVENESS, 4, 0),
        ):
            assert edu.id() == 0x010000ED
        # Left open on purpose: closing the backend must release these too.
        device.map_bar(0)
        device.irq_eventfds(uapi.VFIO_PCI_INTX_IRQ_INDEX)


def test_no_fd_or_mapping_survives_1000_cycles(edu_bdf: str) -> None:
    _cycle(edu_bdf)  # warm-up: lazy imports and caches allocate once
    gc.collect()
    fds, maps = _fds(), _maps()
    with warnings.catch_warnings(record=True) as caught:
        # A handle the garbage collector had to close was not closed by its owner.
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(CYCLES):
            _cycle(edu_bdf)
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, f"left to the garbage collector: {unclosed[:5]}"
    after_fds, after_maps = _fds(), _maps()
    assert after_fds == fds, f"fds opened and not closed: {set(after_fds) - set(fds)}"
    ours = [m for m in after_maps if library_mapping(m)]
    assert not ours, f"mappings of the library left behind: {ours}"
    assert len(after_maps) == len(maps), (
        f"{len(after_maps) - len(maps)} more mappings: {set(after_maps) - set(maps)}"
    )
