"""Vendor certification: profiles, verdicts, signed bundles."""
