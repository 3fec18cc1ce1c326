"""Code the controller runs on the device under test (stdlib + cffi only)."""
