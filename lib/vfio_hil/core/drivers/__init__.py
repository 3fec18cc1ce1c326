"""Userspace drivers for specific devices, built on the VFIO core."""

from .edu import Edu

__all__ = ["Edu"]
