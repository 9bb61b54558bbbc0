"""d3sr-tiny against bicubic on the held-out photos of tools/tiny/photos.tsv (whole photos,
x4, PSNR/SSIM on Y with a 4-pixel border cropped, d3sr.metrics), as a Markdown table,
and the time of one 256x256 -> 1024x1024 upscale. Needs d3sr built and the photos
installed (tools/tiny/get_photos.sh); no torch.

    python tools/tiny/evaluate.py [--checkpoint DIR] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import d3sr
from d3sr import metrics
from d3sr._demo import bicubic_upscale, downscale
from photos import load_hr, read_photo_list  # tools/tiny/photos.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="generator folder (default: d3sr-tiny)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--color-fix", default="default", choices=["default", "none", "adain", "wavelet"],
                        help="default: the checkpoint's own (d3sr-tiny: wavelet)")
    parser.add_argument("--split", default="held_out", help="photos.tsv split: held_out, or validation (recipe choices)")
    args = parser.parse_args()
    d3sr.set_num_threads(args.threads)
    upscaler = d3sr.Upscaler.load(args.checkpoint)
    print(f"| {args.split.replace('_', '-')} photo (x4) | bicubic PSNR / SSIM | d3sr-tiny PSNR / SSIM | gain dB |")
    print("|---|---|---|---|")
    totals = []
    color_fix = None if args.color_fix == "none" else args.color_fix
    for path in read_photo_list(args.split):
        hr = load_hr(path)
        lr = downscale(hr)
        sr, bic = upscaler.upscale(lr, color_fix=color_fix), bicubic_upscale(lr)
        scores = [(metrics.psnr(x, hr, crop_border=4), metrics.ssim(x, hr, crop_border=4)) for x in (bic, sr)]
        totals.append([v for pair in scores for v in pair])
        name = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path)))) if "contents" in path \
            else os.path.splitext(os.path.basename(path))[0]
        print(f"| {name} ({hr.shape[1]}x{hr.shape[0]}) | {scores[0][0]:.2f} / {scores[0][1]:.4f} | "
              f"{scores[1][0]:.2f} / {scores[1][1]:.4f} | {scores[1][0] - scores[0][0]:+.2f} |")
    m = np.mean(totals, axis=0)
    print(f"| mean | {m[0]:.2f} / {m[1]:.4f} | {m[2]:.2f} / {m[3]:.4f} | {m[2] - m[0]:+.2f} |")
    image = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    upscaler.upscale(image)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        upscaler.upscale(image)
        times.append(time.perf_counter() - start)
    print(f"\n256x256 -> 1024x1024: median {np.median(times):.2f} s of {[round(t, 2) for t in times]} "
          f"({d3sr.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
