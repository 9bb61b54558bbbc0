"""d3sr's CUDA backend against diffusers/PyTorch eager fp16 on the same GPU, in one run.

    python -P benchmarks/gpu/bench.py --out OUT_DIR [--tasks generator,vae_decode,unet,disc_trunk]
        [--runs 20] [--warmup 3] [--size 512] [--deadline UNIX_SECONDS]

Tasks, on the real architectures with seeded random weights (d3sr/testing.py's
draw, the seeds benchmarks/cpu.py uses), written once as fp16 diffusers folders
under /dev/shm that both engines load, so both see the same weights:
  generator   the whole one-step generator, size/4 -> size (x4): PIL bicubic, SD 2.1
              VAE encoder, SD 2.1-base UNet at t = 399, eq. 1 in float64, VAE decoder
  vae_decode  the VAE decoder alone: a size/8 latent to a size x size image
  unet        the SD 2.1-base UNet alone at a size/8 latent, t = 399, 77-token context
  disc_trunk  the discriminator's SDXL-base trunk (down and mid blocks), 2 latents of
              size/8, t = 500, with the text_time conditioning
Engines: d3sr bf16 and fp16, and diffusers fp16 eager (its default SDPA attention),
each (task, engine) in its own process: load, --warmup calls, then --runs timed
calls on the wall clock, NumPy in and NumPy out, so every engine pays its
host<->device copies. Reported: the median (and 10th/90th percentiles), the
ratio PyTorch / d3sr (above 1: d3sr is faster), the relative L2 difference from
PyTorch's output, and memory: torch.cuda.max_memory_allocated for PyTorch,
weights + activation arena + workspace (Model.memory()) for d3sr, and for both
the device memory the process holds after its runs (NVML, with the CUDA
context and library handles). If time remains, the d3sr bf16 generator runs
once more with cuDNN's algorithms timed (D3SR_CUDNN_SEARCH=1).

Writes OUT_DIR/results.json and OUT_DIR/results.md, and OUT_DIR/plans.log: the
convolution and GEMM plans of the d3sr bf16 generator (D3SR_CUDA_VERBOSE=1).
--deadline stops starting new measurements when too little time is left; what
was skipped is listed.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = ("generator", "vae_decode", "unet", "disc_trunk")
ENGINES = ("d3sr-bf16", "d3sr-fp16", "torch-fp16")
NEEDED_BYTES = 6 << 30  # the three models in fp16 (4.4 GB) and the outputs


def weights_folder():
    """Memory-backed /dev/shm when it has room, else /tmp (D3SR_BENCH_WEIGHTS overrides)."""
    import shutil

    if os.environ.get("D3SR_BENCH_WEIGHTS"):
        return os.environ["D3SR_BENCH_WEIGHTS"]
    for base in ("/dev/shm", "/tmp"):
        if os.path.isdir(base) and shutil.disk_usage(base).free > NEEDED_BYTES:
            return os.path.join(base, "d3sr-bench")
    return "/tmp/d3sr-bench"


WEIGHTS = weights_folder()
# --device cpu runs every engine on the CPU in float32, to check this script on a
# machine without a GPU (the numbers then mean nothing).
DEVICE = os.environ.get("D3SR_BENCH_DEVICE", "cuda")
MODELS = {  # folder: (config, seed, trunk only); seeds as benchmarks/cpu.py draws them
    "vae": ("sd21-vae", 0, False),
    "unet": ("sd21-base-unet", 2, False),
    "sdxl_trunk": ("sdxl-base-unet", 3, True),
}
NEEDS = {"generator": ("vae", "unet"), "vae_decode": ("vae",), "unet": ("unet",), "disc_trunk": ("sdxl_trunk",)}


def _load_common():
    spec = importlib.util.spec_from_file_location("d3sr_bench_common", os.path.join(ROOT, "benchmarks", "common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load_common()
load_testing, task_inputs = common.load_testing, common.task_inputs
TIMESTEP, DISC_TIMESTEP = common.TIMESTEP, common.DISC_TIMESTEP


# ---- weights, once --------------------------------------------------------

def write_model(name: str) -> str:
    """WEIGHTS/name: config.json and fp16 diffusion_pytorch_model.safetensors."""
    import d3sr
    import numpy as np
    from safetensors.numpy import save_file

    config_name, seed, trunk = MODELS[name]
    testing = load_testing()
    folder = os.path.join(WEIGHTS, name)
    path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    if os.path.exists(path):
        return folder
    os.makedirs(folder, exist_ok=True)
    config = testing.real_config(config_name)
    if config_name.endswith("vae"):
        shapes = d3sr.VAE.from_config(config).weight_shapes()
    else:
        shapes = d3sr.UNet.from_config(config, trunk_only=trunk).weight_shapes()
    tensors = {k: v.astype(np.float16) for k, v in testing.iter_random_weights(shapes, seed=seed)}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    save_file(tensors, path + ".part")
    os.replace(path + ".part", path)
    return folder


def prepare_weights(names):
    """Draws the models' weights in parallel processes (each draw is sequential)."""
    procs = {n: subprocess.Popen([sys.executable, "-P", os.path.abspath(__file__), "--write", n]) for n in names}
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"writing the {name} weights failed")


