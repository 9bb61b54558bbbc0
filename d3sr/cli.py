"""The d3sr command line: one function pair per subcommand (add_<name> builds
its parser, run_<name> runs it), listed in COMMANDS.

    d3sr eval --sr DIR --hr DIR [--metrics psnr,ssim,lpips,dists,ea_dists] [--crop-border N] [--csv FILE]
    d3sr convert-metric-weights [--alexnet F] [--vgg16 F] [--lpips-dir D] [--dists F] [-o FILE]
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
METRICS = ("psnr", "ssim", "lpips", "dists", "ea_dists")
LOWER_IS_BETTER = {"lpips", "dists", "ea_dists"}


class CommandError(Exception):
    """A problem with the command's input, printed without a traceback."""


# ---- progress ------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal, a line
    every 10% otherwise (logs)."""

    def __init__(self, total: int, stream=None, width: int = 30):
        self.total, self.width, self.stream = total, width, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start, self.last_tenth = time.monotonic(), -1

    def update(self, done: int, label: str = "") -> None:
        frac = done / self.total if self.total else 1.0
        if not self.tty:
            tenth = int(frac * 10)
            if tenth == self.last_tenth:
                return
            self.last_tenth = tenth
        filled = int(round(frac * self.width))
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (self.total - done) if done else 0.0
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} {elapsed:.0f}s<{eta:.0f}s {label}"
        self.stream.write(("\r" + line[:120] + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---- eval ----------------------------------------------------------------------------

def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score super-resolved images against their ground truth",
                       description="Pairs the images of --sr and --hr by file name (without extension; a file "
                                   "without its partner is an error), scores each pair, prints the means and "
                                   "writes one CSV row per image.")
    p.add_argument("--sr", required=True, help="folder of super-resolved images")
    p.add_argument("--hr", required=True, help="folder of ground-truth images")
    p.add_argument("--metrics", default="psnr,ssim,lpips,dists", help=f"comma-separated, of {', '.join(METRICS)}")
    p.add_argument("--crop-border", type=int, default=0, help="pixels dropped at each edge for PSNR and SSIM")
    p.add_argument("--rgb", action="store_true", help="PSNR/SSIM on RGB instead of the Y channel of YCbCr")
    p.add_argument("--ssim-downsample", action="store_true", help="SSIM with MATLAB's downsampling")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex")
    p.add_argument("--sr-suffix", default="", help="strip this from SR names before pairing (e.g. _x4_SR)")
    p.add_argument("--weights", help="metric weight file (default: $D3SR_METRICS_WEIGHTS, then "
                                     "~/.cache/d3sr/metrics.safetensors)")
    p.add_argument("--csv", help="write per-image scores here")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")


def list_images(folder: str, suffix: str = "") -> Dict[str, str]:
    """{name without extension (and suffix): path} of the images in folder."""
    if not os.path.isdir(folder):
        raise CommandError(f"not a folder: {folder}")
    found: Dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(os.path.join(folder, entry)):
            continue
        if suffix and stem.endswith(suffix):
            stem = stem[: -len(suffix)]
        if stem in found:
            raise CommandError(f"{folder} has two images named {stem!r}: {os.path.basename(found[stem])} and {entry}")
        found[stem] = os.path.join(folder, entry)
    if not found:
        raise CommandError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return found


def pair_images(sr_dir: str, hr_dir: str, suffix: str = "") -> List[Tuple[str, str, str]]:
    """[(name, sr path, hr path)] paired by name; a file without its partner is an error naming it."""
    sr, hr = list_images(sr_dir, suffix), list_images(hr_dir)
    lonely_sr, lonely_hr = sorted(set(sr) - set(hr)), sorted(set(hr) - set(sr))
    if lonely_sr or lonely_hr:
        lines = [f"  {os.path.basename(sr[n])} in {sr_dir} has no ground truth named {n}.* in {hr_dir}" for n in lonely_sr]
        lines += [f"  {os.path.basename(hr[n])} in {hr_dir} has no SR image named {n}{suffix}.* in {sr_dir}" for n in lonely_hr]
        raise CommandError("images do not pair up by name (pairing is by name, never by order):\n" + "\n".join(lines[:20])
                           + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""))
    return [(name, sr[name], hr[name]) for name in sorted(sr)]


def read_rgb(path: str):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr"):
            raise CommandError(f"{path}: {image.mode} images are not supported; d3sr eval reads 8-bit images")
        return np.asarray(image.convert("RGB"))


def run_eval(args) -> int:
    import numpy as np

    from . import metrics as m
    from ._native import _core

    chosen = [s.strip() for s in args.metrics.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in METRICS]
    if unknown or not chosen:
        raise CommandError(f"--metrics: unknown {unknown}; choose from {', '.join(METRICS)}")
    if args.crop_border < 0:
        raise CommandError("--crop-border must be >= 0")
    if args.threads:
        _core.set_num_threads(args.threads)
    pairs = pair_images(args.sr, args.hr, args.sr_suffix)
    y = not args.rgb
    score = {
        "psnr": lambda a, b: m.psnr(a, b, crop_border=args.crop_border, y_channel=y),
        "ssim": lambda a, b: m.ssim(a, b, crop_border=args.crop_border, y_channel=y, downsample=args.ssim_downsample),
        "lpips": lambda a, b: m.lpips(a, b, net=args.lpips_net, weights=args.weights),
        "dists": lambda a, b: m.dists(a, b, weights=args.weights),
        "ea_dists": lambda a, b: m.ea_dists(a, b, weights=args.weights),
    }
    # Missing weights fail now, not after the pixel metrics of many images.
    probe = np.zeros((32, 32, 3), np.uint8)
    for name in chosen:
        if name not in ("psnr", "ssim"):
            try:
                score[name](probe, probe)
            except ValueError as e:  # a weight file without this network's part
                raise CommandError(str(e)) from None

    rows = []
    progress = Progress(len(pairs))
    try:
        for i, (name, sr_path, hr_path) in enumerate(pairs):
            progress.update(i, name)
            sr, hr = read_rgb(sr_path), read_rgb(hr_path)
            if sr.shape != hr.shape:
                raise CommandError(f"{name}: SR {os.path.basename(sr_path)} is {sr.shape[1]}x{sr.shape[0]}, "
                                   f"HR {os.path.basename(hr_path)} is {hr.shape[1]}x{hr.shape[0]}")
            try:
                rows.append([name] + [float(score[metric](sr, hr)) for metric in chosen])
            except ValueError as e:
                raise CommandError(f"{name}: {e}") from None
        progress.update(len(pairs), "done")
    finally:
        progress.close()

    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image"] + chosen)
            for row in rows:
                writer.writerow([row[0]] + [f"{v:.6f}" for v in row[1:]])
    means = np.mean(np.asarray([r[1:] for r in rows], np.float64), axis=0)
    conventions = (f"{len(rows)} image pairs; PSNR/SSIM on {'RGB' if args.rgb else 'Y (BT.601 YCbCr)'}, "
                   f"crop {args.crop_border}{', SSIM downsampled' if args.ssim_downsample else ''}; "
                   f"LPIPS {args.lpips_net} v0.1")
    print(conventions)
    print("  ".join(f"{(name + (' (lower better)' if name in LOWER_IS_BETTER else '')):>22}" for name in chosen))
    print("  ".join(f"{v:>22.4f}" for v in means))
    if args.csv:
        print(f"per-image scores: {args.csv}")
    return 0


# ---- convert-metric-weights ----------------------------------------------------------

def add_convert_metric_weights(sub) -> None:
    p = sub.add_parser("convert-metric-weights", help="make the LPIPS/DISTS weight file from .pth files (needs torch)",
                       description="Converts torchvision's ImageNet AlexNet/VGG16 weights, the lpips package's "
                                   "v0.1 linear layers and DISTS_pytorch's alpha/beta into the one safetensors "
                                   "file d3sr.metrics reads. A file not given is looked for where torch.hub and "
                                   "the installed lpips / DISTS_pytorch packages keep it.")
    p.add_argument("--alexnet", help="torchvision's alexnet-owt-7be5be79.pth (LPIPS alex)")
    p.add_argument("--vgg16", help="torchvision's vgg16-397923af.pth (LPIPS vgg, DISTS)")
    p.add_argument("--lpips-dir", help="the lpips package's weights/v0.1 folder (alex.pth, vgg.pth)")
    p.add_argument("--dists", help="DISTS_pytorch's weights.pt (alpha, beta)")
    p.add_argument("-o", "--output", help="where to write (default: ~/.cache/d3sr/metrics.safetensors)")
    p.add_argument("--no-search", action="store_true", help="use only the files given")


def run_convert_metric_weights(args) -> int:
    from . import metric_weights as mw

    given = {"alexnet": args.alexnet, "vgg16": args.vgg16, "lpips_dir": args.lpips_dir, "dists": args.dists}
    if not args.no_search:
        for key, path in mw.find_defaults().items():
            if given[key] is None and path is not None:
                given[key] = path
                print(f"found {key}: {path}")
    if not any(given.values()):
        raise CommandError("no weights given or found; pass --alexnet, --vgg16, --lpips-dir and/or --dists")
    try:
        path, tensors = mw.convert(args.output, **given)
    except (ImportError, FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    ready = [mw.LABELS[n] for n in mw.networks_in(tensors)]
    print(f"wrote {path}: {len(tensors)} tensors; ready: {', '.join(ready) or 'none yet'}")
    return 0


COMMANDS = {
    "eval": (add_eval, run_eval),
    "convert-metric-weights": (add_convert_metric_weights, run_convert_metric_weights),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="d3sr", description="D3SR super-resolution and image-quality metrics")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except (CommandError, FileNotFoundError) as e:
        print(f"d3sr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
