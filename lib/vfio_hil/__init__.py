"""vfio-hil: hardware-in-the-loop test and conformance suite for Linux VFIO.

The package is split so that ``vfio_hil.core`` and ``vfio_hil.dut`` run on a device-under-test
host with nothing but Python 3.9+ and cffi; ``vfio_hil.lab`` runs on the controller.
"""

__version__ = "0.1.0"
