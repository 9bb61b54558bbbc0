"""Pictures of what d3sr does, for notebooks and the CLI: side by side with zoomed crops,
discriminator heat maps over the image, tile grids.

matplotlib is imported inside the functions that draw figures (install it with
`pip install "d3sr[notebook]"`); `import d3sr` never imports it, and heatmap_rgb, which
the `d3sr score` command uses, needs only numpy. Images are [H, W, 3] (or [H, W]) uint8,
uint16 or float in [0, 1]; boxes are (x, y, width, height) in pixels of the image they
are drawn on.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

Box = Tuple[int, int, int, int]  # x, y, width, height

# ColorBrewer's RdYlBu end and middle colours: red = fake, pale yellow = undecided, blue = real.
_FAKE, _UNSURE, _REAL = (np.array(c, np.float32) for c in ((215, 48, 39), (255, 255, 191), (69, 117, 180)))


def _as_float_rgb(image, name: str = "image") -> np.ndarray:
    """[H, W, 3] float32 in [0, 1] from uint8, uint16 or float, gray or RGB(A)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, not {type(image).__name__}")
    array = image[:, :, None] if image.ndim == 2 else image
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name} must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}")
    array = array[:, :, :3]
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535
    elif array.dtype.kind == "f":
        array = np.clip(array.astype(np.float32), 0, 1)
    else:
        raise TypeError(f"{name} must be uint8, uint16 or float in [0, 1], not {array.dtype}")
    return np.broadcast_to(array, array.shape[:2] + (3,))


def realness_colours(probabilities) -> np.ndarray:
    """[..., 3] float32 RGB in [0, 1] for probabilities of being real in [0, 1]:
    red (fake) through pale yellow (0.5) to blue (real)."""
    p = np.clip(np.asarray(probabilities, np.float32), 0, 1)[..., None]
    low = _FAKE + (_UNSURE - _FAKE) * np.clip(2 * p, 0, 1)
    high = _UNSURE + (_REAL - _UNSURE) * np.clip(2 * p - 1, 0, 1)
    return np.where(p < 0.5, low, high) / 255


def heatmap_rgb(image, probabilities, opacity: float = 0.5, limits: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """The image with each patch tinted by its probability of being real: uint8 [H, W, 3].
    probabilities: [h, w] (or [1, 1, h, w], as d3sr.losses.probabilities gives them), one
    per patch; the image is covered by h x w equal patches (the discriminator's are 4 x 4
    latent pixels: 32 x 32 pixels with SD's VAE, 16 x 16 with d3sr-tiny's) and any remainder at the bottom and right is left untinted. limits: the
    probabilities shown fully red and fully blue (narrow them to see small differences; use
    the same limits for images that are compared)."""
    rgb = _as_float_rgb(image)
    p = np.asarray(probabilities, np.float32)
    p = p.reshape(p.shape[-2:]) if p.ndim > 2 and int(np.prod(p.shape[:-2])) == 1 else p
    if p.ndim != 2 or 0 in p.shape:
        raise ValueError(f"probabilities must be [h, w] (one per patch), got {np.shape(probabilities)}")
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], not {opacity}")
    low, high = (float(v) for v in limits)
    if not high > low:
        raise ValueError(f"limits must be (low, high) with high > low, not {limits}")
    ph, pw = rgb.shape[0] // p.shape[0], rgb.shape[1] // p.shape[1]
    if ph == 0 or pw == 0:
        raise ValueError(f"{p.shape[0]} x {p.shape[1]} patches do not fit a {rgb.shape[0]} x {rgb.shape[1]} image")
    tint = np.repeat(np.repeat(realness_colours((p - low) / (high - low)), ph, axis=0), pw, axis=1)  # [h*ph, w*pw, 3]
    out = rgb.copy()
    covered = out[: tint.shape[0], : tint.shape[1]]
    out[: tint.shape[0], : tint.shape[1]] = (1 - opacity) * covered + opacity * tint
    return np.round(out * 255).astype(np.uint8)


