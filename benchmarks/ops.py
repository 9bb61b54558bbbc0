"""Times every op of the core at the shapes Stable Diffusion uses, on each backend.

    python benchmarks/ops.py [--devices cpu[,cuda]] [--dtypes fp32[,fp16,bf16]] \
        [--size 512] [--runs 5] [--threads 2] [--only conv2d,attention]

Shapes are those of the D3SR generator at a size x size output (x4, SD 2.1-base
VAE and UNet, latent size/8) and of the LPIPS/DISTS backbones on a size x size
image. Each case runs once to warm up, then --runs times through
d3sr._core.op (upload, the op, download: the host transfers are included, so
on CUDA small ops measure mostly the transfer); the median is printed with the
arithmetic rate where the op has one. Every op in the core's table must have a
case here: a new op without one stops the script.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np


def cases(size: int):
    """(label, op, array shapes, scalars, multiply-adds) at a size x size output."""
    s, lat = size, size // 8
    tokens = lat * lat
    return [
        ("VAE decoder top conv 3x3", "conv2d", [(1, s, s, 128), (128, 128, 3, 3), (128,)], {"padding": (1, 1, 1, 1)},
         s * s * 128 * 128 * 9),
        ("VAE encoder downsample", "conv2d", [(1, s, s, 128), (128, 128, 3, 3), (128,)],
         {"stride": 2, "padding": (0, 1, 0, 1)}, (s // 2) ** 2 * 128 * 128 * 9),
        ("UNet conv 3x3, 320", "conv2d", [(1, lat, lat, 320), (320, 320, 3, 3), (320,)], {"padding": (1, 1, 1, 1)},
         tokens * 320 * 320 * 9),
        ("UNet conv 1x1 shortcut", "conv2d", [(1, lat, lat, 320), (640, 320, 1, 1), (640,)], {}, tokens * 320 * 640),
        ("UNet GEGLU projection", "linear", [(tokens, 320), (2560, 320), (2560,)], {}, tokens * 320 * 2560),
        ("UNet cross-attention k", "linear", [(77, 1024), (320, 1024)], {}, 77 * 1024 * 320),
        ("VAE GroupNorm+SiLU, top", "group_norm", [(1, s, s, 128), (128,), (128,)],
         {"groups": 32, "eps": 1e-6, "silu": True}, None),
        ("UNet GroupNorm", "group_norm", [(1, lat, lat, 320), (320,), (320,)], {"groups": 32, "eps": 1e-5}, None),
        ("UNet LayerNorm", "layer_norm", [(tokens, 320), (320,), (320,)], {"eps": 1e-5}, None),
        ("UNet self-attention", "attention", [(1, tokens, 320)] * 3, {"heads": 5}, 2 * tokens * tokens * 320),
        ("UNet cross-attention", "attention", [(1, tokens, 320), (1, 77, 320), (1, 77, 320)], {"heads": 5},
         2 * tokens * 77 * 320),
        ("VAE mid-block attention", "attention", [(1, tokens, 512)] * 3, {"heads": 1}, 2 * tokens * tokens * 512),
        ("VAE upsample 2x", "upsample_nearest", [(1, lat, lat, 512)], {"size": (2 * lat, 2 * lat)}, None),
        ("UNet GEGLU", "geglu", [(1, 1, tokens, 2560)], {}, None),
        ("VAE SiLU, top", "silu", [(1, s, s, 128)], {}, None),
        ("head ReLU", "relu", [(1, lat // 4, lat // 4, 1280)], {}, None),
        ("head leaky ReLU", "leaky_relu", [(1, lat // 4, lat // 4, 1280)], {}, None),
        ("UNet GELU", "gelu", [(1, 1, tokens, 1280)], {}, None),
        ("UNet residual add", "add", [(1, lat, lat, 320)] * 2, {}, None),
        ("UNet time embedding add", "add_channel_offset", [(1, lat, lat, 320), (1, 1, 1, 320)], {}, None),
        ("UNet skip concat", "concat", [(1, lat, lat, 320)] * 2, {}, None),
        ("AlexNet max pool", "max_pool", [(1, s // 4, s // 4, 64)], {"size": (3, 2)}, None),
        ("DISTS L2 pool", "l2_pool", [(1, s, s, 64)], {}, None),
        ("DISTS moments", "pair_moments", [(1, s, s, 64)] * 2, {}, None),
        ("LPIPS distance", "lpips_distance", [(1, s // 4, s // 4, 64), (1, s // 4, s // 4, 64), (64,)], {}, None),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="cpu")
    parser.add_argument("--dtypes", default="fp32", help="on CUDA: fp32, fp16, bf16 (the CPU runs fp32 only)")
    parser.add_argument("--size", type=int, default=512, help="output image side (multiple of 64)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated op names")
    args = parser.parse_args()
    if args.size < 64 or args.size % 64:
        sys.exit(f"--size must be a positive multiple of 64, not {args.size}")

    import d3sr
    from d3sr._native import _core

    d3sr.set_num_threads(args.threads)
    table = {name for name, *_ in _core.ops()}
    all_cases = cases(args.size)
    missing = table - {op for _, op, *_ in all_cases}
    if missing:
        sys.exit(f"ops without a benchmark case: {sorted(missing)}")
    only = set(args.only.split(",")) - {""}
    if only - table:
        sys.exit(f"unknown ops {sorted(only - table)}; known: {sorted(table)}")
    rng = np.random.default_rng(0)
    print(f"{args.size}x{args.size} output, {args.threads} threads, median of {args.runs} after a warm-up; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"{'case':28} {'op':18} {'backend':10} {'ms':>9} {'GMAC/s':>8}")
    for device in args.devices.split(","):
        dtypes = args.dtypes.split(",") if device == "cuda" else ["fp32"]
        for dtype in dtypes:
            for label, op, shapes, scalars, macs in all_cases:
                if only and op not in only:
                    continue
                arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
                if op == "lpips_distance":  # features after a ReLU, as LPIPS sees them
                    arrays = [np.abs(a) for a in arrays]
                try:
                    _core.op(op, *arrays, device=device, dtype=dtype, **scalars)
                except RuntimeError as error:  # a kernel this backend lacks
                    print(f"{label:28} {op:18} {device + '-' + dtype:10} {'-':>9} {'':>8}  {error}")
                    continue
                times = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    _core.op(op, *arrays, device=device, dtype=dtype, **scalars)
                    times.append(time.perf_counter() - start)
                median = statistics.median(times)
                rate = f"{macs / median / 1e9:8.1f}" if macs else ""
                print(f"{label:28} {op:18} {device + '-' + dtype:10} {median * 1e3:9.2f} {rate:>8}")


if __name__ == "__main__":
    main()
