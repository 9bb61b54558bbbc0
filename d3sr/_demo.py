"""`d3sr demo`: d3sr-tiny super-resolves a real photo shipped in the package, next to
bicubic and the original, with zoomed crops and the PSNR/SSIM of both."""
from __future__ import annotations

import os
import time
from typing import Optional, Tuple

import numpy as np

from ._checkpoint import MODELS_DIR

DEMO_PHOTO = os.path.join(MODELS_DIR, "tiny", "demo", "evening_glow.png")
SCALE = 4
ZOOM = 3          # zoomed crops are shown at 3x (nearest neighbour: the pixels as they are)
GAP = 8           # pixels between panels
LABEL = 22        # height of a caption line


def read_photo(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[0] // SCALE * SCALE, rgb.shape[1] // SCALE * SCALE
    if h < 16 * SCALE or w < 16 * SCALE:
        raise ValueError(f"{path}: the demo photo must be at least {16 * SCALE} x {16 * SCALE} pixels, "
                         f"got {rgb.shape[1]} x {rgb.shape[0]}")
    return np.ascontiguousarray(rgb[:h, :w])


def downscale(hr: np.ndarray) -> np.ndarray:
    """The low-resolution input: PIL bicubic x4 downscaling, as the model was trained."""
    from PIL import Image

    return np.asarray(Image.fromarray(hr).resize((hr.shape[1] // SCALE, hr.shape[0] // SCALE), Image.BICUBIC))


def bicubic_upscale(lr: np.ndarray) -> np.ndarray:
    """The bicubic baseline: the Upscaler's own first step (PIL's kernel in float32), rounded."""
    from .images import bicubic

    up = bicubic(lr[None].astype(np.float32) / 255, SCALE)[0]
    return np.round(up * 255).astype(np.uint8)


def zoom_box(hr: np.ndarray, size: Tuple[int, int]) -> Tuple[int, int]:
    """(top, left) of the size = (h, w) window with the most edges: gradient energy of the photo
    box-averaged 4x4 first, so that outlines count and pixel-scale texture (gravel, noise,
    which no x4 model can restore) does not."""
    gray = hr.astype(np.float32).mean(axis=2)
    gray = gray.reshape(gray.shape[0] // SCALE, SCALE, gray.shape[1] // SCALE, SCALE).mean(axis=(1, 3))
    gray = np.repeat(np.repeat(gray, SCALE, axis=0), SCALE, axis=1)
    energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    h, w = size
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    top, left = np.unravel_index(np.argmax(sums), sums.shape)
    return int(top), int(left)


def side_by_side(panels, captions, box) -> np.ndarray:
    """[panel | panel | panel] with a rectangle on box, their zoomed crops below, captions under each."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = panels[0].shape[:2]
    top, left, bh, bw = box
    zh, zw = bh * ZOOM, bw * ZOOM
    width = len(panels) * w + (len(panels) + 1) * GAP
    height = GAP + h + GAP + zh + 2 * LABEL + 2 * GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    for i, (panel, caption) in enumerate(zip(panels, captions)):
        x = GAP + i * (w + GAP)
        canvas.paste(Image.fromarray(panel), (x, GAP))
        draw.rectangle([x + left - 1, GAP + top - 1, x + left + bw, GAP + top + bh], outline=(255, 40, 40), width=2)
        crop = Image.fromarray(panel[top:top + bh, left:left + bw]).resize((zw, zh), Image.NEAREST)
        zx = x + (w - zw) // 2
        canvas.paste(crop, (zx, 2 * GAP + h))
        for j, line in enumerate(caption):
            draw.text((x, 2 * GAP + h + zh + 4 + j * (LABEL - 4)), line, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def demo(photo: Optional[str] = None, output: str = "d3sr_demo.png", checkpoint: Optional[str] = None,
         threads: int = 0) -> dict:
    """Downscales photo (default: the shipped one) by 4 with PIL's bicubic, upscales it
    back with bicubic and with the generator (default d3sr-tiny), prints PSNR and SSIM
    (Y channel, 4-pixel border cropped) and writes the side-by-side picture to output."""
    import d3sr
    from . import metrics
    from .images import write_image

    if threads:
        d3sr.set_num_threads(threads)
    path = photo or DEMO_PHOTO
    hr = read_photo(path)
    lr = downscale(hr)
    upscaler = d3sr.Upscaler.load(checkpoint)
    start = time.perf_counter()
    sr = upscaler.upscale(lr)
    seconds = time.perf_counter() - start
    bic = bicubic_upscale(lr)
    name = "d3sr-tiny" if checkpoint in (None, "tiny") else os.path.basename(os.path.normpath(checkpoint))
    scores = {}
    for label, image in (("bicubic", bic), (name, sr)):
        scores[label] = (float(metrics.psnr(image, hr, crop_border=4)), float(metrics.ssim(image, hr, crop_border=4)))
    print(f"{os.path.basename(path)}: {lr.shape[1]}x{lr.shape[0]} -> {hr.shape[1]}x{hr.shape[0]} "
          f"({name} in {seconds:.2f} s, {d3sr.get_num_threads()} threads)")
    print("PSNR / SSIM on Y, border 4:")
    for label, (p, s) in scores.items():
        print(f"  {label:>10}: {p:6.2f} dB  {s:.4f}")
    bh, bw = min(hr.shape[0] // 3, 96), min(hr.shape[1] // 3, 128)
    top, left = zoom_box(hr, (bh, bw))
    captions = [["bicubic x4", f"PSNR {scores['bicubic'][0]:.2f} dB  SSIM {scores['bicubic'][1]:.4f}"],
                [f"{name} x4", f"PSNR {scores[name][0]:.2f} dB  SSIM {scores[name][1]:.4f}"],
                ["original", f"{hr.shape[1]}x{hr.shape[0]}; input {lr.shape[1]}x{lr.shape[0]}"]]
    picture = side_by_side([bic, sr, hr], captions, (top, left, bh, bw))
    write_image(output, picture)
    print(f"wrote {output} (bicubic | {name} | original, zoomed crops below)")
    return {"scores": scores, "seconds": seconds, "output": output}
