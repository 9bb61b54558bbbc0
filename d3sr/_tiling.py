"""Tiled generator stages: any image size in bounded memory.

UNet: overlapping latent tiles blended with Gaussian weights, as OSEDiff
(`latent_tile`, `latent_overlap`; its grid and its weights, sigma = 0.1 x tile).

VAE encoder and decoder: the image is cut into cores that partition it; each
tile runs its core plus a halo as wide as the network's convolutional
receptive field (so a cropped core never sees its window's border; the mid
block's attention stays within the window), and every GroupNorm layer of every
tile normalises with the statistics of the whole image, pooled over the cores
(each pixel counted once; Chan's formula, so the spread between tile means is
in). The tiles run layer-synchronously in one pass (csrc/models/tiles.c): at
each GroupNorm layer a tile adds its core's statistics and parks its live
activations in host memory until all tiles have arrived. Iterating whole
statistics passes instead does not converge (measured: benchmarks/tiling.py's
notes in README). The parked set grows with the image; statistics='estimated'
bounds memory instead: one untiled pass over the image area-resampled to fit
a tile gives every layer's statistics, and the tiles then run one by one with
them (close on trained weights, not on random ones: README, Large images).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

COLOR_FIXES = (None, "adain", "wavelet")
MIN_LATENT_TILE = 16    # latent pixels: the SD UNet halves the latent three times
MIN_ENCODER_TILE = 64   # pixels
MIN_DECODER_TILE = 16   # latent pixels


def check_tile(value, name: str, minimum: int, multiple: int = 8) -> Optional[int]:
    """None, or a positive integer tile size, a multiple of `multiple`, at least `minimum`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer or None, not {value!r}")
    value = int(value)
    if value < minimum or value % multiple:
        raise ValueError(f"{name} must be a multiple of {multiple} of at least {minimum}, or None; got {value}")
    return value


def check_overlap(overlap, tile: Optional[int], name: str = "latent_overlap") -> int:
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)):
        raise ValueError(f"{name} must be a non-negative integer, not {overlap!r}")
    overlap = int(overlap)
    if overlap < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {overlap}")
    if tile is not None and overlap >= tile:
        raise ValueError(f"{name} must be smaller than latent_tile ({tile}), got {overlap}")
    return overlap


TILE_NAMES = ("latent_tile", "latent_overlap", "encoder_tile", "decoder_tile")


def check_tiles(latent_tile, latent_overlap, encoder_tile, decoder_tile, defaults: dict):
    """Upscaler.upscale's tile arguments checked, each 'default' replaced by defaults[name]
    (the checkpoint's d3sr.json)."""
    given = dict(zip(TILE_NAMES, (latent_tile, latent_overlap, encoder_tile, decoder_tile)))
    values = {name: defaults[name] if isinstance(v, str) and v == "default" else v for name, v in given.items()}
    latent_tile = check_tile(values["latent_tile"], "latent_tile", MIN_LATENT_TILE)
    return (latent_tile, check_overlap(values["latent_overlap"], latent_tile),
            check_tile(values["encoder_tile"], "encoder_tile", MIN_ENCODER_TILE),
            check_tile(values["decoder_tile"], "decoder_tile", MIN_DECODER_TILE))


def check_color_fix(color_fix, default: Optional[str]) -> Optional[str]:
    """Upscaler.upscale's color_fix, with 'default' replaced by the checkpoint's (default)."""
    if isinstance(color_fix, str) and color_fix == "default":
        return default
    if color_fix is None or (isinstance(color_fix, str) and color_fix in COLOR_FIXES):
        return color_fix
    raise ValueError(f"color_fix must be 'default', None, 'adain' or 'wavelet', not {color_fix!r}")


VAE_STATISTICS = ("exact", "estimated")


def check_vae_statistics(value) -> Optional[str]:
    """Upscaler.upscale's vae_statistics as VAE.encode_tiled's statistics argument."""
    if isinstance(value, str) and value in VAE_STATISTICS:
        return None if value == "exact" else value
    raise ValueError(f"vae_statistics must be 'exact' or 'estimated', not {value!r}")


# ---- the UNet's latent tiles (OSEDiff) ------------------------------------------

def tile_starts(size: int, tile: int, overlap: int) -> List[int]:
    """OSEDiff's offsets along one axis: every (tile - overlap), the last tile
    flush with the end. tile <= size."""
    stride = tile - overlap
    if stride < 1 or tile > size:
        raise ValueError(f"tiles of {tile} overlapping by {overlap} cannot cover {size} pixels")
    starts, start = [], 0
    while True:
        if start + tile >= size:
            starts.append(size - tile)
            return starts
        starts.append(start)
        start += stride


