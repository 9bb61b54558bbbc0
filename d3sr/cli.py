"""The `d3sr` command: upscale images, score them, build checkpoints, try the pipeline.

    d3sr upscale IN... -o OUT [--checkpoint DIR] [--scale 4] [--device cpu] [--dtype fp32|fp16|bf16]
    d3sr eval --sr DIR --hr DIR [--metrics psnr,ssim,lpips,dists,ea_dists] [--crop-border N] [--csv FILE]
    d3sr make-checkpoint --sd DIR --text-embedding FILE -o DIR [--unet-lora F] [--vae-lora F] ...
    d3sr make-discriminator --sdxl DIR -o DIR [--conditioning F] [--lora F] [--head F] [--vae DIR] ...
    d3sr convert-osediff MODEL.pkl -o DIR
    d3sr convert-metric-weights [--alexnet F] [--vgg16 F] [--lpips-dir D] [--dists F] [-o FILE]
    d3sr demo [--photo FILE] [--checkpoint DIR] [-o d3sr_demo.png]
    d3sr demo --random-weights [--size 128] [--tiny]

Each subcommand's parser (in build_parser, or its add_<name>) names the run_<name>
function that carries it out.
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
    p.set_defaults(run=run_eval)


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
    p.set_defaults(run=run_convert_metric_weights)


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


def _images_in(paths):
    """Image files named or inside the folders named, in a stable order."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise CommandError(f"input not found: {path}")
    if not found:
        raise CommandError(f"no images in {', '.join(paths)}")
    return found


def write_image(path: str, image) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)


BUILTIN_NOTICE = ("d3sr upscale: no --checkpoint given, so using d3sr-tiny, the small model built into d3sr "
                  "(trained on 22 photos in under an hour on a CPU, for trying d3sr out). For D3SR's quality, "
                  "pass --checkpoint DIR: a generator folder made by `d3sr make-checkpoint` (see the README).")


