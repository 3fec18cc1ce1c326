"""Errors of the lab layer. Each one is a single line that names the problem; the CLI prints
it and exits 2 (bad input) or 3 (the lab broke)."""

from __future__ import annotations


class HilError(Exception):
    """Base of every lab error; ``exit_code`` is what the CLI returns."""

    exit_code = 3


class InventoryError(HilError):
    """The inventory file is missing, malformed or describes something impossible."""

    exit_code = 2


class UsageError(HilError):
    """A command-line option or argument is wrong."""

    exit_code = 2


class ToolError(HilError):
    """A tool a command needs (Node.js, the Allure report generator) is missing, too old or
    could not be installed."""

    exit_code = 2


class RackError(HilError):
    """The virtual rack could not boot or be reached."""


class ProvisioningError(HilError):
    """An Ansible play against a DUT failed."""


class ChannelError(HilError):
    """The channel to a DUT broke, or a DUT-side call failed outside VFIO."""


class ResultsFileError(HilError):
    """A run folder has no results.json, or one that is not a vfio-hil results file."""

    exit_code = 2


class BaselineError(HilError):
    """A baseline or the run it is saved from is missing or malformed, or a figure cannot be
    compared with its baseline (another unit, another direction)."""

    exit_code = 2


class StoreError(HilError):
    """The results store was given something it cannot use: a malformed or unsupported URL,
    an unknown run, a folder with no results.json, a SQLite file that cannot be opened."""

    exit_code = 2


class StoreUnreachable(HilError):
    """The results store's server did not answer (lab trouble, not bad input)."""


class ExportError(HilError):
    """An export does not validate against its schema: data the schema cannot hold."""


class CertError(HilError):
    """A certification was asked for with something it cannot use: an unknown or malformed
    profile, a key that is not an Ed25519 key, a run without its check plan, an existing
    bundle folder."""

    exit_code = 2


class BundleInvalid(HilError):
    """A certification bundle does not verify: a bad signature, a missing, extra or changed
    file, or a verdict its results do not give. A finding about the bundle, like a FAIL."""

    exit_code = 1