def gaussian_weights(tile_h: int, tile_w: int) -> np.ndarray:
    """OSEDiff's blending weights [tile_h, tile_w]: exp(-d^2 / (2 (0.1 tile)^2)) /
    sqrt(2 pi 0.01) per axis, centred at (tile_w - 1) / 2 across and, as OSEDiff
    has it, at tile_h / 2 down (kept so results match OSEDiff's)."""
    var = 0.01
    x = np.arange(tile_w, dtype=np.float64)
    y = np.arange(tile_h, dtype=np.float64)
    xp = np.exp(-((x - (tile_w - 1) / 2) ** 2) / (tile_w * tile_w) / (2 * var)) / np.sqrt(2 * np.pi * var)
    yp = np.exp(-((y - tile_h / 2) ** 2) / (tile_h * tile_h) / (2 * var)) / np.sqrt(2 * np.pi * var)
    return np.outer(yp, xp)


def latent_tiles(h: int, w: int, tile: int, overlap: int) -> List[Tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of each latent tile, rows first; a side shorter than
    the tile is one tile of that side."""
    th, tw = min(tile, h), min(tile, w)
    return [(y, y + th, x, x + tw) for y in tile_starts(h, th, overlap) for x in tile_starts(w, tw, overlap)]


def unet_tiled(run: Callable[[np.ndarray], np.ndarray], z: np.ndarray, tile: int, overlap: int,
               tiles_per_batch: int, progress=None) -> np.ndarray:
    """eps for latents z [N, C, h, w], run(batch of tiles [N * k, C, th, tw])
    per batch of k tiles, blended with gaussian_weights."""
    n, c, h, w = z.shape
    tiles = latent_tiles(h, w, tile, overlap)
    th, tw = tiles[0][1] - tiles[0][0], tiles[0][3] - tiles[0][2]
    weights = gaussian_weights(th, tw).astype(np.float32)
    total = np.zeros((n, c, h, w), np.float32)
    contributors = np.zeros((h, w), np.float32)
    for i in range(0, len(tiles), tiles_per_batch):
        group = tiles[i:i + tiles_per_batch]
        batch = np.concatenate([z[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in group])   # [k * N, C, th, tw]
        eps = run(np.ascontiguousarray(batch))
        for j, (y0, y1, x0, x1) in enumerate(group):
            total[:, :, y0:y1, x0:x1] += eps[j * n:(j + 1) * n] * weights
            contributors[y0:y1, x0:x1] += weights
        if progress is not None:
            progress(len(group))
    return total / contributors


# ---- the VAE's tiles with pooled GroupNorm statistics ------------------------------

def encoder_halo(config: dict) -> int:
    """Pixels of the encoder's convolutional receptive field on each side, rounded
    up to its downscale factor: conv_in, 2 per ResNet, the downsamplers (3x3,
    stride 2), the mid block's 4 convs and conv_out, each at its resolution."""
    levels, per_level = len(config["block_out_channels"]), 2 * config["layers_per_block"]
    reach = 1
    for i in range(levels):
        reach += per_level * 2 ** i + (2 ** (i + 1) if i < levels - 1 else 0)
    reach += 5 * 2 ** (levels - 1)
    factor = 2 ** (levels - 1)
    return -(-reach // factor) * factor


def decoder_halo(config: dict) -> int:
    """Latent pixels of the decoder's convolutional receptive field on each side:
    conv_in, the mid block's 4 convs, then per up block 2 per ResNet and the
    upsampler's conv, and conv_out, each at its resolution."""
    levels, per_level = len(config["block_out_channels"]), 2 * (config["layers_per_block"] + 1)
    reach = 5.0
    for i in range(levels):
        reach += per_level / 2 ** i + (1 / 2 ** (i + 1) if i < levels - 1 else 0)
    reach += 1 / 2 ** (levels - 1)
    return int(math.ceil(reach))


def split(size: int, tile: int, multiple: int) -> List[Tuple[int, int]]:
    """Cores [a, b) covering [0, size) in the fewest pieces of at most tile,
    as equal as the grid of `multiple` allows (size and tile are multiples of it)."""
    count = -(-size // tile)
    cells = size // multiple
    bounds = [multiple * (cells * i // count) for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]


def vae_windows(h: int, w: int, tile: int, halo: int, multiple: int) -> np.ndarray:
    """[count, 8] int32: window (y0, y1, x0, x1) then core (y0, y1, x0, x1) per
    tile, rows first. Cores partition the image (at most tile a side, on the
    grid of multiple); every window has the same size, the largest core plus
    the halo on both sides (clipped to the image), shifted inwards at the
    image's edges, so all tiles share one activation plan."""
    rows, cols = split(h, tile, multiple), split(w, tile, multiple)
    wh = min(h, max(b - a for a, b in rows) + 2 * halo)
    ww = min(w, max(b - a for a, b in cols) + 2 * halo)
    tiles = []
    for y0, y1 in rows:
        wy0 = min(max(0, y0 - halo), h - wh)
        for x0, x1 in cols:
            wx0 = min(max(0, x0 - halo), w - ww)
            tiles.append((wy0, wy0 + wh, wx0, wx0 + ww, y0, y1, x0, x1))
    return np.asarray(tiles, np.int32)


def area_matrix(size: int, small: int) -> np.ndarray:
    """[small, size] float32: row i averages the input span [i * size / small,
    (i + 1) * size / small), boundary pixels by the fraction inside it (area
    resampling), so every input pixel counts with weight small / size."""
    edges = np.arange(small + 1) * (size / small)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0, None)
    return (overlap / (size / small)).astype(np.float32)


def shrink_for_statistics(x: np.ndarray, tile: int, multiple: int) -> np.ndarray:
    """x [N, C, H, W] area-resampled so its longer side fits in tile (never
    enlarged), each side a multiple of `multiple` (at least one): the input of
    the pass that estimates a tiled VAE call's GroupNorm statistics."""
    _, _, h, w = x.shape
    factor = max(1.0, max(h, w) / tile)
    sh = max(multiple, int(h / factor) // multiple * multiple)
    sw = max(multiple, int(w / factor) // multiple * multiple)
    small = np.einsum("yh,nchw,xw->ncyx", area_matrix(h, sh), x, area_matrix(w, sw), optimize=True)
    return np.ascontiguousarray(small, dtype=np.float32)


def whole_window(h: int, w: int) -> np.ndarray:
    """The one tile of an untiled call: window and core the whole image."""
    return np.asarray([(0, h, 0, w, 0, h, 0, w)], np.int32)


def pool_statistics(collected: Sequence[np.ndarray]) -> np.ndarray:
    """Per-tile (count, mean, M2) [N, layers, groups, 3] -> the image's (mean,
    variance) [N, layers, groups, 2]: Chan's parallel formula, so the spread
    of the tile means around the image mean counts."""
    stats = np.stack(collected)                               # [tiles, N, layers, groups, 3]
    count, mean, m2 = stats[..., 0], stats[..., 1], stats[..., 2]
    total = count.sum(0)
    pooled_mean = (count * mean).sum(0) / total
    pooled_m2 = (m2 + count * (mean - pooled_mean) ** 2).sum(0)
    return np.stack([pooled_mean, pooled_m2 / total], -1)


def tile_count(h: int, w: int, tile: Optional[int], multiple: int) -> int:
    """Tiles one VAE stage runs (1 when it does not tile)."""
    if tile is None or (h <= tile and w <= tile):
        return 1
    return len(split(h, tile, multiple)) * len(split(w, tile, multiple))


# ---- will the parked tiles fit? -----------------------------------------------------

def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_host_bytes() -> Optional[int]:
    """Host memory a new allocation can still get without the process being
    killed: Linux's MemAvailable plus free swap (parked tiles are touched once
    per layer, so swap serves them), capped by a cgroup v2 memory limit (a
    container's). None where none of this can be read."""
    fields = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                fields[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if "MemAvailable" not in fields:
        return None
    available = fields["MemAvailable"] + fields.get("SwapFree", 0)
    limit = _read_int("/sys/fs/cgroup/memory.max")     # "max" (no limit) reads as None
    used = _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        available = min(available, max(limit - used, 0))
    return available


def check_parking_fits(what: str, tiles: int, window_bytes: int, parked_bytes: int, advice: str,
                       available: Optional[int] = None) -> None:
    """MemoryError, before anything runs, when a tiled VAE stage with the
    image's exact statistics would hold more host memory (its parked set and,
    on the CPU, one tile's window; callers pass window_bytes 0 for a GPU) than
    is available (available_host_bytes() unless given)."""
    available = available_host_bytes() if available is None else available
    needed = window_bytes + parked_bytes
    if available is None or needed <= available:
        return
    gib = 2.0 ** 30
    raise MemoryError(
        f"{what}: {tiles} tiles with the image's exact GroupNorm statistics would park {parked_bytes / gib:.1f} GiB "
        f"of activations in host memory, {needed / gib:.1f} GiB with one tile's working set, and "
        f"{available / gib:.1f} GiB is available. {advice}")
