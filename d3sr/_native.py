"""Loads the compiled core, d3sr._core.

scipy-openblas32's library is loaded by path first (RTLD_GLOBAL), so _core
finds it wherever pip put that package, not only beside d3sr in site-packages.
"""
import ctypes
import os

import scipy_openblas32

ctypes.CDLL(
    os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True)),
    mode=ctypes.RTLD_GLOBAL,
)

from . import _core  # noqa: E402  (needs the library above)

__all__ = ["_core"]
