"""Image arrays in and out of d3sr: checking, normalising and resizing."""
from __future__ import annotations

from typing import Tuple

import numpy as np


def as_image_batch(image, name: str = "image") -> Tuple[np.ndarray, bool, bool]:
    """(batch [N, H, W, 3] float32 in [0, 1], whether one image came, whether it
    was uint8) from H x W x 3 or N x H x W x 3, uint8 or float32 in [0, 1]."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray [H, W, 3] or [N, H, W, 3], not {type(image).__name__}")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [H, W, 3] or [N, H, W, 3], got {image.shape}")
    if image.dtype == np.uint8:
        batch = image.astype(np.float32) / 255
    elif image.dtype == np.float32:
        if not np.isfinite(image).all():
            raise ValueError(f"{name} contains NaN or Inf")
        if image.min(initial=0) < 0 or image.max(initial=0) > 1:
            raise ValueError(f"float32 {name} values must be in [0, 1], got [{image.min()}, {image.max()}]")
        batch = image
    else:
        raise TypeError(f"{name} must be uint8 or float32 in [0, 1], not {image.dtype}")
    single = image.ndim == 3
    return (batch[None] if single else batch), single, image.dtype == np.uint8


def bicubic(images: np.ndarray, scale: int) -> np.ndarray:
    """PIL's bicubic resize of [N, H, W, C] float32 by scale, per channel in
    float32 ('F' mode), clipped to [0, 1]: uint8 inputs get the interpolation
    OSEDiff's and SeeSR's pipelines apply, without their rounding to uint8."""
    from PIL import Image

    n, h, w, c = images.shape
    out = np.empty((n, h * scale, w * scale, c), np.float32)
    for i in range(n):
        for ch in range(c):
            plane = Image.fromarray(np.ascontiguousarray(images[i, :, :, ch]), mode="F")
            out[i, :, :, ch] = np.asarray(plane.resize((w * scale, h * scale), Image.BICUBIC))
    return np.clip(out, 0, 1)
