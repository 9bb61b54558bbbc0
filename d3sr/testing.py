"""Random weights and the published model configs, for tests, benchmarks and
trying d3sr without downloading a checkpoint.

Depends on NumPy alone, so the reference script (tools/make_references.py)
can import this file in an environment without d3sr built and draw exactly
the same weights for diffusers.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Iterable, Iterator, Mapping, Sequence, Tuple

import numpy as np

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def real_config(name: str) -> dict:
    """config.json of a published model: 'sd21-vae', 'sd21-base-unet' or 'sdxl-base-unet'."""
    path = os.path.join(CONFIG_DIR, f"{name}.json")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))
        raise ValueError(f"unknown config {name!r}; known: {known}")
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def iter_random_weights(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> Iterator[Tuple[str, np.ndarray]]:
    """Seeded float32 weights for {name: shape}, drawn one at a time in sorted-name order.

    Matrices and kernels ~ N(0, 1/fan_in) (activations keep their scale through
    deep stacks); biases ~ N(0, 0.01); 1-D weights (norm scales) ~ 1 + N(0, 0.01).
    The same names and shapes give the same arrays in any process.
    """
    rng = np.random.default_rng(seed)
    for name in sorted(shapes):
        shape = tuple(int(s) for s in shapes[name])
        draw = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) >= 2:
            yield name, draw * np.float32(1.0 / np.sqrt(np.prod(shape[1:])))
        elif name.endswith("bias"):
            yield name, draw * np.float32(0.1)
        else:
            yield name, np.float32(1.0) + draw * np.float32(0.1)


def random_weights(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> Dict[str, np.ndarray]:
    """iter_random_weights as a dict (holds them all: for small models)."""
    return dict(iter_random_weights(shapes, seed))


def write_safetensors(path: str, shapes: Mapping[str, Sequence[int]], tensors: Iterable[Tuple[str, np.ndarray]]) -> None:
    """Writes float32 tensors to a .safetensors file one at a time (never the
    whole model in memory): shapes gives every name and shape up front, tensors
    yields (name, array) in any order. Tensors it never yields stay holes of
    zeros (sparse on disk)."""
    offsets, offset = {}, 0
    for name in shapes:
        size = int(np.prod(shapes[name])) * 4
        offsets[name] = (offset, offset + size)
        offset += size
    header = {name: {"dtype": "F32", "shape": [int(d) for d in shapes[name]], "data_offsets": list(offsets[name])}
              for name in shapes}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        start = f.tell()
        for name, array in tensors:
            f.seek(start + offsets[name][0])
            f.write(np.ascontiguousarray(array, "<f4").tobytes())
        f.truncate(start + offset)


def random_images(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Smooth float32 test images in [-1, 1] of shape [N, C, H, W] (random
    low-frequency patterns plus a little noise, closer to photographs than
    white noise)."""
    n, c, h, w = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    images = np.zeros((n, c, h, w), np.float64)
    for _ in range(4):
        fy, fx, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi, size=(n, c, 1, 1))
        images += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase) / 4
    images += 0.1 * rng.standard_normal((n, c, h, w))
    return np.clip(images, -1, 1).astype(np.float32)


def metric_pair(shape: Sequence[int], seed: int = 0, dtype: str = "uint8"):
    """(sr, hr) test images for the metrics, [N, H, W, 3] in [0, 1]: hr a smooth
    random image (random_images), sr a distorted copy (a 3-tap blur, noise and
    a small colour shift), as uint8 (0..255) or float32."""
    n, h, w = (int(s) for s in shape)
    hr = (random_images((n, 3, h, w), seed).transpose(0, 2, 3, 1).astype(np.float64) + 1) / 2
    rng = np.random.default_rng(seed + 1000)
    sr = (hr + np.roll(hr, 1, axis=1) + np.roll(hr, 1, axis=2)) / 3
    sr = sr + rng.normal(0.0, 0.03, hr.shape) + rng.uniform(-0.02, 0.02, (n, 1, 1, 3))
    sr, hr = np.clip(sr, 0, 1), np.clip(hr, 0, 1)
    if dtype == "uint8":
        return np.rint(sr * 255).astype(np.uint8), np.rint(hr * 255).astype(np.uint8)
    if dtype == "float32":
        return sr.astype(np.float32), hr.astype(np.float32)
    raise ValueError(f"dtype must be 'uint8' or 'float32', not {dtype!r}")
