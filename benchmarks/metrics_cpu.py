"""LPIPS (alex) and DISTS on the CPU: d3sr against the lpips and DISTS_pytorch
packages, same weights, same threads.

    python benchmarks/metrics_cpu.py --torch-python PYTHON_WITH_TORCH [--threads 2] [--batch 2] [--runs 3]

Scores a batch of --batch image pairs of --size x --size (float32 in [0, 1]).
The backbones get seeded random weights (d3sr/testing.py draws the same for
both engines; torchvision's ImageNet weights are not needed to time them),
the LPIPS lin layers and DISTS' alpha/beta are the real ones (the packages'
own, for d3sr from tests/data/metrics/heads.safetensors). Each (engine, task)
runs in its own process: one warm-up call, then --runs timed calls; the
median is reported with the ratio d3sr / PyTorch and the relative difference
of the scores. torch, lpips and DISTS_pytorch may live in another
interpreter (--torch-python); d3sr must be importable by this one.
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = {"alexnet": 101, "vgg16": 102}
TASKS = ("lpips_alex", "dists")


def load_testing():
    spec = importlib.util.spec_from_file_location("d3sr_testing", os.path.join(ROOT, "d3sr", "testing.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def d3sr_engine(task, threads):
    import d3sr
    import d3sr.metrics as metrics
    import scipy_openblas32
    from d3sr._native import _core
    from safetensors.numpy import load_file, save_file

    testing = load_testing()
    d3sr.set_num_threads(threads)
    tensors = dict(load_file(os.path.join(ROOT, "tests", "data", "metrics", "heads.safetensors")))
    net = "alexnet" if task == "lpips_alex" else "vgg16"
    model = _core.perceptual_create(task)
    shapes = {n[len(net) + 1:]: s for n, s, _ in model.weights() if n.startswith(net + ".")}
    tensors.update({f"{net}.{k}": v for k, v in testing.random_weights(shapes, SEEDS[net]).items()})
    path = os.path.join(tempfile.mkdtemp(), "metrics.safetensors")
    save_file(tensors, path)
    fn = (lambda a, b: metrics.lpips(a, b, weights=path)) if task == "lpips_alex" else (
        lambda a, b: metrics.dists(a, b, weights=path))
    return fn, {"blas": scipy_openblas32.get_openblas_config().strip()}


def torch_engine(task, threads):
    import numpy as np
    import torch
    import torchvision

    testing = load_testing()
    torch.set_num_threads(threads)
    net = "alexnet" if task == "lpips_alex" else "vgg16"
    features = getattr(torchvision.models, net)().features
    shapes = {f"features.{k}": tuple(v.shape) for k, v in features.state_dict().items()}
    drawn = testing.random_weights(shapes, SEEDS[net])
    features.load_state_dict({k[len("features."):]: torch.from_numpy(v) for k, v in drawn.items()})
    stub = lambda *args, **kwargs: type("Net", (), {"features": features})()  # noqa: E731
    if task == "lpips_alex":
        import lpips

        lpips.pretrained_networks.tv.alexnet = stub
        model = lpips.LPIPS(net="alex", verbose=False).eval()
        call = lambda x, y: model(x, y, normalize=True)  # noqa: E731
    else:
        from DISTS_pytorch import DISTS_pt

        DISTS_pt.models.vgg16 = stub
        model = DISTS_pt.DISTS(load_weights=False).eval()
        heads = torch.load(os.path.join(os.path.dirname(DISTS_pt.__file__), "weights.pt"), map_location="cpu")
        model.alpha.data, model.beta.data = heads["alpha"], heads["beta"]
        call = model

    def fn(a, b):
        x = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
        y = torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2)))
        with torch.inference_mode():
            return call(x, y).reshape(-1).double().numpy()
    return fn, {"torch": torch.__version__}


def child(engine, task, size, batch, runs, threads):
    """Runs in a subprocess: times the task, prints one JSON line."""
    import numpy as np

    a, b = load_testing().metric_pair((batch, size, size), seed=1, dtype="float32")
    fn, info = (d3sr_engine if engine == "d3sr" else torch_engine)(task, threads)
    scores = fn(a, b)  # warm-up (d3sr: loads the network)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        scores = fn(a, b)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"times": times, "scores": np.asarray(scores, np.float64).tolist(), "peak_rss_mib": peak, **info}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default=sys.executable, help="interpreter with torch, lpips, DISTS_pytorch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="image pairs per call")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.size, args.batch, args.runs, args.threads)

    import numpy as np

    print(f"{args.batch} pairs of {args.size}x{args.size}, {args.threads} threads, median of {args.runs} after a warm-up")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, load average {os.getloadavg()[0]:.2f}")
    rows = []
    for task in args.tasks.split(","):
        results = {}
        for engine, python in (("d3sr", sys.executable), ("torch", args.torch_python)):
            cmd = [python, os.path.abspath(__file__), "--child", engine, task, "--size", str(args.size),
                   "--batch", str(args.batch), "--runs", str(args.runs), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{engine} {task} failed:\n{proc.stderr}")
            results[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
        ours, theirs = (statistics.median(results[e]["times"]) for e in ("d3sr", "torch"))
        a, b = (np.asarray(results[e]["scores"]) for e in ("d3sr", "torch"))
        rows.append((task, ours, theirs, results["d3sr"]["peak_rss_mib"], results["torch"]["peak_rss_mib"],
                     float(np.max(np.abs(a / b - 1)))))
        print(f"  d3sr: {results['d3sr'].get('blas')}; torch {results['torch'].get('torch')}")
    print(f"{'task':11} {'d3sr s':>8} {'torch s':>8} {'ratio':>6} {'d3sr MiB':>9} {'torch MiB':>9} {'max rel diff':>12}")
    for task, ours, theirs, rss_ours, rss_theirs, err in rows:
        print(f"{task:11} {ours:8.2f} {theirs:8.2f} {ours / theirs:6.2f} {rss_ours:9.0f} {rss_theirs:9.0f} {err:12.1e}")


if __name__ == "__main__":
    main()
