"""The `d3sr` command: upscale images, score them, build checkpoints, try the pipeline.

    d3sr upscale IN... -o OUT [--checkpoint DIR] [--scale 4] [--device cpu] [--dtype fp32|fp16|bf16]
                 [--quality 95] [--format png|jpg|webp|tiff|same] [--skip-existing]
    d3sr eval --sr DIR --hr DIR [--metrics psnr,ssim,lpips,dists,ea_dists] [--crop-border N] [--csv FILE]
    d3sr score IMAGES... --discriminator DIR [-t 250] [--seed 0] [--heatmap OUT_DIR] [--csv FILE]
    d3sr upscale ... / d3sr eval ... --ray [ADDRESS] [--workers N]    (on Ray Data: d3sr.distributed)
    d3sr make-checkpoint --sd DIR --text-embedding FILE -o DIR [--unet-lora F] [--vae-lora F] ...
    d3sr make-discriminator --sdxl DIR -o DIR [--conditioning F] [--lora F] [--head F] [--vae DIR] ...
    d3sr convert-osediff MODEL.pkl -o DIR
    d3sr convert-metric-weights [--alexnet F] [--vgg16 F] [--lpips-dir D] [--dists F] [-o FILE]
    d3sr demo [--photo FILE] [--checkpoint DIR] [-o d3sr_demo.png]
    d3sr demo --random-weights [--size 128] [--tiny]

Each subcommand is its run_<name> function, registered with @command next to the
function that adds its arguments; build_parser lists them in LISTED's order.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ._evaluation import (IMAGE_EXTENSIONS, METRICS, CommandError, eval_scorers, pair_images, parse_metrics,
                          print_eval_summary, score_pair, write_csv, write_scores_csv)

# ---- the registry --------------------------------------------------------------------

# name -> (help, further add_parser options, arguments(parser), run(args) -> exit status)
COMMANDS: Dict[str, Tuple[str, dict, Callable[[argparse.ArgumentParser], None], Callable]] = {}
# The order `d3sr -h` lists them in: the main job first.
LISTED = ("upscale", "eval", "score", "make-checkpoint", "make-discriminator", "convert-osediff",
          "convert-metric-weights", "demo")


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None], **options):
    """Registers the decorated run(args) as `d3sr NAME`: the one way a subcommand is
    added. arguments(parser) adds its options; options go to add_parser (description)."""
    def register(run: Callable) -> Callable:
        COMMANDS[name] = (help, options, arguments, run)
        return run
    return register


# ---- eval ----------------------------------------------------------------------------

def _eval_arguments(p: argparse.ArgumentParser) -> None:
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
    add_ray_options(p)


def add_ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray Data (d3sr.distributed, pip install 'd3sr[ray]'): a local Ray instance, "
                        "or the cluster at ADDRESS ('auto', 'ray://HEAD:10001')")
    p.add_argument("--workers", type=int, help="with --ray: Ray actors (default: one per CPU, or per GPU)")


@command("eval", help="score super-resolved images against their ground truth",
         description="Pairs the images of --sr and --hr by file name (without extension; a file without its partner "
                     "is an error), scores each pair, prints the means and writes one CSV row per image.",
         arguments=_eval_arguments)
def run_eval(args) -> int:
    from ._native import _core

    if args.ray is not None:
        from .distributed import eval_command
        return eval_command(args)
    chosen = parse_metrics(args.metrics)
    if args.crop_border < 0:
        raise CommandError("--crop-border must be >= 0")
    if args.threads:
        _core.set_num_threads(args.threads)
    pairs = pair_images(args.sr, args.hr, args.sr_suffix)
    score = eval_scorers(chosen, crop_border=args.crop_border, rgb=args.rgb, ssim_downsample=args.ssim_downsample,
                         lpips_net=args.lpips_net, weights=args.weights)
    rows = []
    with _progress(len(pairs), "eval") as progress:
        for name, sr_path, hr_path in pairs:
            progress.set_postfix_str(name, refresh=False)
            rows.append(score_pair(name, sr_path, hr_path, score))
            progress.update()
    if args.csv:
        write_scores_csv(args.csv, chosen, rows)
    print_eval_summary(args, chosen, rows)
    return 0


# ---- score ---------------------------------------------------------------------------

def _score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--discriminator", required=True, help="discriminator checkpoint folder (with a vae/)")
    p.add_argument("-t", "--timestep", type=int, default=250, help="noise timestep, 0..999 (default 250)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--heatmap", metavar="OUT_DIR", help="write NAME_realness.png heat maps here")
    p.add_argument("--csv", help="write per-image scores here")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")


@command("score", help="the discriminator's realness of image files, with heat maps",
         description="Encodes each image with the discriminator's VAE, noises it to timestep t (seeded, the same "
                     "noise for every image of a size) and prints the mean probability of being real over its "
                     "patches (one per 4x4 latent pixels: 32x32 pixels with SD's VAE, 16x16 with d3sr-tiny's). An "
                     "image whose sides are not multiples of the patch is scored on its top-left part that is.",
         arguments=_score_arguments)
def run_score(args) -> int:
    import numpy as np

    from . import losses
    from ._discriminator import PATCH, Discriminator
    from .images import read_image
    from .viz import heatmap_rgb

    if not 0 <= args.timestep <= 999:
        raise CommandError(f"-t must be a timestep from 0 to 999, not {args.timestep}")
    if not 0 <= args.seed < 2 ** 63:
        raise CommandError(f"--seed must be from 0 to 2^63 - 1, not {args.seed}")
    inputs = _images_in(args.images)
    heatmaps: Dict[str, str] = {}
    if args.heatmap:
        for path in inputs:
            target = os.path.join(args.heatmap, os.path.splitext(os.path.basename(path))[0] + "_realness.png")
            key = os.path.normcase(os.path.abspath(target))
            if key in heatmaps.values():
                other = next(p for p, t in heatmaps.items() if t == key)
                raise CommandError(f"{other} and {path} would both have their heat map written to {target}")
            if os.path.exists(target) and any(os.path.samefile(target, p) for p in inputs):
                raise CommandError(f"{target} is an input; d3sr never writes over its inputs, choose another --heatmap")
            heatmaps[path] = key
    if args.threads:
        from ._native import _core

        _core.set_num_threads(args.threads)
    disc = Discriminator.load(args.discriminator)
    if disc.vae is None:
        raise CommandError(f"{args.discriminator} has no VAE ('vae' in its d3sr.json) to encode images with")
    multiple = disc.vae.downscale * PATCH  # pixels per patch side
    rows = []
    with _progress(len(inputs), "score") as progress:
        for path in inputs:
            picture = read_image(path)
            h, w = (side - side % multiple for side in picture.pixels.shape[:2])
            if h == 0 or w == 0:
                raise CommandError(f"{path} is {picture.size[0]}x{picture.size[1]}: smaller than one "
                                   f"{multiple}x{multiple} patch")
            rgb = picture.rgb()[:h, :w]
            logits = disc.score_images(np.ascontiguousarray(rgb), args.timestep, seed=args.seed)  # [1, 1, h/32, w/32]
            p = losses.probabilities(logits)[0, 0]
            rows.append((path, float(p.mean()), float(logits.mean()), p.shape))
            if args.heatmap:
                from .images import write_image as write

                write(heatmaps[path], heatmap_rgb(rgb, p))
            progress.update()
    if args.csv:
        write_csv(args.csv, ["image", "p_real", "logit", "patches"],
                  [[path, f"{p_real:.6f}", f"{logit:.6f}", f"{shape[1]}x{shape[0]}"] for path, p_real, logit, shape in rows])
    print(f"{len(rows)} images; discriminator {args.discriminator}, t = {args.timestep}, seed {args.seed}")
    print(f"{'mean P(real)':>12}  {'mean logit':>10}  {'patches':>8}  image")
    for path, p_real, logit, shape in rows:
        print(f"{p_real:>12.4f}  {logit:>10.4f}  {shape[1]:>3}x{shape[0]:<4}  {path}")
    if len(rows) > 1:
        print(f"{np.mean([r[1] for r in rows]):>12.4f}  {np.mean([r[2] for r in rows]):>10.4f}  {'':>8}  (mean)")
    if args.heatmap:
        print(f"heat maps: {args.heatmap}")
    if args.csv:
        print(f"per-image scores: {args.csv}")
    return 0


# ---- convert-metric-weights ----------------------------------------------------------

def _convert_metric_weights_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alexnet", help="torchvision's alexnet-owt-7be5be79.pth (LPIPS alex)")
    p.add_argument("--vgg16", help="torchvision's vgg16-397923af.pth (LPIPS vgg, DISTS)")
    p.add_argument("--lpips-dir", help="the lpips package's weights/v0.1 folder (alex.pth, vgg.pth)")
    p.add_argument("--dists", help="DISTS_pytorch's weights.pt (alpha, beta)")
    p.add_argument("-o", "--output", help="where to write (default: ~/.cache/d3sr/metrics.safetensors)")
    p.add_argument("--no-search", action="store_true", help="use only the files given")


@command("convert-metric-weights", help="make the LPIPS/DISTS weight file from .pth files (needs torch)",
         description="Converts torchvision's ImageNet AlexNet/VGG16 weights, the lpips package's v0.1 linear layers "
                     "and DISTS_pytorch's alpha/beta into the one safetensors file d3sr.metrics reads. A file not "
                     "given is looked for where torch.hub and the installed lpips / DISTS_pytorch packages keep it.",
         arguments=_convert_metric_weights_arguments)
def run_convert_metric_weights(args) -> int:
    from . import _metric_weights as mw

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


def _progress(total: int, what: str):
    """A tqdm bar on stderr (a line per update where stderr is no terminal, e.g. a log)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="image", file=sys.stderr, dynamic_ncols=True,
                mininterval=0 if not sys.stderr.isatty() else 0.1)


