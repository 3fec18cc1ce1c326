"""Controller-side lab code: inventory, virtual rack, provisioning, DUT channel, reports."""

from pathlib import Path

#: The checkout this package runs from (the folder holding ``lib/``, ``conformance/`` and
#: ``inventory/``): it names a run's controller side and owns its virtual rack.
CHECKOUT = Path(__file__).resolve().parents[3]
