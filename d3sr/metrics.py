"""Image-quality metrics computed by the C core: PSNR, SSIM, LPIPS, DISTS, EA-DISTS.

    import d3sr.metrics as m
    m.psnr(sr, hr, crop_border=4)     # dB on the Y channel, as SR papers report
    m.ssim(sr, hr, crop_border=4)
    m.lpips(sr, hr)                   # AlexNet, v0.1
    m.dists(sr, hr); m.ea_dists(sr, hr)

Images are [H, W, 3] (one pair: a float comes back) or [N, H, W, 3] (a batch:
a float64 array [N] comes back), RGB, uint8 (0..255) or float in [0, 1]
(float16/float64 are converted to float32; a uint8 image paired with a float
one becomes v / 255). The conventions are pyiqa's, where SR papers' numbers
come from, and each is an argument here:

- PSNR: peak 1, mse over the (cropped) pixels, 10 log10(1 / (mse + 1e-8)), so
  identical images give 80 dB; y_channel=True (default) scores the BT.601 luma
  Y = 16 + 65.481 R + 128.553 G + 24.966 B (of 255), pyiqa's
  color_space='ycbcr', test_y_channel=True; y_channel=False scores RGB.
- SSIM: values rounded to 0..255 integers first (MATLAB's uint8), 11x11
  Gaussian window, sigma 1.5, valid filtering, no downsampling unless
  downsample=True (MATLAB's average pooling by round(min(H, W) / 256)).
- LPIPS: version 0.1, images mapped from [0, 1] to [-1, 1] internally (never
  pass [-1, 1] here), net 'alex' (the papers' default) or 'vgg'.
- DISTS: full resolution (no resizing to 256), ImageNet normalisation inside.
- EA-DISTS: DISTS(a, b) + DISTS(S(a), S(b)), S the Sobel gradient magnitude of
  the channel mean, sqrt(gx^2 + gy^2 + 1e-6), zero padding 1, to 3 channels.

LPIPS and DISTS need a weight file made once from the original weights; see
d3sr._metric_weights (`d3sr convert-metric-weights`). Every call releases the
GIL while the C core computes.
"""
from __future__ import annotations

import os
import threading
from typing import Optional, Tuple, Union

import numpy as np

from . import _metric_weights as metric_weights
from ._native import _core
from ._weights import WeightFile, load_into

Score = Union[float, np.ndarray]

__all__ = ["psnr", "ssim", "lpips", "dists", "ea_dists", "rgb_to_y"]


def _images(a, b) -> Tuple[np.ndarray, np.ndarray, bool]:
    """a and b as [N, H, W, 3] arrays of one dtype (uint8 or float32), and
    whether they came as single images."""
    arrays = []
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray of shape [H, W, 3] or [N, H, W, 3], not {type(x).__name__}")
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise TypeError(f"{name} must have dtype uint8 (0..255) or float in [0, 1], not {x.dtype}")
        if x.ndim not in (3, 4) or x.shape[-1] != 3:
            raise ValueError(f"{name} must have shape [H, W, 3] or [N, H, W, 3] (RGB, channels last), got {x.shape}")
        arrays.append(x)
    a, b = arrays
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    single = a.ndim == 3
    if a.dtype != b.dtype or a.dtype.kind == "f":
        a, b = (x if x.dtype == np.float32 else
                x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)
                for x in (a, b))
    if single:
        a, b = a[None], b[None]
    return a, b, single


def _result(scores: np.ndarray, single: bool) -> Score:
    return float(scores[0]) if single else scores


def _crop(crop_border) -> int:
    # The upper bound keeps it inside the core's int; any real image is smaller.
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or not 0 <= crop_border < 1 << 30:
        raise ValueError(f"crop_border must be an integer >= 0 and below 2^30, not {crop_border!r}")
    return int(crop_border)


def psnr(a: np.ndarray, b: np.ndarray, *, crop_border: int = 0, y_channel: bool = True) -> Score:
    """PSNR in dB (peak 1) of images a and b, on the BT.601 Y channel by
    default; crop_border pixels are dropped at each edge first."""
    a, b, single = _images(a, b)
    return _result(_core.psnr(a, b, _crop(crop_border), bool(y_channel)), single)


def ssim(a: np.ndarray, b: np.ndarray, *, crop_border: int = 0, y_channel: bool = True,
         downsample: bool = False) -> Score:
    """SSIM of images a and b (pyiqa's), on the BT.601 Y channel by default.
    The cropped image must be at least 11 x 11."""
    a, b, single = _images(a, b)
    return _result(_core.ssim(a, b, _crop(crop_border), bool(y_channel), bool(downsample)), single)


def rgb_to_y(image: np.ndarray, *, rounded: bool = False) -> np.ndarray:
    """The BT.601 luma that psnr and ssim score: float32 [.., H, W] in
    [16/255, 235/255], or the 16..235 integers SSIM sees when rounded."""
    x, _, single = _images(image, image)
    y = _core.luma(x, bool(rounded))
    return y[0] if single else y


# ---- perceptual metrics ------------------------------------------------------------

_networks = {}
_networks_lock = threading.Lock()


def _network(kind: str, weights: Optional[str]):
    """The C network of kind with its weights loaded, cached per weight file."""
    path, source = metric_weights.resolve(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(metric_weights.missing_message(kind, path, source))
    stat = os.stat(path)
    key = (kind, os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    with _networks_lock:
        model = _networks.get(key)
        if model is None:
            model = _core.perceptual_create(kind)
            prefixes = metric_weights.NETWORKS[kind][0]
            with WeightFile(path) as f:
                names = set(f.keys())
            lacking = sorted(n for n, _, _ in model.weights() if n not in names)
            if lacking:
                raise ValueError(metric_weights.missing_message(kind, path, source, lacking[0]))
            load_into(model, path, skip=lambda name: not name.startswith(prefixes),
                      what=metric_weights.LABELS[kind])
            for old in [k for k in _networks if k[0] == kind]:  # one file per network at a time
                del _networks[old]
            _networks[key] = model
    return model


def lpips(a: np.ndarray, b: np.ndarray, *, net: str = "alex", weights: Optional[str] = None) -> Score:
    """LPIPS v0.1 of images a and b in [0, 1] (mapped to [-1, 1] inside), with
    AlexNet ('alex', at least 31 x 31) or VGG16 ('vgg', at least 16 x 16)."""
    if net not in ("alex", "vgg"):
        raise ValueError(f"net must be 'alex' or 'vgg', not {net!r}")
    a, b, single = _images(a, b)
    model = _network(f"lpips_{net}", weights)
    return _result(_core.perceptual_score(model, a, b), single)


def dists(a: np.ndarray, b: np.ndarray, *, weights: Optional[str] = None) -> Score:
    """DISTS of images a and b in [0, 1], at full resolution."""
    a, b, single = _images(a, b)
    return _result(_core.perceptual_score(_network("dists", weights), a, b), single)


def ea_dists(a: np.ndarray, b: np.ndarray, *, weights: Optional[str] = None) -> Score:
    """EA-DISTS (D3SR's loss as a metric): DISTS(a, b) + DISTS(S(a), S(b)),
    S the Sobel gradient magnitude of the channel mean."""
    a, b, single = _images(a, b)
    return _result(_core.perceptual_score(_network("dists", weights), a, b, edge_aware=True), single)
