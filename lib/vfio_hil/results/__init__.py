"""The results store and what is built on it: comparisons between runs
(:mod:`vfio_hil.results.compare`) and the KCIDB export (:mod:`vfio_hil.results.kcidb`)."""

from vfio_hil.results.store import (
    FigurePoint,
    PlatformInfo,
    ResultKey,
    ResultsStore,
    RunInfo,
    StoredResult,
    run_folders,
    store_url,
)

__all__ = [
    "FigurePoint",
    "PlatformInfo",
    "ResultKey",
    "ResultsStore",
    "RunInfo",
    "StoredResult",
    "run_folders",
    "store_url",
]
