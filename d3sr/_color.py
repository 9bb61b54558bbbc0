"""StableSR's colour corrections of a super-resolved image against a
reference (the bicubic-upsampled input), computed in C in place: 'adain'
matches each channel's mean and standard deviation, 'wavelet' replaces the
low frequencies (five dilated 3x3 blurs) by the reference's. See
csrc/images/color_fix.c for the formulas."""
from __future__ import annotations

import numpy as np

from ._native import _core

_KINDS = {"adain": 1, "wavelet": 2}


def color_fix(sr: np.ndarray, ref: np.ndarray, method: str) -> np.ndarray:
    """sr and ref: [H, W, C] or [N, H, W, C] float32 in [0, 1], the same shape.
    Returns the corrected image (sr's own memory when it is a C-contiguous
    float32 array), clamped to [0, 1]."""
    if method not in _KINDS:
        raise ValueError(f"method must be 'adain' or 'wavelet', not {method!r}")
    for name, a in (("sr", sr), ("ref", ref)):
        if not isinstance(a, np.ndarray) or a.ndim not in (3, 4):
            raise ValueError(f"{name} must be a numpy array [H, W, C] or [N, H, W, C]")
    if sr.shape != ref.shape:
        raise ValueError(f"sr and ref must have the same shape, got {sr.shape} and {ref.shape}")
    out = np.require(sr, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])
    batch = out if out.ndim == 4 else out[None]
    reference = np.ascontiguousarray(ref, np.float32)
    _core.color_fix(batch, reference if reference.ndim == 4 else reference[None], _KINDS[method])
    return out
