"""The conformance checks are run by `vfio-hil run` (or pytest with --vfio-inventory); the
fixtures come from the vfio_hil_pytest plugin."""
