"""Scoring super-resolved images against their ground truth, as `d3sr eval` and
d3sr.distributed.evaluate_dataset do: image files paired by name, the metric
functions with pyiqa's conventions (d3sr.metrics), one row per pair, the CSV
and the summary. Problems with the files or options are CommandErrors, which
the CLI prints without a traceback."""
from __future__ import annotations

import csv
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
METRICS = ("psnr", "ssim", "lpips", "dists", "ea_dists")
LOWER_IS_BETTER = {"lpips", "dists", "ea_dists"}


class CommandError(Exception):
    """A problem with the command's input, printed without a traceback."""


def write_csv(path: str, header: List[str], rows: List[list]) -> None:
    """A CSV file written under a temporary name and renamed when complete (no partial file)."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".partial")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


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
    """An image file as [H, W, 3] uint8, upright (EXIF orientation applied); 16 bits rounded to 8."""
    from .images import read_image

    try:
        return read_image(path).rgb8()
    except ValueError as e:  # a malformed file, named in the message
        raise CommandError(str(e)) from None


def parse_metrics(text: str) -> List[str]:
    """The metric names of a comma-separated --metrics value, checked."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in METRICS]
    if unknown or not chosen:
        raise CommandError(f"--metrics: unknown {unknown}; choose from {', '.join(METRICS)}")
    return chosen


def eval_scorers(chosen: Sequence[str], *, crop_border: int = 0, rgb: bool = False, ssim_downsample: bool = False,
                 lpips_net: str = "alex", weights: Optional[str] = None) -> Dict[str, Callable]:
    """{metric: score(sr, hr)} as `d3sr eval` scores (d3sr.distributed scores with the same ones).
    Missing weights fail here, not after the pixel metrics of many images."""
    import numpy as np

    from . import metrics as m

    y = not rgb
    score = {
        "psnr": lambda a, b: m.psnr(a, b, crop_border=crop_border, y_channel=y),
        "ssim": lambda a, b: m.ssim(a, b, crop_border=crop_border, y_channel=y, downsample=ssim_downsample),
        "lpips": lambda a, b: m.lpips(a, b, net=lpips_net, weights=weights),
        "dists": lambda a, b: m.dists(a, b, weights=weights),
        "ea_dists": lambda a, b: m.ea_dists(a, b, weights=weights),
    }
    probe = np.zeros((32, 32, 3), np.uint8)
    for name in chosen:
        if name not in ("psnr", "ssim"):
            try:
                score[name](probe, probe)
            except ValueError as e:  # a weight file without this network's part
                raise CommandError(str(e)) from None
    return {name: score[name] for name in chosen}


def score_pair(name: str, sr_path: str, hr_path: str, score: Dict[str, Callable]) -> list:
    """[name, score of each metric of `score` in order] for one image pair."""
    sr, hr = read_rgb(sr_path), read_rgb(hr_path)
    if sr.shape != hr.shape:
        raise CommandError(f"{name}: SR {os.path.basename(sr_path)} is {sr.shape[1]}x{sr.shape[0]}, "
                           f"HR {os.path.basename(hr_path)} is {hr.shape[1]}x{hr.shape[0]}")
    try:
        return [name] + [float(metric(sr, hr)) for metric in score.values()]
    except ValueError as e:
        raise CommandError(f"{name}: {e}") from None


def write_scores_csv(path: str, chosen: Sequence[str], rows: List[list]) -> None:
    write_csv(path, ["image"] + list(chosen), [[row[0]] + [f"{v:.6f}" for v in row[1:]] for row in rows])


def print_eval_summary(args, chosen: Sequence[str], rows: List[list]) -> None:
    import numpy as np

    means = np.mean(np.asarray([r[1:] for r in rows], np.float64), axis=0)
    conventions = (f"{len(rows)} image pairs; PSNR/SSIM on {'RGB' if args.rgb else 'Y (BT.601 YCbCr)'}, "
                   f"crop {args.crop_border}{', SSIM downsampled' if args.ssim_downsample else ''}; "
                   f"LPIPS {args.lpips_net} v0.1")
    print(conventions)
    print("  ".join(f"{(name + (' (lower better)' if name in LOWER_IS_BETTER else '')):>22}" for name in chosen))
    print("  ".join(f"{v:>22.4f}" for v in means))
    if args.csv:
        print(f"per-image scores: {args.csv}")
