"""The photographs of tools/tiny/photos.tsv as d3sr-tiny is trained and evaluated on
them (NumPy and Pillow only, so both tools/train_tiny.py, under torch, and
tools/tiny/evaluate.py, under d3sr, read them the same way)."""
from __future__ import annotations

import os
from typing import List

import numpy as np
from PIL import Image

PHOTOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "photos.tsv")
LONG_SIDE = 1280  # photos are resized (Lanczos) to this longer side: the HR images


def read_photo_list(split: str) -> List[str]:
    """Paths of the photos of a split ('train', 'validation' or 'held_out')."""
    rows = []
    with open(PHOTOS, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if fields[0] == split:
                rows.append(fields[2])
    return rows


def load_photo(path: str) -> np.ndarray:
    """A photo as HR uint8 [H, W, 3]: RGB, longer side resized to LONG_SIDE (Lanczos)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    if max(w, h) > LONG_SIDE:
        factor = LONG_SIDE / max(w, h)
        image = image.resize((round(w * factor), round(h * factor)), Image.LANCZOS)
    return np.asarray(image)


def load_hr(path: str) -> np.ndarray:
    """A photo as an x4 test pair's HR image: load_photo's, cropped to multiples of 4."""
    rgb = load_photo(path)
    return np.ascontiguousarray(rgb[:rgb.shape[0] // 4 * 4, :rgb.shape[1] // 4 * 4])
