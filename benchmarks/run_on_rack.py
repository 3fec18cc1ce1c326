"""``make bench``: boot the benchmark's virtual DUT, bind its devices to vfio-pci, run
benchmarks/dma_map_bench.py (edu) and benchmarks/nvme_perf_bench.py (NVMe) inside it and print
their figures. The devices go back to their drivers, and the VM is stopped if this run
booted it.

    python benchmarks/run_on_rack.py [-- ARGS FOR dma_map_bench.py]
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from vfio_hil.lab.inventory import load_inventory
from vfio_hil.lab.provision import Provisioner
from vfio_hil.lab.rack import VirtualRack

HERE = Path(__file__).resolve().parent
INVENTORY = HERE / "inventory.yml"
HOST = "bench"


def main(argv: list[str]) -> int:
    extra = argv[1:] if argv[:1] == ["--"] else argv
    inventory = load_inventory(INVENTORY)
    host = inventory.hosts[HOST]
    rack = VirtualRack(inventory, log=lambda m: print(f"[rack] {m}", flush=True))
    booted = not rack.status(host).running
    rack.up([HOST])
    try:
        with tempfile.TemporaryDirectory(prefix="vfio-hil-bench-") as work:
            provisioner = Provisioner(inventory, rack, Path(work))
            provisioner.setup(host)
            try:
                target = rack.ssh_target(HOST)
                bdf = {d.model: d.bdf for d in host.devices}
                command = (
                    f"cd {shlex.quote(str(HERE.parent))} && "
                    ".venv/bin/python benchmarks/dma_map_bench.py "
                    f"--bdf {bdf['edu']} --reserve-huge-page {shlex.join(extra)} && "
                    f".venv/bin/python benchmarks/nvme_perf_bench.py --bdf {bdf['nvme']}"
                )
                return subprocess.run(
                    ["ssh", "-F", str(target.ssh_config), "-o", "BatchMode=yes", HOST, command],
                    check=False,
                ).returncode
            finally:
                provisioner.teardown([host])
    finally:
        if booted:
            rack.down([HOST])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
