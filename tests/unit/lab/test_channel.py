"""The DUT agent's dispatch: results, VFIO errors marked as findings, and the ioctl transcript
every call carries back as evidence."""

from __future__ import annotations

import importlib
import os
import types
from typing import Any

import pytest

from vfio_hil.core import VfioError, uapi
from vfio_hil.dut import agent
from vfio_hil.lab.channel import DutVfioError, LocalDutChannel, _raise_remote
from vfio_hil.lab.errors import ChannelError


def fake_dut(**functions: Any):  # type: ignore[no-untyped-def]
    module = types.SimpleNamespace(**functions)

    def importer(name: str) -> Any:
        return module if name == "vfio_hil.dut.fake" else importlib.import_module(name)

    return importer


def poke_null() -> int:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        return uapi.ioctl_raw(fd, "VFIO_GET_API_VERSION")
    finally:
        os.close(fd)


def test_result_and_ioctl_transcript() -> None:
    reply = agent.dispatch(fake_dut(poke=poke_null), "fake.poke", {})
    assert reply["result"] == -25  # ENOTTY: /dev/null is no VFIO container
    assert reply["ioctls"] == [
        {"ioctl": "VFIO_GET_API_VERSION", "fd": reply["ioctls"][0]["fd"], "result": "ENOTTY"}
    ]
    assert uapi._transcript is None  # recording stops after the call


def test_vfio_error_is_marked_as_a_finding() -> None:
    def refuse() -> None:
        raise VfioError(1, "VFIO_SET_IOMMU", "container")

    reply = agent.dispatch(fake_dut(refuse=refuse), "fake.refuse", {})
    assert reply["error"]["vfio"] is True
    assert (reply["error"]["errno"], reply["error"]["ioctl"]) == (1, "VFIO_SET_IOMMU")


def test_local_channel_raises_like_a_remote_one() -> None:
    channel = LocalDutChannel("here")
    with pytest.raises(ChannelError, match=r"evidence\.nothing on here raised AttributeError"):
        channel.call("evidence.nothing")
    # A refusal of the kernel arrives as a finding, with its errno and ioctl.
    with pytest.raises(DutVfioError) as err:
        _raise_remote("here", "x", {"vfio": True, "errno": 1, "ioctl": "VFIO_SET_IOMMU"})
    assert (err.value.errno, err.value.ioctl) == (1, "VFIO_SET_IOMMU")
