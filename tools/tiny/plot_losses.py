"""Draws d3sr-tiny's training curves from tools/train_tiny.py's log.csv (PIL only:
matplotlib is not at hand everywhere).

    python tools/tiny/plot_losses.py WORKDIR/log.csv -o docs/d3sr_tiny_training.png

Left: the generator's losses (pixel L1, Sobel-edge L1, the L1 of 4x4 means, the VAE's
HR reconstruction, the adversarial term) and the discriminator's BCE, each a 25-step
moving average. Right: mean PSNR (Y, border 4) of the EMA generator and of bicubic on
the whole validation photos, as logged.
"""
from __future__ import annotations

import argparse
import csv

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SERIES = [("pixel L1", 3, (31, 119, 180)), ("edge L1", 4, (255, 127, 14)), ("4x4-mean L1", 5, (140, 86, 75)),
          ("HR reconstruction", 6, (44, 160, 44)), ("adversarial (G)", 7, (214, 39, 40)),
          ("discriminator", 8, (148, 103, 189))]
W, H, MARGIN = 620, 420, 60


def read(path: str):
    rows = [r for r in csv.reader(open(path)) if r]
    steps = np.array([float(r[0]) for r in rows])
    columns = {i: np.array([float(r[i]) for r in rows]) for _, i, _ in SERIES}
    val = [(float(r[0]), float(r[9]), float(r[10])) for r in rows if len(r) > 10 and r[9] != ""]
    return steps, columns, val


def smooth(y: np.ndarray, n: int = 25) -> np.ndarray:
    kernel = np.ones(min(n, len(y))) / min(n, len(y))
    return np.convolve(np.pad(y, (len(kernel) // 2, len(kernel) - 1 - len(kernel) // 2), mode="edge"), kernel, "valid")


def panel(draw, font, x0, title, xs, curves, ylabel, log=False):
    """Axes at x0 with curves [(label, ys, colour)] over xs."""
    left, top, right, bottom = x0 + MARGIN, 40, x0 + W - 10, H - 50
    ys_all = np.concatenate([np.log10(np.maximum(y, 1e-2)) if log else y for _, y, _ in curves])
    lo, hi = float(ys_all.min()), float(ys_all.max())
    hi = hi if hi > lo else lo + 1
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    sx = lambda v: left + (v - xs.min()) / max(xs.max() - xs.min(), 1) * (right - left)
    sy = lambda v: bottom - ((np.log10(max(v, 1e-2)) if log else v) - lo) / (hi - lo) * (bottom - top)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text((left, 12), title, fill=(0, 0, 0), font=font)
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        y = bottom - (bottom - top) * k / 4
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((x0 + 4, y - 7), f"{10 ** v:.3g}" if log else f"{v:.1f}", fill=(0, 0, 0), font=font)
    for k in range(5):
        v = xs.min() + (xs.max() - xs.min()) * k / 4
        draw.text((sx(v) - 10, bottom + 6), f"{v:.0f}", fill=(0, 0, 0), font=font)
    draw.text(((left + right) // 2 - 20, bottom + 24), "step", fill=(0, 0, 0), font=font)
    draw.text((x0 + 4, top - 18), ylabel, fill=(0, 0, 0), font=font)
    for i, (label, ys, colour) in enumerate(curves):
        cx = xs if len(ys) == len(xs) else ys[1]
        cy = ys if len(ys) == len(xs) else ys[0]
        points = [(sx(a), sy(b)) for a, b in zip(cx, cy)]
        draw.line(points, fill=colour, width=2)
        draw.text((right - 170, top + 6 + 16 * i), label, fill=colour, font=font)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    steps, columns, val = read(args.log)
    image = Image.new("RGB", (2 * W, H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:
        font = ImageFont.load_default()
    curves = [(label, smooth(columns[i]), colour) for label, i, colour in SERIES if np.any(columns[i] > 0)]
    panel(draw, font, 0, "training losses (25-step mean)", steps, curves, "loss (log scale)", log=True)
    if val:
        v = np.array(val)
        panel(draw, font, W, "validation photos (whole)", v[:, 0],
              [("d3sr-tiny (EMA)", v[:, 1], (31, 119, 180)), ("bicubic", v[:, 2], (120, 120, 120))], "PSNR-Y dB")
    image.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
