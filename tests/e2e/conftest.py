"""End-to-end fixtures: the e2e virtual rack is booted once per session and shared."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rackutil import E2E_INVENTORY

from vfio_hil.lab.inventory import load_inventory
from vfio_hil.lab.rack import VirtualRack


@pytest.fixture(scope="session")
def e2e_rack() -> Iterator[VirtualRack]:
    """The e2e rack, booted once for the whole session and stopped at its end."""
    rack = VirtualRack(load_inventory(E2E_INVENTORY), log=lambda m: print(f"[rack] {m}"))
    rack.up()
    try:
        yield rack
    finally:
        rack.down()
