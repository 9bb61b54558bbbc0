"""The tiled generator at large sizes: peak memory, time, and tiled-vs-untiled fidelity.

Runs the real SD 2.1-base architecture on seeded random weights
(d3sr.testing, d3sr/configs) on a smooth random image, or (--model tiny)
the built-in d3sr-tiny on its demo photo, each measurement in its own
process so peak RSS is that run's alone:

    python benchmarks/tiling.py memory --sizes 256 512 1024      # input sides; output 4x
    python benchmarks/tiling.py memory --sizes 256 512 1024 --vae-statistics estimated
    python benchmarks/tiling.py fidelity --size 256 --latent-tile 64 --latent-overlap 16 \\
        --encoder-tile 512 --decoder-tile 64                       # tiled vs untiled, per stage
    python benchmarks/tiling.py fidelity --model tiny --size 256 --latent-tile 32 --latent-overlap 8 \\
        --encoder-tile 256 --decoder-tile 64 --vae-statistics estimated
    python benchmarks/tiling.py vae --size 512 --encoder-tile 256 --decoder-tile 32   # VAE alone
    python benchmarks/tiling.py window --encoder-tile 1024 --decoder-tile 224   # one tile's window alone
    python benchmarks/tiling.py plan --sizes 256 512 1024        # what exact statistics would park (seconds)

memory: seconds per output megapixel and peak RSS of Upscaler.upscale at the
default tiles (weights alone are measured too, so the table shows what the
activations add). window: peak RSS of the SD VAE encoder and decoder run
untiled on one window (tile plus halo on both sides): with estimated
statistics, what one tile adds to the weights at any image size. fidelity: each stage run tiled and untiled on the same
input (the untiled pipeline's), relative L2 and PSNR (images in [0, 1],
latents against their own peak), and end to end. plan: what the SD VAE's
tiled encoder and decoder would hold with exact statistics at the output sizes
the memory mode's inputs give (VAE.tiled_memory: planned, nothing computed).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_upscaler(model: str = "sd21"):
    import d3sr

    if model == "tiny":
        return d3sr.Upscaler.load()
    from d3sr._checkpoint import GENERATOR_DEFAULTS
    from d3sr.testing import iter_random_weights, real_config

    vae = d3sr.VAE.from_config(real_config("sd21-vae"))
    vae.load_weights(iter_random_weights(vae.weight_shapes(), seed=0))
    unet = d3sr.UNet.from_config(real_config("sd21-base-unet"))
    unet.load_weights(iter_random_weights(unet.weight_shapes(), seed=1))
    embedding = np.random.default_rng(2).standard_normal((77, 1024)).astype(np.float32)
    return d3sr.Upscaler(vae, unet, embedding, dict(GENERATOR_DEFAULTS))


def test_image(size: int, model: str = "sd21") -> np.ndarray:
    """uint8 [size, size, 3]: for sd21 a smooth random image (d3sr.testing.random_images);
    for tiny the centre square of d3sr-tiny's demo photo, resized (Lanczos)."""
    if model == "tiny":
        from PIL import Image

        import d3sr

        photo = Image.open(os.path.join(os.path.dirname(d3sr.__file__), "models", "tiny", "demo", "evening_glow.png"))
        side = min(photo.size)
        box = ((photo.width - side) // 2, (photo.height - side) // 2)
        square = photo.convert("RGB").crop(box + (box[0] + side, box[1] + side))
        return np.asarray(square.resize((size, size), Image.LANCZOS))
    from d3sr.testing import random_images

    return ((random_images((1, 3, size, size), seed=3)[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)


def child_memory(size: int, tiles: dict, model: str, statistics: str) -> dict:
    up = build_upscaler(model)
    weights_mb = peak_rss_mb()
    image = test_image(size, model)
    start = time.perf_counter()
    out = up.upscale(image, scale=4, vae_statistics=statistics, **tiles)
    seconds = time.perf_counter() - start
    mp = out.shape[0] * out.shape[1] / 1e6
    return {"size": size, "out": out.shape[0], "seconds": seconds, "s_per_mp": seconds / mp,
            "peak_rss_mb": peak_rss_mb(), "weights_rss_mb": weights_mb,
            "parked_mb": up.vae.last_parked_bytes / 2 ** 20}


def psnr(a, b, peak: float) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def child_fidelity(size: int, tiles: dict, park: str, model: str, statistics: str) -> dict:
    from d3sr import _tiling as tiling
    from d3sr.images import bicubic

    up = build_upscaler(model)
    how = {"park": park, "statistics": tiling.check_vae_statistics(statistics)}
    image = test_image(size, model).astype(np.float32)[None] / 255
    x = np.ascontiguousarray((bicubic(image, 4) * 2 - 1).transpose(0, 3, 1, 2))
    rows = {}

    def stage(name, tiled, untiled, peak=None):
        peak = peak if peak is not None else float(np.abs(untiled).max())
        rows[name] = {"rel_l2": rel_l2(tiled, untiled), "psnr": psnr(tiled, untiled, peak)}
        print(name, rows[name], file=sys.stderr, flush=True)  # partial results while it runs

    start = time.perf_counter()
    z = up.vae.encode(x) * np.float32(up.scaling_factor)
    h, w = x.shape[2:]
    f = up.vae.downscale
    n_enc = tiling.tile_count(h, w, tiles["encoder_tile"], f)
    z_tiled = up.vae.encode_tiled(x, tiles["encoder_tile"], **how) * np.float32(up.scaling_factor)
    stage(f"VAE encoder ({n_enc} tiles)", z_tiled, z)
    eps = up._unet_eps(z, None, 0, None)
    eps_tiled = up._unet_eps(z, tiles["latent_tile"], tiles["latent_overlap"], None)
    n_lat = len(tiling.latent_tiles(z.shape[2], z.shape[3], tiles["latent_tile"], tiles["latent_overlap"]))
    stage(f"UNet ({n_lat} latent tiles)", eps_tiled, eps)
    z_h = up.denoise(z, eps) / np.float32(up.scaling_factor)
    image_untiled = (np.clip(up.vae.decode(z_h), -1, 1) + 1) / 2
    n_dec = tiling.tile_count(z.shape[2], z.shape[3], tiles["decoder_tile"], 1)
    image_tiled = (np.clip(up.vae.decode_tiled(z_h, tiles["decoder_tile"], **how), -1, 1) + 1) / 2
    stage(f"VAE decoder ({n_dec} tiles)", image_tiled, image_untiled, 1.0)
    z_h_tiled = up.denoise(z_tiled, up._unet_eps(z_tiled, tiles["latent_tile"], tiles["latent_overlap"], None))
    end_to_end = (np.clip(up.vae.decode_tiled(z_h_tiled / np.float32(up.scaling_factor), tiles["decoder_tile"],
                                              **how), -1, 1) + 1) / 2
    stage("end to end", end_to_end, image_untiled, 1.0)
    return {"size": size, "tiles": tiles, "park": park, "stages": rows, "seconds": time.perf_counter() - start}


def child_vae(size: int, tile: int, decoder_tile: int, how: str) -> dict:
    """One VAE round trip of a size x size image: untiled, tiled with
    activations parked as float32 or float16, or tiled with estimated statistics."""
    import d3sr
    from d3sr.testing import iter_random_weights, random_images, real_config

    vae = d3sr.VAE.from_config(real_config("sd21-vae"))
    vae.load_weights(iter_random_weights(vae.weight_shapes(), seed=0))
    x = random_images((1, 3, size, size), seed=3)
    z = np.random.default_rng(4).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
    weights_mb = peak_rss_mb()
    row = {"how": how, "weights_rss_mb": weights_mb}
    tiled = {"park": "float32", "statistics": "estimated"} if how == "estimated" else {"park": how}
    for name, run in (("encoder", lambda: vae.encode(x) if how == "untiled" else vae.encode_tiled(x, tile, **tiled)),
                      ("decoder", lambda: vae.decode(z) if how == "untiled" else vae.decode_tiled(z, decoder_tile, **tiled))):
        start = time.perf_counter()
        out = run()
        row[name] = {"seconds": time.perf_counter() - start, "parked_mb": vae.last_parked_bytes / 2 ** 20 if how != "untiled" else 0}
        np.save(os.path.join(os.environ.get("D3SR_BENCH_TMP", "."), f"vae_{name}_{how}.npy"), out)
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def child_window(encoder_tile: int, decoder_tile: int, part: str) -> dict:
    """The SD VAE's encoder or decoder on one window of the given tile, untiled."""
    import d3sr
    from d3sr import _tiling as tiling
    from d3sr.testing import iter_random_weights, real_config

    vae = d3sr.VAE.from_config(real_config("sd21-vae"), parts=(part,))
    vae.load_weights(iter_random_weights(vae.weight_shapes(), seed=0))
    weights_mb = peak_rss_mb()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    if part == "encoder":
        side = encoder_tile + 2 * tiling.encoder_halo(vae.config)
        vae.encode(rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32))
    else:
        side = decoder_tile + 2 * tiling.decoder_halo(vae.config)
        vae.decode(rng.standard_normal((1, 4, side, side)).astype(np.float32))
    return {"part": part, "window": side, "seconds": time.perf_counter() - start, "weights_rss_mb": weights_mb,
            "peak_rss_mb": peak_rss_mb()}


def run_child(args_list) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "child"] + args_list, env=env,
                         stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("memory", "fidelity", "vae", "window", "plan", "child"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--latent-tile", type=int, default=96)
    parser.add_argument("--latent-overlap", type=int, default=32)
    parser.add_argument("--encoder-tile", type=int, default=1024)
    parser.add_argument("--decoder-tile", type=int, default=224)
    parser.add_argument("--park", default="float32", choices=("float32", "float16"))
    parser.add_argument("--vae-statistics", default="exact", choices=("exact", "estimated"))
    parser.add_argument("--model", default="sd21", choices=("sd21", "tiny"),
                        help="sd21: the SD 2.1-base architecture on random weights; tiny: d3sr-tiny on a photo")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    import d3sr

    if args.threads:
        d3sr.set_num_threads(args.threads)
    tiles = {"latent_tile": args.latent_tile, "latent_overlap": args.latent_overlap,
             "encoder_tile": args.encoder_tile, "decoder_tile": args.decoder_tile}
    if args.mode == "child":
        if args.child == "memory":
            result = child_memory(args.size, tiles, args.model, args.vae_statistics)
        elif args.child == "fidelity":
            result = child_fidelity(args.size, tiles, args.park, args.model, args.vae_statistics)
        elif args.child in ("window-encoder", "window-decoder"):
            result = child_window(args.encoder_tile, args.decoder_tile, args.child.split("-")[1])
        else:
            result = child_vae(args.size, args.encoder_tile, args.decoder_tile, args.child)
        print(json.dumps(result))
        return
    common = ["--latent-tile", str(args.latent_tile), "--latent-overlap", str(args.latent_overlap),
              "--encoder-tile", str(args.encoder_tile), "--decoder-tile", str(args.decoder_tile),
              "--park", args.park, "--threads", str(args.threads), "--model", args.model,
              "--vae-statistics", args.vae_statistics]
    if args.mode == "vae":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            os.environ["D3SR_BENCH_TMP"] = tmp
            rows = [run_child(["--child", how, "--size", str(args.size)] + common)
                    for how in ("untiled", "float32", "float16", "estimated")]
            print(f"SD 2.1 VAE, {args.size} x {args.size} pixels; encoder tile {args.encoder_tile} px, "
                  f"decoder tile {args.decoder_tile} latent px; threads {d3sr.get_num_threads()}")
            print("| stage | GroupNorm statistics | s | parked MB | peak RSS MB (process) | rel L2 vs untiled |")
            print("|---|---|---|---|---|---|")
            for stage in ("encoder", "decoder"):
                whole = np.load(os.path.join(tmp, f"vae_{stage}_untiled.npy"))
                for r in rows:
                    out = np.load(os.path.join(tmp, f"vae_{stage}_{r['how']}.npy"))
                    label = {"untiled": "untiled", "estimated": "tiles, estimated (nothing parked)"}.get(
                        r["how"], f"tiles, pooled, parked as {r['how']}")
                    print(f"| {stage} | {label} | {r[stage]['seconds']:.1f} | {r[stage]['parked_mb']:.0f} | "
                          f"{r['peak_rss_mb']:.0f} | {rel_l2(out, whole):.1e} |")
        return
    if args.mode == "plan":
        from d3sr.testing import iter_random_weights, real_config

        vae = d3sr.VAE.from_config(real_config("sd21-vae"))
        vae.load_weights(iter_random_weights(vae.weight_shapes(), seed=0))
        gib, available = 2 ** 30, d3sr._tiling.available_host_bytes()
        print(f"SD 2.1 VAE, exact statistics, parked as {args.park}; encoder tile {args.encoder_tile} px, "
              f"decoder tile {args.decoder_tile} latent px; host memory available now: "
              + (f"{available / gib:.1f} GiB" if available is not None else "unknown"))
        print("| input -> output | encoder: window GiB, parked GiB | decoder: window GiB, parked GiB |")
        print("|---|---|---|")
        for size in args.sizes:
            side = 4 * size
            e = vae.tiled_memory((1, 3, side, side), args.encoder_tile, encode=True, park=args.park)
            d = vae.tiled_memory((1, 4, side // 8, side // 8), args.decoder_tile, encode=False, park=args.park)
            print(f"| {size} -> {side} | {e[0] / gib:.2f}, {e[1] / gib:.2f} | {d[0] / gib:.2f}, {d[1] / gib:.2f} |")
        return
    if args.mode == "window":
        print(f"SD 2.1 VAE, one window untiled; threads {d3sr.get_num_threads()}")
        print("| part | tile | window | s | weights RSS MB | peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for part, tile in (("encoder", f"{args.encoder_tile} px"), ("decoder", f"{args.decoder_tile} latent px")):
            r = run_child(["--child", f"window-{part}"] + common)
            print(f"| {part} | {tile} | {r['window']} | {r['seconds']:.0f} | {r['weights_rss_mb']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} |", flush=True)
        return
    if args.mode == "memory":
        print(f"{args.model}, threads: {d3sr.get_num_threads()}, tiles: {tiles}, "
              f"VAE statistics: {args.vae_statistics}")
        print("| input -> output | s | s per output MP | peak RSS MB | weights RSS MB | parked MB (last VAE stage) |")
        print("|---|---|---|---|---|---|")
        for size in args.sizes:
            r = run_child(["--child", "memory", "--size", str(size)] + common)
            print(f"| {size} -> {r['out']} | {r['seconds']:.0f} | {r['s_per_mp']:.1f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['weights_rss_mb']:.0f} | {r['parked_mb']:.0f} |", flush=True)
    else:
        r = run_child(["--child", "fidelity", "--size", str(args.size)] + common)
        print(f"{args.model}, {args.size} -> {4 * args.size}, tiles {tiles}, VAE statistics {args.vae_statistics}"
              + (f", parked as {args.park}" if args.vae_statistics == "exact" else ""))
        print("| stage | rel L2 | PSNR dB |")
        print("|---|---|---|")
        for name, row in r["stages"].items():
            print(f"| {name} | {row['rel_l2']:.2e} | {row['psnr']:.1f} |")


if __name__ == "__main__":
    main()