def grid_boxes(height: int, width: int, tile: int, overlap: int) -> List[Box]:
    """The tiles of a height x width image cut into tile x tile squares overlapping by
    overlap: a tile every (tile - overlap) pixels, the last one flush with the edge
    (OSEDiff's grid). A side shorter than tile is one tile of its length."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")

    def starts(size: int) -> List[int]:
        if size <= tile:
            return [0]
        found = list(range(0, size - tile, tile - overlap))
        return found + [size - tile]

    return [(x, y, min(tile, width), min(tile, height)) for y in starts(height) for x in starts(width)]


def _figure(ax, size):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    return fig, ax


def _crop(image: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return image[y: y + h, x: x + w]


def side_by_side(images: Dict[str, np.ndarray], crops: Optional[Sequence[Box]] = None, *, crop_size: int = 0,
                 width: float = 12.0):
    """A figure: the images in a row (titled by their keys), and below them the same
    regions of each, enlarged without smoothing. crops are boxes in the pixels of the
    largest image (smaller ones, e.g. the low-resolution input, are scaled to it with
    nearest neighbours so every column shows the same region); default: one square of
    crop_size (default a sixth of the shorter side) at the centre. Returns the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not isinstance(images, dict) or not images:
        raise TypeError("images must be a non-empty dict {title: image array}")
    arrays = {name: _as_float_rgb(image, f"images[{name!r}]") for name, image in images.items()}
    big_h, big_w = max(a.shape[0] for a in arrays.values()), max(a.shape[1] for a in arrays.values())
    for name, a in arrays.items():
        if big_h % a.shape[0] or big_w % a.shape[1] or big_h // a.shape[0] != big_w // a.shape[1]:
            raise ValueError(f"images[{name!r}] is {a.shape[1]}x{a.shape[0]}: not an integer fraction of the "
                             f"largest, {big_w}x{big_h}")
        factor = big_h // a.shape[0]
        arrays[name] = np.repeat(np.repeat(a, factor, axis=0), factor, axis=1) if factor > 1 else a
    if crops is None:
        side = crop_size or max(8, min(big_h, big_w) // 6)
        crops = [((big_w - side) // 2, (big_h - side) // 2, side, side)]
    crops = [tuple(int(v) for v in box) for box in crops]
    for box in crops:
        x, y, w, h = box
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > big_w or y + h > big_h:
            raise ValueError(f"crop {box} (x, y, width, height) is not inside the {big_w}x{big_h} image")

    columns, rows = len(arrays), 1 + len(crops)
    panel = width / columns
    heights = [big_h / big_w] + [box[3] / box[2] for box in crops]
    fig, axes = plt.subplots(rows, columns, figsize=(width, panel * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, (name, a) in enumerate(arrays.items()):
        ax = axes[0, column]
        ax.imshow(a, interpolation="lanczos" if a.shape[0] > 2 * panel * 100 else "nearest")
        ax.set_title(name)
        for i, (x, y, w, h) in enumerate(crops):
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, lw=1.5, ec=colours[i % len(colours)]))
        for i, box in enumerate(crops):
            crop_ax = axes[1 + i, column]
            crop_ax.imshow(_crop(a, box), interpolation="nearest")
            for spine in crop_ax.spines.values():
                spine.set_edgecolor(colours[i % len(colours)])
                spine.set_linewidth(2)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def heatmap_overlay(image, probabilities, *, title: Optional[str] = None, opacity: float = 0.5,
                    limits: Tuple[float, float] = (0.0, 1.0), ax=None):
    """The image with the discriminator's per-patch probability of being real over it
    (red fake, blue real; limits as for heatmap_rgb) and a colour bar. Returns the Figure."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize

    fig, ax = _figure(ax, (6, 5))
    ax.imshow(heatmap_rgb(image, probabilities, opacity, limits))
    p = np.asarray(probabilities, np.float32)
    ax.set_title(title if title is not None else f"mean P(real) = {float(p.mean()):.3f}")
    ax.set_xticks([])
    ax.set_yticks([])
    cmap = LinearSegmentedColormap.from_list("d3sr_realness", realness_colours(np.linspace(0, 1, 64)))
    fig.colorbar(ScalarMappable(Normalize(*limits), cmap), ax=ax, label="P(real) per patch", shrink=0.8)
    return fig


def tile_grid(image, boxes: Sequence[Box], *, title: Optional[str] = None, ax=None):
    """The image with each tile's outline (boxes: (x, y, width, height), e.g. from
    grid_boxes); overlaps show as bands where outlines cross. Returns the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rgb = _as_float_rgb(image)
    fig, ax = _figure(ax, (7, 7 * rgb.shape[0] / rgb.shape[1]))
    ax.imshow(rgb)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (x, y, w, h) in enumerate(boxes):
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, lw=1.5, ec=colours[i % len(colours)]))
    ax.set_title(title if title is not None else f"{len(boxes)} tiles")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