# ---- one measurement, in its own process -----------------------------------

def d3sr_engine(task, inputs, dtype):
    import d3sr

    device = DEVICE
    dtype = dtype if device == "cuda" else "fp32"

    folder = lambda name: os.path.join(WEIGHTS, name)  # noqa: E731
    if task == "vae_decode":
        vae = d3sr.VAE.load(folder("vae"), parts=("decoder",), device=device, dtype=dtype)
        return vae.decode, inputs["z"], [vae]
    if task == "unet":
        unet = d3sr.UNet.load(folder("unet"), device=device, dtype=dtype)
        return (lambda z: unet(z, TIMESTEP, inputs["context"])), inputs["z"], [unet]
    if task == "disc_trunk":
        trunk = d3sr.UNet.load(folder("sdxl_trunk"), trunk_only=True, device=device, dtype=dtype)
        return (lambda z: trunk(z, DISC_TIMESTEP, inputs["context"], inputs["text_embeds"], inputs["time_ids"])), \
            inputs["z"], [trunk]
    vae = d3sr.VAE.load(folder("vae"), device=device, dtype=dtype)
    unet = d3sr.UNet.load(folder("unet"), device=device, dtype=dtype)
    upscaler = d3sr.Upscaler(vae, unet, inputs["context"][0],
                             {**d3sr._checkpoint.GENERATOR_DEFAULTS, "timestep": TIMESTEP})
    return (lambda image: upscaler.upscale(image, scale=4)), inputs["image"], [vae, unet]


def torch_engine(task, inputs):
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    testing = load_testing()
    device, dtype = DEVICE, torch.float16 if DEVICE == "cuda" else torch.float32

    def build(cls, name, drop=()):
        """The model with the file's weights: made on the meta device (no random
        init of a billion parameters), or on the CPU if anything stays unset."""
        config = testing.real_config(MODELS[name][0])
        weights = load_file(os.path.join(WEIGHTS, name, "diffusion_pytorch_model.safetensors"))
        for where in ("meta", "cpu"):
            with torch.device(where):
                model = cls.from_config(config)
            for attribute in drop:  # the trunk: up blocks are never built by d3sr either
                setattr(model, attribute, None)
            missing, _ = model.load_state_dict(weights, strict=False, assign=True)
            if missing:
                raise RuntimeError(f"{name}: the weight file lacks {missing[:5]}")
            if not any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
                return model.to(device, dtype).eval()
        raise RuntimeError(f"{name}: tensors stayed on the meta device")

    cuda = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device, dtype)  # noqa: E731
    t = torch.tensor([TIMESTEP], device=device)
    if task == "disc_trunk":
        model = build(UNet2DConditionModel, "sdxl_trunk", drop=("up_blocks", "conv_norm_out", "conv_out"))
        td = torch.tensor([DISC_TIMESTEP] * 2, device=device)
        context, text, ids = (cuda(inputs[k]) for k in ("context", "text_embeds", "time_ids"))

        def trunk(z):  # UNet2DConditionModel.forward up to the mid block (the reference script's)
            with torch.inference_mode():
                return common.sdxl_trunk(model, cuda(z), td, context, text, ids).float().cpu().numpy()

        return trunk, inputs["z"]
    vae = build(AutoencoderKL, "vae") if task != "unet" else None
    unet = build(UNet2DConditionModel, "unet") if task != "vae_decode" else None
    context = cuda(inputs["context"]) if "context" in inputs else None
    abar = float(np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2)[TIMESTEP])

    def generator(image):
        from PIL import Image

        h, w, _ = image.shape  # d3sr's preprocessing: PIL bicubic per channel in float32
        up = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c]), mode="F").resize(
            (4 * w, 4 * h), Image.BICUBIC)) for c in range(3)], -1).clip(0, 1) * 2 - 1
        with torch.inference_mode():
            z = vae.encode(cuda(up.transpose(2, 0, 1)[None])).latent_dist.mean * 0.18215
            eps = unet(z, t, encoder_hidden_states=context).sample
            z_h = ((z.double() - (1 - abar) ** 0.5 * eps.double()) / abar ** 0.5).to(dtype)
            out = vae.decode(z_h / 0.18215).sample.clamp(-1, 1)
            return ((out[0].permute(1, 2, 0).float() + 1) / 2).cpu().numpy()

    def run(x):
        with torch.inference_mode():
            if task == "vae_decode":
                return vae.decode(cuda(x)).sample.float().cpu().numpy()
            return unet(cuda(x), t, encoder_hidden_states=context).sample.float().cpu().numpy()

    return (generator, inputs["image"]) if task == "generator" else (run, inputs["z"])