def _images_in(paths):
    """Image files named or inside the folders named, in a stable order."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, f) for f in os.listdir(path)
                            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, f)))
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise CommandError(f"input not found: {path}")
    if not found:
        raise CommandError(f"no images in {', '.join(paths)}")
    return found


def write_image(path: str, image, **options) -> str:
    """Writes an array or d3sr.images.Picture atomically (see d3sr.images.write_image)."""
    from .images import write_image as write

    return write(path, image, **options)


def plan_outputs(inputs: List[str], given: Sequence[str], output: str, fmt: str) -> List[Tuple[str, str]]:
    """[(input, output path)] for `d3sr upscale`, refusing before any work whatever would
    destroy data: an output that is an input, an output folder that is an input folder, and
    two inputs that would be written to the same file."""
    from .images import output_format

    def same(a: str, b: str) -> bool:  # symlinks and hard links included
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))

    to_folder = len(inputs) > 1 or any(os.path.isdir(p) for p in given) or os.path.isdir(output)
    if to_folder and os.path.isfile(output):
        raise CommandError(f"-o {output} is a file; several inputs need an output folder")
    if to_folder:
        for folder in {os.path.dirname(p) or "." for p in inputs}:
            if same(folder, output):
                raise CommandError(f"-o {output} is the folder of the inputs; write the results to another folder")
        extension = {"same": None, "jpg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif"}[fmt]
        plan = []
        for path in inputs:
            stem, ext = os.path.splitext(os.path.basename(path))
            plan.append((path, os.path.join(output, stem + (extension or ext))))
    else:
        plan = [(inputs[0], output)]
    written: Dict[str, str] = {}
    for path, target in plan:
        try:
            output_format(target)
        except ValueError as e:
            raise CommandError(str(e)) from None
        if any(os.path.exists(target) and same(target, p) for p in inputs):
            raise CommandError(f"{target} is an input; d3sr never writes over its inputs, choose another -o")
        key = os.path.normcase(os.path.abspath(target))
        if key in written:
            raise CommandError(f"{written[key]} and {path} would both be written to {target}; rename one"
                               + (", or keep each input's format with --format same" if fmt != "same" else ""))
        written[key] = path
    return plan


BUILTIN_NOTICE = ("d3sr upscale: no --checkpoint given, so using d3sr-tiny, the small model built into d3sr "
                  "(trained on 22 photos in under an hour on a CPU, for trying d3sr out). For D3SR's quality, "
                  "pass --checkpoint DIR: a generator folder made by `d3sr make-checkpoint` (see the README).")


def _upscale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--checkpoint", help="generator folder with d3sr.json (default: d3sr-tiny, built in)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                   help="default: fp32 on the CPU, bf16 on CUDA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--quality", type=int, default=95, help="JPEG and WebP quality, 1..100 (default 95)")
    p.add_argument("--format", default="png", choices=("png", "jpg", "webp", "tiff", "same"),
                   help="format of the files written into an output folder (default png; same: each input's)")
    p.add_argument("--skip-existing", action="store_true", help="leave inputs whose output file exists")
    # "default": the checkpoint's d3sr.json; OSEDiff's 96, 32, 1024, 224 unless it names others
    p.add_argument("--latent-tile", type=_tile_size, default="default",
                   help="UNet tile in latent pixels, a multiple of 8, or 'none' (default: the checkpoint's; "
                        "OSEDiff's 96 unless it names one; d3sr-tiny 256)")
    p.add_argument("--latent-overlap", type=_overlap, default="default",
                   help="overlap of UNet tiles in latent pixels (default: the checkpoint's; 32, d3sr-tiny 64)")
    p.add_argument("--encoder-tile", type=_tile_size, default="default",
                   help="VAE encoder tile in pixels, a multiple of 8, or 'none' (default: the checkpoint's; "
                        "1024, d3sr-tiny 2048)")
    p.add_argument("--decoder-tile", type=_tile_size, default="default",
                   help="VAE decoder tile in latent pixels, a multiple of 8, or 'none' (default: the checkpoint's; "
                        "224, d3sr-tiny 512)")
    p.add_argument("--color-fix", default="default", choices=("default", "none", "adain", "wavelet"),
                   help="StableSR's colour fix against the bicubic-upsampled input; default: the checkpoint's "
                        "(d3sr-tiny: wavelet; none unless its d3sr.json names one)")
    p.add_argument("--vae-statistics", default="exact", choices=("exact", "estimated"),
                   help="GroupNorm statistics of a tiled VAE stage: exact (pooled over the tiles, parked in memory "
                        "meanwhile; default) or estimated (from a small pass over the resampled image: one tile's "
                        "memory at any size, approximate)")
    add_ray_options(p)


@command("upscale", help="super-resolve image files (with the built-in d3sr-tiny or a checkpoint)", arguments=_upscale_arguments)
def run_upscale(args) -> int:
    import d3sr
    from tqdm import tqdm

    from .images import check_writable, read_image, upscale_picture

    if args.ray is not None:
        from .distributed import upscale_command
        return upscale_command(args)
    if not 1 <= args.quality <= 100:
        raise CommandError(f"--quality must be from 1 to 100, not {args.quality}")
    plan = plan_outputs(_images_in(args.inputs), args.inputs, args.output, args.format)
    if args.skip_existing:
        todo = [(path, target) for path, target in plan if not os.path.exists(target)]
        if len(todo) < len(plan):
            print(f"skipping {len(plan) - len(todo)} of {len(plan)} images whose output exists", file=sys.stderr)
        plan = todo
        if not plan:
            return 0
    if args.threads:
        d3sr.set_num_threads(args.threads)
    if args.checkpoint is None:
        print(BUILTIN_NOTICE, file=sys.stderr)
    start = time.perf_counter()
    upscaler = d3sr.Upscaler.load(args.checkpoint, device=args.device, dtype=args.dtype)
    print(f"loaded {args.checkpoint or 'd3sr-tiny'} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    tiles = {"latent_tile": args.latent_tile, "latent_overlap": args.latent_overlap,
             "encoder_tile": args.encoder_tile, "decoder_tile": args.decoder_tile}
    color_fix = None if args.color_fix == "none" else args.color_fix
    with _progress(len(plan), "upscale") as progress:
        for path, target in plan:
            picture = read_image(path)
            check_writable(target, picture)  # before the model's work, not after
            start = time.perf_counter()

            def run(rgb):  # with a bar over the tiles of this image when it has several
                steps = upscaler.progress_steps(rgb.shape, args.scale, **tiles)
                with tqdm(total=steps, unit="tile", leave=False, disable=steps == 0, file=sys.stderr,
                          desc=os.path.basename(path)) as bar:
                    return upscaler.upscale(rgb, scale=args.scale, color_fix=color_fix, progress=bar.update,
                                            vae_statistics=args.vae_statistics, **tiles)

            out = upscale_picture(picture, run)
            write_image(target, out, quality=args.quality)
            progress.write(f"{path} {picture.size[0]}x{picture.size[1]} -> {target} {out.size[0]}x{out.size[1]} "
                           f"in {time.perf_counter() - start:.2f} s", file=sys.stderr)
            progress.update()
    return 0


def _tile_size(text: str):
    """A tile size on the command line: an integer, 'none' for no tiling, or 'default'."""
    return None if text.lower() == "none" else _integer_or_default(text, "an integer, 'none' or 'default'")


def _overlap(text: str):
    """A tile overlap on the command line: an integer or 'default'."""
    return _integer_or_default(text, "an integer or 'default'")


def _integer_or_default(text: str, expected: str):
    if text.lower() == "default":
        return "default"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _make_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sd", required=True, help="an SD 2.1-base diffusers folder (with unet/ and vae/)")
    p.add_argument("--text-embedding", required=True, help=".safetensors or .npy, [77, 1024]")
    p.add_argument("--unet-lora", help="LoRA for the UNet (file or PEFT folder)")
    p.add_argument("--vae-lora", help="LoRA for the VAE encoder")
    p.add_argument("--timestep", type=int, default=399, help="T_L (default 399)")
    p.add_argument("--latent-formula", default="epsilon", choices=("epsilon", "residual"))
    p.add_argument("--link", action="store_true", help="symlink unet/ and vae/ instead of copying them")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to create")


@command("make-checkpoint", help="assemble a generator checkpoint folder", arguments=_make_checkpoint_arguments)
def run_make_checkpoint(args) -> int:
    from ._tools import make_generator_checkpoint

    path = make_generator_checkpoint(args.output, sd=args.sd, text_embedding=args.text_embedding,
                                     unet_lora=args.unet_lora, vae_lora=args.vae_lora, timestep=args.timestep,
                                     latent_formula=args.latent_formula, link=args.link)
    print(f"wrote {path}")
    return 0


def _make_discriminator_arguments(p: argparse.ArgumentParser) -> None:
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


@command("make-discriminator", help="assemble a discriminator checkpoint folder",
         arguments=_make_discriminator_arguments)
def run_make_discriminator(args) -> int:
    from ._tools import make_discriminator_checkpoint

    path = make_discriminator_checkpoint(args.output, sdxl=args.sdxl, conditioning=args.conditioning, lora=args.lora,
                                         head=args.head, head_hidden=args.head_hidden,
                                         head_activation=args.head_activation, seed=args.seed, vae=args.vae,
                                         link=args.link)
    print(f"wrote {path}")
    return 0


def _convert_osediff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pkl", help="OSEDiff's saved model (a torch pickle)")
    p.add_argument("-o", "--output", required=True, help="folder for unet_lora.safetensors and vae_lora.safetensors")


@command("convert-osediff", help="convert an OSEDiff LoRA .pkl into safetensors LoRA files",
         arguments=_convert_osediff_arguments)
def run_convert_osediff(args) -> int:
    from ._tools import convert_osediff

    for path in convert_osediff(args.pkl, args.output):
        print(f"wrote {path}")
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--photo", help="an image file (default: a held-out photo shipped with d3sr)")
    p.add_argument("--checkpoint", help="generator folder (default: d3sr-tiny)")
    p.add_argument("--random-weights", action="store_true",
                   help="instead: run the full SD 2.1-base generator on random weights (timing only; noise out)")
    p.add_argument("--size", type=int, default=None, help="with --random-weights: input side (default 128)")
    p.add_argument("--tiny", action="store_true", help="with --random-weights: a tiny architecture")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("-o", "--output", default="d3sr_demo.png")


@command("demo", help="super-resolve a shipped photo with d3sr-tiny: bicubic | d3sr-tiny | original",
         description="Downscales a photo by 4 (PIL bicubic), upscales it back with bicubic and with the generator, "
                     "prints PSNR/SSIM of both and writes a side-by-side picture with zoomed crops. No download "
                     "needed.",
         arguments=_demo_arguments)
def run_demo(args) -> int:
    if args.random_weights:
        from ._tools import demo as random_weights_demo

        random_weights_demo(size=args.size, tiny=args.tiny, output=args.output, threads=args.threads)
        return 0
    if args.size is not None or args.tiny:
        raise CommandError("--size and --tiny go with --random-weights")
    from ._demo import demo

    demo(photo=args.photo, output=args.output, checkpoint=args.checkpoint, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3sr", description="D3SR one-step diffusion super-resolution "
                                                               "and image-quality metrics.")
    sub = parser.add_subparsers(dest="command", required=True)
    assert sorted(LISTED) == sorted(COMMANDS), "every registered command is listed, once"
    for name in LISTED:
        help_, options, arguments, run = COMMANDS[name]
        parser_ = sub.add_parser(name, help=help_, **options)
        arguments(parser_)
        parser_.set_defaults(run=run)
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
