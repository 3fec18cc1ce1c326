"""Only what pyproject.toml cannot say: the compiled hot path, built with cffi at install."""

from setuptools import setup

setup(cffi_modules=["lib/vfio_hil/core/perf/hotpath_build.py:ffibuilder"])
