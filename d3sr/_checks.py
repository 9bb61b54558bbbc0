"""Argument checks shared by the public API: each error names the argument and
what was expected, before anything reaches the C core."""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import numpy as np

DEVICES = ("cpu", "cuda")
DTYPES = ("fp32", "fp16", "bf16")
# dtype=None: the CPU computes in fp32 only; the GPU stores bf16 by default
# (docs/architecture.md, Numerics), keeping fp32's range with half the memory and traffic.
DEFAULT_DTYPES = {"cpu": "fp32", "cuda": "bf16"}


def float32_array(value, name: str, ndim: int, layout: str) -> np.ndarray:
    """value as it is, if it is a float32 ndarray of ndim dimensions."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape {layout}, not {type(value).__name__}")
    if value.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, not {value.dtype} (shape {layout})")
    if value.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {value.shape}")
    return value


def device_and_dtype(device: str, dtype: Optional[str]) -> str:
    """Checks device and dtype; returns the dtype, None giving the device's default."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    if dtype is None:
        return DEFAULT_DTYPES[device]
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if device == "cpu" and dtype != "fp32":
        raise ValueError(f"dtype {dtype!r} needs device='cuda'; the CPU computes in 'fp32'")
    return dtype


def finite_number(value, field: str) -> float:
    """value as a float, if it is a finite int or float (a config's number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} = {value!r} must be a finite number")
    return float(value)


@contextlib.contextmanager
def naming(source: Optional[str]):
    """Prefixes a ValueError or TypeError raised inside with source (a file)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if source is None or str(e).startswith(source):
            raise
        raise type(e)(f"{source}: {e}") from None
