"""d3sr against diffusers/PyTorch on the CPU: same weights, same threads, one run.

    python benchmarks/cpu.py [--tasks vae_decode,vae_encode,unet,generator] \
        [--torch-python PATH] [--threads 2] [--runs 3] [--size 512] [--profile]

Tasks, on the real SD 2.1-base architectures with seeded random weights
(d3sr/testing.py draws the same weights for both engines):
  vae_decode  a size/8 latent to a size x size image
  vae_encode  a size x size image to its latent mean
  unet        the SD 2.1-base UNet at a size/8 latent, t = 399, a 77-token context
  generator   the whole one-step generator, size/4 input -> size output (x4)
  disc_trunk  the discriminator's SDXL-base trunk (down and mid blocks) on a batch
              of 2 latents of size/8, t = 500, with the text_time conditioning
Each (engine, task) runs in its own process, so its peak RSS is its own: one
warm-up call, then --runs timed calls; the median is reported with the ratio
d3sr / PyTorch and the relative L2 difference of the outputs. torch and
diffusers may live in another interpreter (--torch-python); d3sr must be
importable by this one. OpenBLAS's kernel choice (OPENBLAS_CORETYPE) is printed:
it decides d3sr's matrix-product speed and does not affect PyTorch's.
--profile adds, per task, where d3sr's time went op by op (model.profile()
over the timed calls; each op then waits for its kernels, so the profiled
total can exceed the unprofiled time a little).
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("vae_decode", "vae_encode", "unet", "generator", "disc_trunk")


def _load_common():
    spec = importlib.util.spec_from_file_location("d3sr_bench_common", os.path.join(ROOT, "benchmarks", "common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load_common()
TIMESTEP, DISC_TIMESTEP, load_testing, task_inputs = (common.TIMESTEP, common.DISC_TIMESTEP, common.load_testing,
                                                      common.task_inputs)


def d3sr_engine(task, inputs):
    """(function, its input, the models it runs)."""
    import d3sr

    testing = load_testing()
    vae_config, unet_config = testing.real_config("sd21-vae"), testing.real_config("sd21-base-unet")

    def vae(parts):
        # the whole model's draw (the draw order is over all names), this part's weights
        weights = testing.random_weights(d3sr.VAE.from_config(vae_config).weight_shapes(), seed=0)
        model = d3sr.VAE.from_config(vae_config, parts=parts)
        model.load_weights({name: weights[name] for name in model.weight_shapes()})
        return model

    def unet():
        model = d3sr.UNet.from_config(unet_config)
        model.load_weights(testing.iter_random_weights(model.weight_shapes(), seed=2))
        return model

    if task == "vae_encode":
        model = vae(("encoder",))
        return model.encode, inputs["x"], [model]
    if task == "vae_decode":
        model = vae(("decoder",))
        return model.decode, inputs["z"], [model]
    if task == "unet":
        model = unet()
        return (lambda z: model(z, TIMESTEP, inputs["context"])), inputs["z"], [model]
    if task == "disc_trunk":
        trunk = d3sr.UNet.from_config(testing.real_config("sdxl-base-unet"), trunk_only=True)
        trunk.load_weights(testing.iter_random_weights(trunk.weight_shapes(), seed=3))
        return (lambda z: trunk(z, DISC_TIMESTEP, inputs["context"], inputs["text_embeds"], inputs["time_ids"])), \
            inputs["z"], [trunk]
    upscaler = d3sr.Upscaler(vae(("encoder", "decoder")), unet(), inputs["context"][0],
                             {**d3sr._checkpoint.GENERATOR_DEFAULTS, "timestep": TIMESTEP})
    return (lambda image: upscaler.upscale(image, scale=4)), inputs["image"], [upscaler.vae, upscaler.unet]


def torch_engine(task, inputs):
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    testing = load_testing()

    def build(cls, config, seed):
        model = cls.from_config(config).eval()
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        for name, array in testing.iter_random_weights(shapes, seed=seed):
            model.get_parameter(name).data = torch.from_numpy(array)
        return model

    if task == "disc_trunk":
        return sdxl_trunk_engine(inputs)
    vae = build(AutoencoderKL, testing.real_config("sd21-vae"), 0) if task != "unet" else None
    unet = build(UNet2DConditionModel, testing.real_config("sd21-base-unet"), 2) if task in ("unet", "generator") \
        else None
    context = torch.from_numpy(inputs["context"]) if "context" in inputs else None
    t = torch.tensor([TIMESTEP])
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    abar = float(np.cumprod(1 - betas)[TIMESTEP])

    def generator(image):
        from PIL import Image

        h, w, _ = image.shape  # the same preprocessing as d3sr's: PIL bicubic per channel, float32
        up = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c]), mode="F").resize(
            (4 * w, 4 * h), Image.BICUBIC)) for c in range(3)], -1).clip(0, 1) * 2 - 1
        x = torch.from_numpy(np.ascontiguousarray(up.transpose(2, 0, 1)[None], dtype=np.float32))
        z = vae.encode(x).latent_dist.mean * 0.18215
        eps = unet(z, t, encoder_hidden_states=context).sample
        z_h = ((z.double() - (1 - abar) ** 0.5 * eps.double()) / abar ** 0.5).float()
        out = vae.decode(z_h / 0.18215).sample.clamp(-1, 1)
        return ((out[0].permute(1, 2, 0) + 1) / 2)

    def run(x):
        with torch.inference_mode():
            if task == "vae_encode":
                return vae.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
            if task == "vae_decode":
                return vae.decode(torch.from_numpy(x)).sample.numpy()
            if task == "unet":
                return unet(torch.from_numpy(x), t, encoder_hidden_states=context).sample.numpy()
            return generator(x).numpy()

    key = {"vae_encode": "x", "vae_decode": "z", "unet": "z", "generator": "image"}[task]
    return run, inputs[key]


def sdxl_trunk_engine(inputs):
    """diffusers' SDXL-base UNet run as its forward does up to the mid block
    (tools/make_references.py's sdxl_trunk); the up blocks are dropped before
    timing, as d3sr never builds them."""
    import torch
    from diffusers import UNet2DConditionModel

    testing = load_testing()
    model = UNet2DConditionModel.from_config(testing.real_config("sdxl-base-unet")).eval()
    model.up_blocks, model.conv_norm_out, model.conv_out = None, None, None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, array in testing.iter_random_weights(shapes, seed=3):  # the same draw as d3sr's
        model.get_parameter(name).data = torch.from_numpy(array)
    t = torch.tensor([DISC_TIMESTEP] * 2)
    context, text, ids = (torch.from_numpy(inputs[k]) for k in ("context", "text_embeds", "time_ids"))

    def run(z):
        with torch.inference_mode():
            return common.sdxl_trunk(model, torch.from_numpy(z), t, context, text, ids).numpy()

    return run, inputs["z"]


def child(engine, task, size, runs, threads, profile=False):
    """Runs in a subprocess: builds the model, times it, prints one JSON line."""
    import numpy as np

    inputs = task_inputs(task, size)
    if engine == "d3sr":
        import d3sr
        import scipy_openblas32

        d3sr.set_num_threads(threads)
        fn, x, models = d3sr_engine(task, inputs)
        info = {"blas": scipy_openblas32.get_openblas_config().strip()}
    else:
        import torch

        torch.set_num_threads(threads)
        fn, x = torch_engine(task, inputs)
        info = {"torch": torch.__version__}
    out = fn(x)  # warm-up
    if profile and engine == "d3sr":
        for model in models:
            model.profile()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - start)
    if profile and engine == "d3sr":
        ops = {}
        for model in models:
            for op, (calls, seconds) in model.profile(False).items():
                ops[op] = [ops.get(op, [0, 0.0])[0] + calls / runs, ops.get(op, [0, 0.0])[1] + seconds / runs]
        info["profile"] = ops
    np.save(os.environ["D3SR_BENCH_OUT"], np.asarray(out, np.float32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"times": times, "peak_rss_mib": peak, **info}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default=sys.executable, help="interpreter with torch and diffusers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="output image side in pixels (multiple of 64)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--profile", action="store_true", help="print d3sr's time per op for each task")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.size, args.runs, args.threads, args.profile)

    import numpy as np

    tasks = args.tasks.split(",")
    unknown = set(tasks) - set(TASKS)
    if unknown:
        sys.exit(f"unknown tasks {sorted(unknown)}; known: {TASKS}")
    print(f"SD 2.1-base, {args.size}x{args.size} output, {args.threads} threads, median of {args.runs} after a warm-up")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    rows, info, profiles = [], {}, {}
    for task in tasks:
        results, outputs = {}, {}
        for engine, python in (("d3sr", sys.executable), ("torch", args.torch_python)):
            out_path = os.path.join("/tmp", f"d3sr_bench_{engine}_{task}.npy")
            env = dict(os.environ, D3SR_BENCH_OUT=out_path)
            cmd = [python, os.path.abspath(__file__), "--child", engine, task, "--size", str(args.size),
                   "--runs", str(args.runs), "--threads", str(args.threads)] + (["--profile"] if args.profile else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"{engine} {task} failed:\n{proc.stderr}")
            results[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
            outputs[engine] = np.load(out_path)
            info.update({k: v for k, v in results[engine].items() if k in ("blas", "torch")})
        a, b = outputs["d3sr"].astype(np.float64), outputs["torch"].astype(np.float64)
        err = np.linalg.norm(a - b) / np.linalg.norm(b)
        ours, theirs = (statistics.median(results[e]["times"]) for e in ("d3sr", "torch"))
        rows.append((task, ours, theirs, results["d3sr"]["peak_rss_mib"], results["torch"]["peak_rss_mib"], err))
        profiles[task] = results["d3sr"].get("profile")
    print(f"d3sr: {info.get('blas')}; torch {info.get('torch')}")
    print(f"{'task':11} {'d3sr s':>8} {'torch s':>8} {'ratio':>6} {'d3sr MiB':>9} {'torch MiB':>9} {'rel. L2':>9}")
    for task, ours, theirs, rss_ours, rss_theirs, err in rows:
        print(f"{task:11} {ours:8.2f} {theirs:8.2f} {ours / theirs:6.2f} {rss_ours:9.0f} {rss_theirs:9.0f} {err:9.1e}")
    for task, ops in profiles.items():
        if ops:
            total = sum(seconds for _, seconds in ops.values())
            print(f"\nd3sr {task}, per call: " + ", ".join(
                f"{op} {seconds:.2f} s ({100 * seconds / total:.0f}%, {calls:.0f} calls)"
                for op, (calls, seconds) in sorted(ops.items(), key=lambda kv: -kv[1][1]) if seconds > 0))


if __name__ == "__main__":
    main()
