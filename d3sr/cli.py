"""The `d3sr` command: upscale images, build checkpoints, try the pipeline.

    d3sr upscale IN... -o OUT --checkpoint DIR [--scale 4] [--device cpu] [--dtype fp32|fp16|bf16]
    d3sr make-checkpoint --sd DIR --text-embedding FILE -o DIR [--unet-lora F] [--vae-lora F] ...
    d3sr make-discriminator --sdxl DIR -o DIR [--conditioning F] [--lora F] [--head F] [--vae DIR] ...
    d3sr convert-osediff MODEL.pkl -o DIR
    d3sr demo [--size 128] [--tiny]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _images_in(paths):
    """Image files named or inside the folders named, in a stable order."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    if not found:
        raise FileNotFoundError(f"no images in {', '.join(paths)}")
    return found


def read_image(path: str):
    """An image file as H x W x 3 uint8."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_image(path: str, image) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)


def cmd_upscale(args) -> int:
    import d3sr

    inputs = _images_in(args.inputs)
    to_folder = len(inputs) > 1 or os.path.isdir(args.inputs[0]) or os.path.isdir(args.output)
    if args.threads:
        d3sr.set_num_threads(args.threads)
    start = time.perf_counter()
    upscaler = d3sr.Upscaler.load(args.checkpoint, device=args.device, dtype=args.dtype)
    print(f"loaded {args.checkpoint} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    for i, path in enumerate(inputs):
        image = read_image(path)
        start = time.perf_counter()
        out = upscaler.upscale(image, scale=args.scale)
        target = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png") if to_folder \
            else args.output
        write_image(target, out)
        print(f"[{i + 1}/{len(inputs)}] {path} {image.shape[1]}x{image.shape[0]} -> {target} "
              f"{out.shape[1]}x{out.shape[0]} in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


def cmd_make_checkpoint(args) -> int:
    from .tools import make_generator_checkpoint

    path = make_generator_checkpoint(args.output, sd=args.sd, text_embedding=args.text_embedding,
                                     unet_lora=args.unet_lora, vae_lora=args.vae_lora, timestep=args.timestep,
                                     latent_formula=args.latent_formula, link=args.link)
    print(f"wrote {path}")
    return 0


def cmd_make_discriminator(args) -> int:
    from .tools import make_discriminator_checkpoint

    path = make_discriminator_checkpoint(args.output, sdxl=args.sdxl, conditioning=args.conditioning, lora=args.lora,
                                         head=args.head, head_hidden=args.head_hidden,
                                         head_activation=args.head_activation, seed=args.seed, vae=args.vae,
                                         link=args.link)
    print(f"wrote {path}")
    return 0


def cmd_convert_osediff(args) -> int:
    from .tools import convert_osediff

    for path in convert_osediff(args.pkl, args.output):
        print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from .tools import demo

    demo(size=args.size, tiny=args.tiny, output=args.output, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3sr", description="D3SR one-step diffusion super-resolution.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upscale", help="super-resolve image files with a generator checkpoint")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--checkpoint", required=True, help="folder with d3sr.json")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                   help="default: fp32 on the CPU, bf16 on CUDA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.set_defaults(run=cmd_upscale)

    p = sub.add_parser("make-checkpoint", help="assemble a generator checkpoint folder")
    p.add_argument("--sd", required=True, help="an SD 2.1-base diffusers folder (with unet/ and vae/)")
    p.add_argument("--text-embedding", required=True, help=".safetensors or .npy, [77, 1024]")
    p.add_argument("--unet-lora", help="LoRA for the UNet (file or PEFT folder)")
    p.add_argument("--vae-lora", help="LoRA for the VAE encoder")
    p.add_argument("--timestep", type=int, default=399, help="T_L (default 399)")
    p.add_argument("--latent-formula", default="epsilon", choices=("epsilon", "residual"))
    p.add_argument("--link", action="store_true", help="symlink unet/ and vae/ instead of copying them")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to create")
    p.set_defaults(run=cmd_make_checkpoint)

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
    p.set_defaults(run=cmd_make_discriminator)

    p = sub.add_parser("convert-osediff", help="convert an OSEDiff LoRA .pkl into safetensors LoRA files")
    p.add_argument("pkl", help="OSEDiff's saved model (a torch pickle)")
    p.add_argument("-o", "--output", required=True, help="folder for unet_lora.safetensors and vae_lora.safetensors")
    p.set_defaults(run=cmd_convert_osediff)

    p = sub.add_parser("demo", help="run the whole generator on random weights (no download needed)")
    p.add_argument("--size", type=int, default=128, help="input side in pixels; the output is 4x")
    p.add_argument("--tiny", action="store_true", help="a tiny architecture instead of SD 2.1-base's")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("-o", "--output", default="d3sr_demo.png")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError) as e:
        print(f"d3sr {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
