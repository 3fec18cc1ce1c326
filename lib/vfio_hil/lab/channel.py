"""The DUT channel: call DUT-side functions of ``vfio_hil.dut`` / ``vfio_hil.core`` on a host.

A remote DUT is driven through execnet over SSH stdio (no listening port on the DUT): one
persistent Python process per DUT runs ``vfio_hil.dut.agent`` and answers calls. A local DUT
(the controller itself) runs the same functions in-process. Test code reads the same either
way: ``channel.call("probes.edu_msi", bdf="0000:00:04.0")``.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Protocol

import execnet

from vfio_hil.dut import agent
from vfio_hil.lab.errors import ChannelError

DUT_ZIP_PATH = "/var/lib/vfio-hil/vfio_hil_dut.zip"
CALL_TIMEOUT_S = 300.0


class DutVfioError(Exception):
    """The DUT's kernel refused a VFIO operation (errno, ioctl and target as the DUT saw them).

    It is a finding about the platform, not a harness failure.
    """

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.errno = info.get("errno")
        self.ioctl = info.get("ioctl")
        self.target = info.get("target")
        super().__init__(info.get("message", "VFIO error"))


class ChannelLost(ChannelError):
    """The channel itself broke (the DUT, its agent or the SSH session went away, or a call
    outlived our timeout): nothing more can be asked through it."""


class DutChannel(Protocol):
    """What a check needs from a DUT: call a DUT-side function and close."""

    host: str
    ioctl_log: IoctlLog

    def call(self, func: str, **kwargs: Any) -> Any:
        """Run ``vfio_hil.dut.<func>`` on the DUT and return its (JSON-able) result."""
        ...

    def close(self) -> None:
        """Release the channel."""
        ...


class IoctlLog:
    """The ioctls the DUT issued for the calls made through a channel, with their results;
    the plugin clears it before a check and keeps it as the check's evidence."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def take(self, func: str, reply: dict[str, Any]) -> None:
        """Keep the ioctls of one reply."""
        self.entries.extend({"call": func, **e} for e in reply.get("ioctls", ()))


def _raise_remote(host: str, func: str, error: dict[str, Any]) -> None:
    if error.get("vfio"):
        raise DutVfioError(error)
    raise ChannelError(f"{func} on {host} raised {error.get('type')}: {error.get('message')}")


class SshDutChannel:
    """A persistent execnet gateway to a DUT over SSH."""

    def __init__(
        self,
        host: str,
        ssh_config: str,
        python: str = "/usr/bin/python3",
        sys_path: str = DUT_ZIP_PATH,
    ) -> None:
        self.host = host
        self.ioctl_log = IoctlLog()
        spec = f"ssh={host}//ssh_config={ssh_config}//python={python}//id={host}"
        try:
            self._gw = execnet.makegateway(spec)
            self._ch = self._gw.remote_exec(agent)
            self._ch.send({"sys_path": sys_path})
            ready = self._ch.receive(CALL_TIMEOUT_S)
        except (OSError, EOFError, execnet.RemoteError, execnet.TimeoutError) as exc:
            raise ChannelError(f"cannot open the DUT channel to {host}: {exc}") from None
        if ready.get("error"):
            self._gw.exit()
            raise ChannelError(f"DUT agent on {host} failed to start: {ready['error']}")
        self.dut_python = ready.get("python")

    def call(self, func: str, **kwargs: Any) -> Any:
        """Run ``vfio_hil.dut.<func>`` on the DUT and return its result."""
        start = time.monotonic()
        try:
            self._ch.send({"func": func, "kwargs": kwargs})
            reply = self._ch.receive(CALL_TIMEOUT_S)
        except execnet.TimeoutError:
            raise ChannelLost(
                f"{func} on {self.host}: no answer in {CALL_TIMEOUT_S:.0f} s"
            ) from None
        except (OSError, EOFError, execnet.RemoteError) as exc:
            raise ChannelLost(
                f"{func} on {self.host}: channel broke after "
                f"{time.monotonic() - start:.1f} s: {str(exc).strip().splitlines()[-1:]}"
            ) from None
        self.ioctl_log.take(func, reply)
        if "error" in reply:
            _raise_remote(self.host, func, reply["error"])
        return reply["result"]

    def close(self) -> None:
        """Stop the DUT agent and the SSH session."""
        try:
            self._ch.send(None)
            self._ch.waitclose(10)
        except (OSError, EOFError, execnet.RemoteError, execnet.TimeoutError):
            pass
        self._gw.exit()


class LocalDutChannel:
    """The controller is the DUT: calls run in-process."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.ioctl_log = IoctlLog()

    def call(self, func: str, **kwargs: Any) -> Any:
        """Run ``vfio_hil.dut.<func>`` here, translating errors as a remote call would."""
        outcome = agent.dispatch(importlib.import_module, func, kwargs)
        self.ioctl_log.take(func, outcome)
        if "error" in outcome:
            _raise_remote(self.host, func, outcome["error"])
        return outcome["result"]

    def close(self) -> None:
        """Nothing to release."""
