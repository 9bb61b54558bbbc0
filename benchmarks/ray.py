"""d3sr.distributed against the plain single-process loop: images per second and Ray's overhead.

    python benchmarks/ray.py [--checkpoint tests/data/generator_tiny] [--images 40] [--size 48]
                             [--scale 2] [--workers 1,2] [--runs 3] [--threads 1]

Writes --images seeded test pictures (--size pixels square, a few pixels more or less, so the
sizes are mixed) to a temporary folder, then times, --runs times each, alternating:
  plain   one process of its own, without Ray: load the model, then read, upscale and
          write each image (what `d3sr upscale` does), with --threads core threads
  ray N   upscale_dataset with N workers (actors) of --threads threads each, on a local
          Ray instance started once beforehand (as a cluster is)
and reports medians: images/s over the whole call; the time to the first finished image
(model loading and, for Ray, starting the actors); and the steady rate between the first and
the last image written (for Ray, by the workers' clocks). Ray's overhead at 1 worker is given both ways: over the whole call (it
includes starting an actor process, a fixed cost that a large dataset hides) and in the
steady rate (per image: scheduling, status rows). Compute inside the workers is timed too,
so a slower machine (other jobs) shows as slower compute, not as overhead.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This file's folder is sys.path[0], where `import ray` would find this file, not Ray.
sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]


def make_inputs(folder, count, size):
    import numpy as np
    from PIL import Image

    from d3sr.testing import random_images

    for i in range(count):
        h, w = size + (i % 5) - 2, size - (i % 3) + 1
        rgb = np.round((random_images((1, 3, h, w), seed=i)[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(folder, f"img{i:03d}.png"))


def plain_loop(inputs, output_dir, checkpoint, scale, threads):
    """The single-process loop, in a process of its own, without Ray (as `d3sr upscale`)."""
    command = [sys.executable, os.path.abspath(__file__), "--plain", inputs, output_dir, checkpoint, str(scale),
               str(threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def plain_child(inputs, output_dir, checkpoint, scale, threads):
    """(total s, [s at which each image was written], compute s), as JSON on stdout."""
    import d3sr
    from d3sr.distributed import plan_upscale, upscale_file

    start = time.perf_counter()
    d3sr.set_num_threads(threads)
    upscaler = d3sr.Upscaler.load(checkpoint)
    ends, compute = [], 0.0
    for source, target in plan_upscale(inputs, output_dir):
        begin = time.perf_counter()
        upscale_file(upscaler, source, target, scale)
        ends.append(time.perf_counter())
        compute += ends[-1] - begin
    print(json.dumps([ends[-1] - start, [t - start for t in ends], compute]))


def ray_run(inputs, output_dir, checkpoint, scale, threads, workers):
    """As plain_loop; the times each image was written are the workers' (results reach this
    process in bursts)."""
    from d3sr.distributed import upscale_dataset

    start_wall, start = time.time(), time.perf_counter()
    report = upscale_dataset(inputs, output_dir, checkpoint, scale=scale, num_workers=workers, threads=threads,
                             cpus_per_worker=threads)
    total = time.perf_counter() - start
    assert not report.failed and not report.skipped, report
    ends = sorted(float(row["finished"]) - start_wall for row in report.rows)
    return total, ends, sum(float(row["seconds"]) for row in report.rows)


def main():
    if sys.argv[1:2] == ["--plain"]:
        inputs, output_dir, checkpoint, scale, threads = sys.argv[2:]
        return plain_child(inputs, output_dir, checkpoint, int(scale), int(threads))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=os.path.join(ROOT, "tests", "data", "generator_tiny"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="core threads per process (and CPUs per worker)")
    parser.add_argument("--address", default=None, help="a Ray cluster to join instead of a local instance")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    import ray

    work = tempfile.mkdtemp(prefix="d3sr-ray-bench-")
    try:
        inputs = os.path.join(work, "in")
        os.makedirs(inputs)
        make_inputs(inputs, args.images, args.size)
        start = time.perf_counter()
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(num_cpus=max(workers) * args.threads, include_dashboard=False, logging_level="warning")
        ray.data.DataContext.get_current().enable_progress_bars = False
        print(f"Ray started in {time.perf_counter() - start:.1f} s (not counted below); {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} before", file=sys.stderr)

        engines = [("plain", None)] + [(f"ray {n}", n) for n in workers]
        results = {name: [] for name, _ in engines}
        for run in range(args.runs):
            for name, n in engines:
                output_dir = os.path.join(work, f"out-{run}-{name.replace(' ', '')}")
                if n is None:
                    total, ends, compute = plain_loop(inputs, output_dir, args.checkpoint, args.scale, args.threads)
                else:
                    total, ends, compute = ray_run(inputs, output_dir, args.checkpoint, args.scale, args.threads, n)
                results[name].append((total, ends[0], (len(ends) - 1) / (ends[-1] - ends[0]), compute / len(ends)))
                print(f"run {run + 1} {name:>6}: {total:6.1f} s, first image at {ends[0]:5.1f} s, "
                      f"compute {compute / len(ends) * 1000:.0f} ms/image", file=sys.stderr)

        print(f"\n{args.images} images of about {args.size}x{args.size}, x{args.scale}, {args.checkpoint}; "
              f"{args.threads} thread(s) per process; medians of {args.runs} runs; "
              f"load average {os.getloadavg()[0]:.1f} after")
        print(f"{'':>8} {'images/s':>9} {'first image s':>14} {'steady images/s':>16} {'compute ms/image':>17}")
        median = {name: [statistics.median(r[i] for r in rows) for i in range(4)] for name, rows in results.items()}
        for name, (total, first, steady, compute) in median.items():
            print(f"{name:>8} {args.images / total:>9.2f} {first:>14.2f} {steady:>16.2f} {compute * 1000:>17.0f}")
        if "ray 1" in median:
            plain, one = median["plain"], median["ray 1"]
            print(f"Ray overhead at 1 worker: {one[0] / plain[0] - 1:+.1%} over the whole call, "
                  f"{plain[2] / one[2] - 1:+.1%} in the steady rate")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
