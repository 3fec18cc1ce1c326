"""Make ``vfio_hil`` importable from the source tree when the package is not installed."""

from __future__ import annotations

import importlib.util
import os
import sys

if importlib.util.find_spec("vfio_hil") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "lib"))
