"""The SD VAE on the CPU: d3sr against diffusers, same weights, same threads.

    python benchmarks/vae_cpu.py [--torch-python PATH] [--threads 2] [--runs 3]

Decodes a 64x64 latent to 512x512 and encodes a 512x512 image with the real
SD 2.1 VAE architecture and seeded random weights (d3sr/testing.py draws the
same weights for both). Each (engine, task) runs in its own process, so its
peak RSS is its own: one warm-up call, then --runs timed calls; the median is
reported with the ratio d3sr / PyTorch. torch and diffusers may live in
another interpreter (--torch-python); d3sr must be importable by this one.
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


def load_testing():
    spec = importlib.util.spec_from_file_location("d3sr_testing", os.path.join(ROOT, "d3sr", "testing.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(task, size):
    import numpy as np

    testing = load_testing()
    if task == "encode":
        return testing.random_images((1, 3, size, size), seed=1)
    return np.random.default_rng(1).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)


def child(engine, task, size, runs, threads):
    """Runs in a subprocess: builds the model, times it, prints one JSON line."""
    testing = load_testing()
    config = testing.real_config("sd21-vae")
    x = inputs(task, size)
    if engine == "d3sr":
        import d3sr
        import scipy_openblas32

        d3sr.set_num_threads(threads)
        # Draw the whole model's weights (the draw order is over all names), keep this part's.
        weights = testing.random_weights(d3sr.VAE.from_config(config).weight_shapes(), seed=0)
        vae = d3sr.VAE.from_config(config, parts=("encoder",) if task == "encode" else ("decoder",))
        vae.load_weights({name: weights[name] for name in vae.weight_shapes()})
        del weights
        fn = vae.encode if task == "encode" else vae.decode
        info = {"blas": scipy_openblas32.get_openblas_config().strip()}
    else:
        import torch
        from diffusers import AutoencoderKL

        torch.set_num_threads(threads)
        model = AutoencoderKL.from_config(config).eval()
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict({k: torch.from_numpy(v) for k, v in testing.random_weights(shapes, seed=0).items()})
        xt = torch.from_numpy(x)

        def fn(_):
            with torch.inference_mode():
                out = model.encode(xt).latent_dist.mean if task == "encode" else model.decode(xt).sample
            return out.numpy()
        info = {"torch": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available()}
    out = fn(x)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - start)
    import numpy as np

    np.save(os.environ["D3SR_BENCH_OUT"], np.asarray(out, np.float32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"times": times, "peak_rss_mib": peak, **info}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default=sys.executable, help="interpreter with torch and diffusers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (multiple of 8)")
    parser.add_argument("--tasks", default="decode,encode")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.size, args.runs, args.threads)

    import numpy as np

    print(f"SD 2.1 VAE, {args.size}x{args.size} image, {args.threads} threads, median of {args.runs} after a warm-up")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    rows = []
    for task in args.tasks.split(","):
        results, outputs = {}, {}
        for engine, python in (("d3sr", sys.executable), ("torch", args.torch_python)):
            out_path = os.path.join("/tmp", f"d3sr_bench_{engine}_{task}.npy")
            env = dict(os.environ, D3SR_BENCH_OUT=out_path)
            cmd = [python, os.path.abspath(__file__), "--child", engine, task, "--size", str(args.size),
                   "--runs", str(args.runs), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"{engine} {task} failed:\n{proc.stderr}")
            results[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
            outputs[engine] = np.load(out_path)
        a, b = outputs["d3sr"].astype(np.float64), outputs["torch"].astype(np.float64)
        err = np.linalg.norm(a - b) / np.linalg.norm(b)
        ours, theirs = (statistics.median(results[e]["times"]) for e in ("d3sr", "torch"))
        rows.append((task, ours, theirs, results["d3sr"]["peak_rss_mib"], results["torch"]["peak_rss_mib"], err))
        print(f"  d3sr: {results['d3sr'].get('blas')}; torch {results['torch'].get('torch')}")
    print(f"{'task':8} {'d3sr s':>8} {'torch s':>8} {'ratio':>6} {'d3sr MiB':>9} {'torch MiB':>9} {'rel. L2':>9}")
    for task, ours, theirs, rss_ours, rss_theirs, err in rows:
        print(f"{task:8} {ours:8.2f} {theirs:8.2f} {ours / theirs:6.2f} {rss_ours:9.0f} {rss_theirs:9.0f} {err:9.1e}")


if __name__ == "__main__":
    main()
