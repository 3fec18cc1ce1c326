"""Loading the compiled hot path (``_hotpath``, built from ``hotpath.c`` at install time).

On the controller the module sits beside this file. On a DUT the package runs from a zip
(``/var/lib/vfio-hil/vfio_hil_dut.zip``), from which Python cannot import an extension: the
module is written once next to the zip, under a name holding its digest, and loaded from
there. Where it cannot load (no module was built, another CPU architecture, a Python or cffi
too old), :func:`load` says why and the loops run in pure Python, labelled so.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import zipfile
import zipimport
from types import ModuleType
from typing import Optional, Tuple

MODULE = "vfio_hil.core.perf._hotpath"
#: Set to ``python`` to measure with the pure-Python loops even where the module loads.
FORCE_ENV = "VFIO_HIL_HOT_PATH"

_loaded: Optional[Tuple[Optional[ModuleType], str]] = None


def _extension_in_zip(loader: zipimport.zipimporter) -> str:
    """Write the extension held in the zip next to it (once per content) and return its
    path."""
    package = os.path.relpath(os.path.dirname(__file__), loader.archive)
    with zipfile.ZipFile(loader.archive) as archive:
        names = [
            n for n in archive.namelist()
            if os.path.dirname(n) == package and os.path.basename(n).startswith("_hotpath.")
        ]  # fmt: skip
        if not names:
            raise ImportError(f"no compiled hot path in {loader.archive}")
        data = archive.read(names[0])
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = os.path.join(os.path.dirname(loader.archive), "native")
    path = os.path.join(folder, f"_hotpath-{digest}{os.path.splitext(names[0])[1]}")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return path


def _load_module() -> ModuleType:
    loader = globals().get("__loader__")
    if not isinstance(loader, zipimport.zipimporter):
        from . import _hotpath  # type: ignore[attr-defined]

        return _hotpath
    path = _extension_in_zip(loader)
    ext = importlib.machinery.ExtensionFileLoader(MODULE, path)
    spec = importlib.util.spec_from_file_location(MODULE, path, loader=ext)
    if spec is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    ext.exec_module(module)
    sys.modules[MODULE] = module
    return module


def load() -> Tuple[Optional[ModuleType], str]:
    """The compiled module and ``""``, or None and why it is not used."""
    global _loaded
    if os.environ.get(FORCE_ENV) == "python":
        return None, f"{FORCE_ENV}=python asks for the pure-Python loops"
    if _loaded is None:
        try:
            _loaded = (_load_module(), "")
        except (ImportError, OSError) as exc:
            _loaded = (None, f"the compiled hot path did not load: {exc}")
    return _loaded
