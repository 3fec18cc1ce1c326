"""Controller-side lab code: inventory, virtual rack, provisioning, DUT channel, reports."""
