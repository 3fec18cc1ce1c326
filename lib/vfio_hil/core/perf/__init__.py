"""Performance measurement: figures, latency histograms and the hot loops that fill them."""

from .figures import Figure

__all__ = ["Figure"]