def run_upscale(args) -> int:
    import d3sr

    inputs = _images_in(args.inputs)
    to_folder = len(inputs) > 1 or os.path.isdir(args.inputs[0]) or os.path.isdir(args.output)
    if args.threads:
        d3sr.set_num_threads(args.threads)
    if args.checkpoint is None:
        print(BUILTIN_NOTICE, file=sys.stderr)
    start = time.perf_counter()
    upscaler = d3sr.Upscaler.load(args.checkpoint, device=args.device, dtype=args.dtype)
    print(f"loaded {args.checkpoint or 'd3sr-tiny'} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    for i, path in enumerate(inputs):
        image = read_rgb(path)
        start = time.perf_counter()
        out = upscaler.upscale(image, scale=args.scale)
        target = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png") if to_folder \
            else args.output
        write_image(target, out)
        print(f"[{i + 1}/{len(inputs)}] {path} {image.shape[1]}x{image.shape[0]} -> {target} "
              f"{out.shape[1]}x{out.shape[0]} in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


def run_make_checkpoint(args) -> int:
    from .tools import make_generator_checkpoint

    path = make_generator_checkpoint(args.output, sd=args.sd, text_embedding=args.text_embedding,
                                     unet_lora=args.unet_lora, vae_lora=args.vae_lora, timestep=args.timestep,
                                     latent_formula=args.latent_formula, link=args.link)
    print(f"wrote {path}")
    return 0


def run_make_discriminator(args) -> int:
    from .tools import make_discriminator_checkpoint

    path = make_discriminator_checkpoint(args.output, sdxl=args.sdxl, conditioning=args.conditioning, lora=args.lora,
                                         head=args.head, head_hidden=args.head_hidden,
                                         head_activation=args.head_activation, seed=args.seed, vae=args.vae,
                                         link=args.link)
    print(f"wrote {path}")
    return 0


def run_convert_osediff(args) -> int:
    from .tools import convert_osediff

    for path in convert_osediff(args.pkl, args.output):
        print(f"wrote {path}")
    return 0


def run_demo(args) -> int:
    if args.random_weights:
        from .tools import demo as random_weights_demo

        random_weights_demo(size=args.size, tiny=args.tiny, output=args.output, threads=args.threads)
        return 0
    if args.size is not None or args.tiny:
        raise CommandError("--size and --tiny go with --random-weights")
    from .demo import demo

    demo(photo=args.photo, output=args.output, checkpoint=args.checkpoint, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3sr", description="D3SR one-step diffusion super-resolution "
                                                               "and image-quality metrics.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upscale", help="super-resolve image files with a generator checkpoint")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--checkpoint", help="generator folder with d3sr.json (default: d3sr-tiny, built in)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                   help="default: fp32 on the CPU, bf16 on CUDA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.set_defaults(run=run_upscale)

    add_eval(sub)

    p = sub.add_parser("make-checkpoint", help="assemble a generator checkpoint folder")
    p.add_argument("--sd", required=True, help="an SD 2.1-base diffusers folder (with unet/ and vae/)")
    p.add_argument("--text-embedding", required=True, help=".safetensors or .npy, [77, 1024]")
    p.add_argument("--unet-lora", help="LoRA for the UNet (file or PEFT folder)")
    p.add_argument("--vae-lora", help="LoRA for the VAE encoder")
    p.add_argument("--timestep", type=int, default=399, help="T_L (default 399)")
    p.add_argument("--latent-formula", default="epsilon", choices=("epsilon", "residual"))
    p.add_argument("--link", action="store_true", help="symlink unet/ and vae/ instead of copying them")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to create")
    p.set_defaults(run=run_make_checkpoint)

    p = sub.add_parser("make-discriminator", help="assemble a discriminator checkpoint folder")
    p.add_argument("--sdxl", required=True, help="an SDXL-base diffusers folder (with unet/)")
    p.add_argument("--conditioning", help=".safetensors: prompt_embeds, pooled_prompt_embeds, time_ids (default zeros)")
    p.add_argument("--lora", help="LoRA for the trunk (file or PEFT folder)")
    p.add_argument("--head", help="a trained head (.safetensors); default: a fresh one")
    p.add_argument("--head-hidden", type=int, default=256, help="hidden width of a fresh head")
    p.add_argument("--head-activation", default="silu", choices=("silu", "relu", "leaky_relu", "gelu"))
    p.add_argument("--seed", type=int, default=0, help="seed of a fresh head")
    p.add_argument("--vae", help="an SD 2.1 vae/ folder, to score images")
    p.add_argument("--link", action="store_true", help="symlink model folders instead of copying them")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to create")
    p.set_defaults(run=run_make_discriminator)

    p = sub.add_parser("convert-osediff", help="convert an OSEDiff LoRA .pkl into safetensors LoRA files")
    p.add_argument("pkl", help="OSEDiff's saved model (a torch pickle)")
    p.add_argument("-o", "--output", required=True, help="folder for unet_lora.safetensors and vae_lora.safetensors")
    p.set_defaults(run=run_convert_osediff)

    add_convert_metric_weights(sub)

    p = sub.add_parser("demo", help="super-resolve a shipped photo with d3sr-tiny: bicubic | d3sr-tiny | original",
                       description="Downscales a photo by 4 (PIL bicubic), upscales it back with bicubic and "
                                   "with the generator, prints PSNR/SSIM of both and writes a side-by-side "
                                   "picture with zoomed crops. No download needed.")
    p.add_argument("--photo", help="an image file (default: a held-out photo shipped with d3sr)")
    p.add_argument("--checkpoint", help="generator folder (default: d3sr-tiny)")
    p.add_argument("--random-weights", action="store_true",
                   help="instead: run the full SD 2.1-base generator on random weights (timing only; noise out)")
    p.add_argument("--size", type=int, default=None, help="with --random-weights: input side (default 128)")
    p.add_argument("--tiny", action="store_true", help="with --random-weights: a tiny architecture")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("-o", "--output", default="d3sr_demo.png")
    p.set_defaults(run=run_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CommandError, ValueError, TypeError, OSError, RuntimeError, MemoryError) as e:
        print(f"d3sr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