def device_memory_used():
    """Bytes in use on GPU 0 (NVML), or None without pynvml."""
    try:
        import pynvml

        pynvml.nvmlInit()
        used = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used
        pynvml.nvmlShutdown()
        return int(used)
    except Exception:  # noqa: BLE001  (no NVML: the column stays empty)
        return None


def child(engine, task, args):
    """Builds the engine's model, times it, saves its output, prints one JSON line."""
    import numpy as np

    before = device_memory_used()
    inputs = task_inputs(task, args.size)
    start = time.perf_counter()
    info = {}
    if engine.startswith("d3sr"):
        fn, x, models = d3sr_engine(task, inputs, engine.split("-")[1])
    else:
        import torch

        fn, x = torch_engine(task, inputs)
        info.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu=torch.cuda.get_device_name(0) if DEVICE == "cuda" else "none (--device cpu)")
    load_s = time.perf_counter() - start
    for _ in range(args.warmup):
        out = fn(x)
    if engine.startswith("torch") and DEVICE == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    if engine.startswith("d3sr"):
        mem = [m.memory() for m in models]
        info["allocated_bytes"] = sum(m["weights"] + m["activations"] for m in mem)
        info["weights_bytes"] = sum(m["weights"] for m in mem)
    elif DEVICE == "cuda":
        import torch

        info["allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    after = device_memory_used()
    info["device_bytes"] = after - before if before is not None and after is not None else None
    np.save(os.environ["D3SR_BENCH_OUT"], np.asarray(out, np.float32))
    print(json.dumps({"times_ms": times, "load_s": load_s, "finite": bool(np.isfinite(out).all()), **info}))


# ---- the parent ----------------------------------------------------------

def rel_l2(a, b):
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure(engine, task, args, deadline, log):
    """Runs one (engine, task) child; returns its result dict (with 'error' on failure)."""
    out_path = os.path.join(WEIGHTS, f"out_{engine}_{task}.npy")
    env = dict(os.environ, D3SR_BENCH_OUT=out_path)
    name = engine
    if engine == "d3sr-bf16-search":
        env["D3SR_CUDNN_SEARCH"] = "1"
        engine = "d3sr-bf16"
    if engine == "d3sr-bf16" and task == "generator" and name == "d3sr-bf16":
        env["D3SR_CUDA_VERBOSE"] = "1"
    cmd = [sys.executable, "-P", os.path.abspath(__file__), "--child", engine, task, "--size", str(args.size),
           "--runs", str(args.runs), "--warmup", str(args.warmup)]
    budget = deadline - time.time() - 5
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(budget, 1))
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {budget:.0f} s (the run's deadline)"}
    if env.get("D3SR_CUDA_VERBOSE") == "1":
        with open(os.path.join(args.out, "plans.log"), "w") as f:
            f.write(proc.stderr)
    if proc.returncode != 0:
        log.write(f"---- {name} {task} failed:\n{proc.stderr[-4000:]}\n")
        return {"error": (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1][:300]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    times = result["times_ms"]
    result.update(median_ms=statistics.median(times), p10_ms=percentile(times, 0.1), p90_ms=percentile(times, 0.9),
                  output=out_path)
    return result


def fmt_ms(r):
    return f"{r['median_ms']:.2f}" if r and "median_ms" in r else ("failed" if r and "error" in r else "-")


def fmt_mib(value):
    return f"{value / 2**20:.0f}" if value is not None else "-"


def write_reports(args, results, skipped, machine):
    import numpy as np

    summary = {}
    for task, by_engine in results.items():
        torch_r = by_engine.get("torch-fp16")
        ref = np.load(torch_r["output"]) if torch_r and "output" in torch_r else None
        entry = {}
        for engine, r in by_engine.items():
            if "output" in r:
                if ref is not None and engine != "torch-fp16":
                    r["rel_l2_vs_torch"] = rel_l2(np.load(r["output"]), ref)
                if torch_r and "median_ms" in torch_r and engine != "torch-fp16":
                    r["speedup_vs_torch"] = torch_r["median_ms"] / r["median_ms"]
            entry[engine] = {k: v for k, v in r.items() if k != "output"}
        summary[task] = entry
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": machine, "size": args.size, "runs": args.runs, "warmup": args.warmup,
                   "tasks": summary, "skipped": skipped}, f, indent=2)

    lines = [f"# d3sr CUDA vs diffusers fp16 eager: {machine.get('gpu', '?')}", "",
             f"{args.size}x{args.size} output; median of {args.runs} runs after {args.warmup} warm-up calls, "
             "NumPy in and out; speed-up = PyTorch time / d3sr time; memory in MiB "
             "(allocated: d3sr weights+arena, torch max_memory_allocated / device: NVML, process total).", "",
             "| task | engine | median ms | p10-p90 ms | speed-up | allocated MiB | device MiB | rel. L2 vs torch |",
             "|---|---|---|---|---|---|---|---|"]
    for task, entry in summary.items():
        for engine, r in entry.items():
            if "error" in r:
                lines.append(f"| {task} | {engine} | failed: {r['error']} | | | | | |")
                continue
            speed = f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else ""
            err = f"{r['rel_l2_vs_torch']:.1e}" if "rel_l2_vs_torch" in r else ""
            lines.append(f"| {task} | {engine} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | {speed} | "
                         f"{fmt_mib(r.get('allocated_bytes'))} | {fmt_mib(r.get('device_bytes'))} | {err} |")
    gen = summary.get("generator", {}).get("d3sr-bf16", {})
    if "median_ms" in gen:
        lines += ["", f"Generator goal (issue 6): >= 2x PyTorch eager fp16 and <= 25 ms on an H100. Measured: "
                      f"{gen['median_ms']:.1f} ms, {gen.get('speedup_vs_torch', float('nan')):.2f}x (bf16)."]
    if skipped:
        lines += ["", "Not measured (time ran out): " + ", ".join(skipped)]
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items())]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".", help="folder for results.json, results.md and plans.log")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="output image side in pixels (multiple of 64)")
    parser.add_argument("--deadline", type=float, default=0, help="UNIX time by which to be done (0: none)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=DEVICE,
                        help="cpu: check this script without a GPU (fp32 everywhere; the times mean nothing)")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "TASK"), help=argparse.SUPPRESS)
    parser.add_argument("--write", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        return write_model(args.write)
    if args.child:
        return child(args.child[0], args.child[1], args)

    tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        sys.exit(f"unknown tasks {sorted(unknown)}; known: {TASKS}")
    deadline = args.deadline or time.time() + 3600
    os.environ["D3SR_BENCH_WEIGHTS"] = WEIGHTS  # the children use the parent's choice
    os.environ["D3SR_BENCH_DEVICE"] = args.device
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    prepare_weights(sorted({m for t in tasks for m in NEEDS[t]}))
    print(f"weights ready in {time.time() - start:.0f} s", flush=True)
    plan = [(t, e) for t in tasks for e in ENGINES]
    if "generator" in tasks and args.device == "cuda":
        plan.append(("generator", "d3sr-bf16-search"))
    results, skipped, machine = {}, [], {}
    with open(os.path.join(args.out, "bench.log"), "a") as log:
        for task, engine in plan:
            # a measurement takes well under a minute; leave the rest for the reports
            if time.time() > deadline - 45:
                skipped.append(f"{task}/{engine}")
                continue
            t0 = time.time()
            r = measure(engine, task, args, deadline, log)
            results.setdefault(task, {})[engine] = r
            for key in ("gpu", "torch", "cuda", "cudnn"):
                if key in r:
                    machine[key] = r.pop(key)
            status = f"{r['median_ms']:.2f} ms" if "median_ms" in r else f"FAILED: {r['error']}"
            print(f"{task:11} {engine:17} {status}  ({time.time() - t0:.0f} s)", flush=True)
    write_reports(args, results, skipped, machine)


if __name__ == "__main__":
    main()
