"""Dataset-scale upscaling and evaluation on Ray Data (`pip install "d3sr[ray]"`).

    from d3sr.distributed import upscale_dataset, evaluate_dataset

    report = upscale_dataset("lr/", "sr/", "checkpoints/d3sr", scale=4, num_workers=2)
    result = evaluate_dataset("sr/", "hr/", metrics=("psnr", "ssim", "lpips"), csv="scores.csv")

What runs where: the calling process (the driver) lists the files, leaves out the outputs
that already exist and gathers one small status row per file. Each worker is a Ray actor
that loads one model once, then reads its images, upscales them one at a time (images of
any size, never resized) and writes each result under a temporary name in the output
folder, renamed when complete. Images travel as paths, never through Ray's object store:
every node must see the inputs, the outputs and the checkpoint at the same paths (one
machine, or a shared file system).

A worker that dies is restarted by Ray and its unfinished images are computed again; the
rename makes every output file complete or absent, so a run that is interrupted and
started again computes only the missing outputs. A file that cannot be read or upscaled is
reported in the result and skipped.

Results are bit-identical to `Upscaler.upscale` in one process with the same thread count
(`threads`, by default the worker's CPUs): the core's reductions depend on it.

Importing this module does not import Ray; the functions do.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._evaluation import (IMAGE_EXTENSIONS, CommandError, eval_scorers, pair_images, parse_metrics,
                          print_eval_summary, score_pair, write_scores_csv)
from ._tiling import TILE_NAMES

PARTIAL_SUFFIX = ".partial"  # d3sr.images.write_image's temporary files: .NAME.XXXXXXXX.partial
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "dists")

Progress = Callable[[int, int, dict], None]  # (done, total, the row of the file just finished)


# ---- image files ------------------------------------------------------------------------

def upscale_file(upscaler, source: str, target: str, scale: int, **options) -> Tuple[tuple, tuple]:
    """One image as `d3sr upscale` does it: read (d3sr.images), upscale the colour (alpha,
    grey and 16 bits brought along), write under a temporary name renamed when complete.
    The sizes (w, h) read and written."""
    from .images import read_image, upscale_picture, write_image

    picture = read_image(source)
    out = upscale_picture(picture, lambda rgb: upscaler.upscale(rgb, scale, **options))
    write_image(target, out)
    return picture.size, out.size


def remove_partial_files(output_dir: str) -> int:
    """Removes the temporary files of writes that never completed (a killed worker's); the count."""
    removed = 0
    for folder, _, files in os.walk(output_dir):
        for name in files:
            if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


# ---- Ray -------------------------------------------------------------------------------------

def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError('d3sr.distributed needs Ray Data: pip install "d3sr[ray]"') from None
    return ray


def connect(address: Optional[str] = None, **init_options):
    """Joins Ray and returns the ray module. A process already connected stays with its Ray.
    address None: the instance of RAY_ADDRESS or of `ray start` on this machine, else a new
    local one; "auto" (the `ray start` cluster this node belongs to) or "ray://HEAD:10001"
    (Ray Client): a cluster. init_options go to ray.init."""
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be None or a string such as 'auto' or 'ray://host:10001', not {address!r}")
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address or None, **init_options)
    return ray


def _worker_count(ray, num_workers: Optional[int], device: str, cpus_per_worker: float) -> int:
    if num_workers is not None:
        return num_workers
    resources = ray.cluster_resources()
    if device == "cuda":
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1) // cpus_per_worker))


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, not {value!r}")


def _check_worker_options(num_workers, batch_size, cpus_per_worker, threads, progress) -> None:
    _positive_int("num_workers", num_workers, allow_none=True)
    _positive_int("batch_size", batch_size)
    if not isinstance(cpus_per_worker, (int, float)) or isinstance(cpus_per_worker, bool) or not cpus_per_worker > 0:
        raise ValueError(f"cpus_per_worker must be a number > 0, not {cpus_per_worker!r}")
    _positive_int("threads", threads, allow_none=True)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable (done, total, row) or None, not {type(progress).__name__}")


def _threads(threads: Optional[int], cpus_per_worker: float) -> int:
    return threads if threads is not None else max(1, int(cpus_per_worker))


def _run(ray, items: List[dict], worker_class, constructor: dict, *, workers: int, batch_size: int,
         cpus_per_worker: float, gpus_per_worker: float, progress: Optional[Progress]) -> List[dict]:
    """Streams items through a pool of `workers` actors of worker_class(**constructor); the rows
    they return, in the order they finish."""
    dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / batch_size))
    dataset = dataset.map_batches(worker_class, fn_constructor_kwargs=constructor, batch_size=batch_size,
                                  batch_format="numpy",
                                  compute=ray.data.ActorPoolStrategy(size=workers),
                                  num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
    rows = []
    for row in dataset.iter_rows():
        rows.append(dict(row))
        if progress is not None:
            progress(len(rows), len(items), rows[-1])
    return rows


# ---- upscaling ----------------------------------------------------------------------------

@dataclasses.dataclass
class UpscaleReport:
    """What one upscale_dataset call did."""
    output_dir: str
    written: List[str]                 # outputs computed and written by this call
    skipped: List[str]                 # outputs that existed already, left as they were
    failed: List[Tuple[str, str]]      # (input, why) of the images that could not be upscaled
    rows: List[dict]                   # one per image computed: source, target, status, message, seconds (its
                                       # reading, upscaling and writing), finished (time.time()), worker (pid)
    workers: int                       # the actor pool's size (Ray starts what the cluster has room for)
    seconds: float

    def __str__(self) -> str:
        return (f"{len(self.written)} written, {len(self.skipped)} already there, {len(self.failed)} failed "
                f"in {self.seconds:.1f} s, pool of {self.workers} worker{'s' * (self.workers != 1)} -> {self.output_dir}")


def plan_upscale(inputs: Union[str, Sequence[str]], output_dir: str) -> List[Tuple[str, str]]:
    """[(input file, output file)] for upscale_dataset: the files named, and the images in the
    folders named (walked, hidden names and the output folder left out); each written to
    output_dir under its path relative to its folder (a file named: its name), as .png.
    Refuses, before any work, two inputs with one output and an output that is an input."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"output_dir must be a folder path, not {type(output_dir).__name__}")
    output_dir = os.fspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir {output_dir} is a file, not a folder")
    out_real = os.path.realpath(output_dir)
    plan: List[Tuple[str, str]] = []
    for given in inputs:
        if not isinstance(given, (str, os.PathLike)):
            raise TypeError(f"inputs must be paths of image files or folders, not {type(given).__name__}")
        given = os.fspath(given)
        if os.path.isdir(given):
            if os.path.realpath(given) == out_real:
                raise ValueError(f"output_dir {output_dir} is the input folder {given}; write to another folder")
            for folder, dirs, files in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and os.path.realpath(os.path.join(folder, d)) != out_real)
                for name in sorted(files):
                    if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                        continue
                    source = os.path.join(folder, name)
                    relative = os.path.relpath(source, given)
                    plan.append((source, os.path.join(output_dir, os.path.splitext(relative)[0] + ".png")))
        elif os.path.isfile(given):
            plan.append((given, os.path.join(output_dir, os.path.splitext(os.path.basename(given))[0] + ".png")))
        else:
            raise FileNotFoundError(f"input not found: {given}")
    if not plan:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, inputs))}")
    targets: Dict[str, str] = {}
    for source, target in plan:
        key = os.path.normcase(os.path.realpath(target))
        if key in targets:
            raise ValueError(f"{targets[key]} and {source} would both be written to {target}; rename one")
        targets[key] = source
        if os.path.exists(target) and os.path.samefile(target, source):
            raise ValueError(f"{target} is an input; d3sr never writes over its inputs")
    return plan


class _UpscaleWorker:
    """One Ray actor: the model, loaded once, and the images of the batches it is given."""

    def __init__(self, checkpoint, device, dtype, threads, scale, options):
        import d3sr

        d3sr.set_num_threads(threads)
        load = d3sr.Upscaler.load
        self.upscaler = load(device=device, dtype=dtype) if checkpoint is None else \
            load(checkpoint, device=device, dtype=dtype)
        self.scale, self.options, self.pid = scale, options, os.getpid()

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        status, messages, seconds, finished = [], [], [], []
        for source, target in zip(batch["source"], batch["target"]):
            start = time.perf_counter()
            try:
                (w, h), (out_w, out_h) = upscale_file(self.upscaler, str(source), str(target), self.scale,
                                                      **self.options)
                status.append("written")
                messages.append(f"{w}x{h} -> {out_w}x{out_h}")
            except Exception as e:  # reported per file; the run goes on
                status.append("failed")
                messages.append(f"{type(e).__name__}: {e}")
            seconds.append(time.perf_counter() - start)
            finished.append(time.time())
        return {"source": batch["source"], "target": batch["target"], "status": np.array(status),
                "message": np.array(messages), "seconds": np.array(seconds), "finished": np.array(finished),
                "worker": np.full(len(status), self.pid)}


def _check_upscale_options(checkpoint, scale, device, dtype, options) -> None:
    from ._checkpoint import read_generator_config
    from ._upscaler import Upscaler

    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or not 1 <= scale <= 16:
        raise ValueError(f"scale must be an integer from 1 to 16, not {scale!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    # Not d3sr._checks.device_and_dtype: this process may have no GPU where the workers have one.
    if dtype not in (None, "fp32", "fp16", "bf16"):
        raise ValueError(f"dtype must be None, 'fp32', 'fp16' or 'bf16', not {dtype!r}")
    try:  # a misspelt option fails here, not once per image on the workers
        inspect.signature(Upscaler.upscale).bind(None, None, scale, **options)
    except TypeError as e:
        raise TypeError(f"upscale options {sorted(options)}: {e}") from None
    if checkpoint == "tiny":  # Upscaler.load's name of the built-in model, where d3sr has one
        return
    if checkpoint is None:
        path_parameter = next(iter(inspect.signature(Upscaler.load).parameters.values()))
        if path_parameter.default is inspect.Parameter.empty:
            raise ValueError("checkpoint is required: a generator folder with d3sr.json")
    else:
        read_generator_config(os.fspath(checkpoint))  # a missing or broken folder fails before Ray starts


def upscale_dataset(inputs: Union[str, Sequence[str]], output_dir: str, checkpoint: Optional[str] = None, *,
                    scale: int = 4, device: str = "cpu", dtype: Optional[str] = None,
                    num_workers: Optional[int] = None, batch_size: int = 1, cpus_per_worker: float = 1,
                    threads: Optional[int] = None, address: Optional[str] = None,
                    progress: Optional[Progress] = None, **upscale_options) -> UpscaleReport:
    """Upscales every image of inputs (files and folders, see plan_upscale) into output_dir on
    Ray Data, one model per actor; skips the outputs that exist (a run started again resumes).

    checkpoint: a generator folder (None: the built-in model, where d3sr has one).
    num_workers: actors (None: one per GPU on CUDA, else cluster CPUs / cpus_per_worker);
    each takes num_gpus=1 on CUDA. batch_size: images per task (a killed worker's task is
    computed again whole). threads: the core's threads in each worker (default
    cpus_per_worker). address: see connect. progress(done, total, row) is called in this
    process as each image finishes. Other keywords go to Upscaler.upscale (tiling, colour fix).
    """
    _check_worker_options(num_workers, batch_size, cpus_per_worker, threads, progress)
    _check_upscale_options(checkpoint, scale, device, dtype, upscale_options)
    start = time.perf_counter()
    plan = plan_upscale(inputs, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    remove_partial_files(output_dir)  # left by a run that was killed
    todo = [(source, target) for source, target in plan if not os.path.exists(target)]
    skipped = [target for source, target in plan if os.path.exists(target)]
    report = UpscaleReport(os.fspath(output_dir), [], skipped, [], [], 0, 0.0)
    if todo:
        ray = connect(address)
        report.workers = min(_worker_count(ray, num_workers, device, cpus_per_worker), len(todo))
        constructor = dict(checkpoint=checkpoint if checkpoint in (None, "tiny") else os.path.abspath(checkpoint),
                           device=device,
                           dtype=dtype, threads=_threads(threads, cpus_per_worker), scale=int(scale),
                           options=upscale_options)
        items = [{"source": os.path.abspath(s), "target": os.path.abspath(t)} for s, t in todo]
        try:
            report.rows = _run(ray, items, _UpscaleWorker, constructor, workers=report.workers,
                               batch_size=batch_size, cpus_per_worker=cpus_per_worker,
                               gpus_per_worker=1 if device == "cuda" else 0, progress=progress)
        finally:
            remove_partial_files(output_dir)  # a killed worker's half-written file; its image was redone
        given = {os.path.abspath(t): (s, t) for s, t in todo}
        for row in report.rows:
            source, target = given[str(row["target"])]
            if row["status"] == "written":
                report.written.append(target)
            else:
                report.failed.append((source, str(row["message"])))
    report.seconds = time.perf_counter() - start
    return report


# ---- evaluation ---------------------------------------------------------------------------

@dataclasses.dataclass
class EvalResult:
    """Per-image scores and their summary, as `d3sr eval` computes them."""
    metrics: List[str]
    rows: List[list]                   # [name, score per metric], sorted by name (the CSV's rows)
    summary: Dict[str, Dict[str, float]]  # metric -> {"mean", "std"} over rows (std: population, ddof=0)
    failed: List[Tuple[str, str]]      # (name, why) of pairs that could not be scored
    workers: int                       # the actor pool's size
    seconds: float

    def __str__(self) -> str:
        lines = [f"{len(self.rows)} image pairs scored, {len(self.failed)} failed, in {self.seconds:.1f} s, "
                 f"pool of {self.workers} worker{'s' * (self.workers != 1)}"]
        lines += [f"  {name:>10}  mean {s['mean']:.4f}  std {s['std']:.4f}" for name, s in self.summary.items()]
        return "\n".join(lines)


class _EvalWorker:
    """One Ray actor: the metrics' networks, loaded once, scoring the pairs it is given."""

    def __init__(self, chosen, options, threads):
        from . import set_num_threads

        set_num_threads(threads)
        self.chosen = chosen
        self.score = eval_scorers(chosen, **options)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:

        scores, errors = [], []
        for name, sr, hr in zip(batch["name"], batch["sr"], batch["hr"]):
            try:
                scores.append(score_pair(str(name), str(sr), str(hr), self.score)[1:])
                errors.append("")
            except Exception as e:  # reported per pair; the run goes on
                scores.append([math.nan] * len(self.chosen))
                errors.append(str(e) if isinstance(e, (CommandError, ValueError)) else f"{type(e).__name__}: {e}")
        table = np.asarray(scores, np.float64).reshape(len(errors), len(self.chosen))
        out = {"name": batch["name"], "error": np.array(errors)}
        out.update({f"score:{metric}": table[:, i] for i, metric in enumerate(self.chosen)})
        return out


def evaluate_dataset(sr_dir: str, hr_dir: str, metrics: Union[str, Sequence[str]] = DEFAULT_METRICS,
                     crop_border: int = 0, *, rgb: bool = False, ssim_downsample: bool = False,
                     lpips_net: str = "alex", weights: Optional[str] = None, sr_suffix: str = "",
                     csv: Optional[str] = None, num_workers: Optional[int] = None, batch_size: int = 4,
                     cpus_per_worker: float = 1, threads: Optional[int] = None, address: Optional[str] = None,
                     progress: Optional[Progress] = None) -> EvalResult:
    """Scores the images of sr_dir against those of hr_dir, paired by name as `d3sr eval`
    pairs them, on Ray Data; the same per-image scores, CSV and means as `d3sr eval` (whose
    options these are), plus the standard deviation. A pair that cannot be scored is reported
    in `failed` and left out of the table. Worker options as upscale_dataset's."""

    _check_worker_options(num_workers, batch_size, cpus_per_worker, threads, progress)
    if not isinstance(metrics, str):
        if not all(isinstance(m, str) for m in metrics):
            raise TypeError(f"metrics must be names or a comma-separated string, not {metrics!r}")
        metrics = ",".join(metrics)
    if not isinstance(crop_border, (int, np.integer)) or isinstance(crop_border, bool):
        raise TypeError(f"crop_border must be an integer, not {crop_border!r}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, not {crop_border}")
    if lpips_net not in ("alex", "vgg"):
        raise ValueError(f"lpips_net must be 'alex' or 'vgg', not {lpips_net!r}")
    options = dict(crop_border=int(crop_border), rgb=bool(rgb), ssim_downsample=bool(ssim_downsample),
                   lpips_net=lpips_net, weights=weights)
    start = time.perf_counter()
    try:
        chosen = parse_metrics(metrics)
        pairs = pair_images(os.fspath(sr_dir), os.fspath(hr_dir), sr_suffix)
        eval_scorers(chosen, **options)  # missing weights fail here, before Ray starts
    except CommandError as e:
        raise ValueError(str(e).replace("--metrics", "metrics").replace("--crop-border", "crop_border")) from None

    ray = connect(address)
    workers = min(_worker_count(ray, num_workers, "cpu", cpus_per_worker), len(pairs))
    items = [{"name": name, "sr": os.path.abspath(sr), "hr": os.path.abspath(hr)} for name, sr, hr in pairs]
    constructor = dict(chosen=chosen, options=options, threads=_threads(threads, cpus_per_worker))
    done = _run(ray, items, _EvalWorker, constructor, workers=workers, batch_size=batch_size,
                cpus_per_worker=cpus_per_worker, gpus_per_worker=0, progress=progress)

    by_name = {str(row["name"]): row for row in done}
    rows, failed = [], []
    for name, _, _ in pairs:  # d3sr eval's order
        row = by_name[name]
        if row["error"]:
            failed.append((name, str(row["error"])))
        else:
            rows.append([name] + [float(row[f"score:{metric}"]) for metric in chosen])
    if csv is not None:
        write_scores_csv(os.fspath(csv), chosen, rows)
    table = np.asarray([r[1:] for r in rows], np.float64).reshape(len(rows), len(chosen))
    means = np.mean(table, axis=0) if rows else np.full(len(chosen), math.nan)
    stds = np.std(table, axis=0) if rows else np.full(len(chosen), math.nan)
    summary = {m: {"mean": float(means[i]), "std": float(stds[i])} for i, m in enumerate(chosen)}
    return EvalResult(chosen, rows, summary, failed, workers, time.perf_counter() - start)


# ---- the command line (`d3sr upscale --ray`, `d3sr eval --ray`) ----------------------------

def _shown(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _quiet_connect(address: Optional[str]) -> None:
    """Joins Ray for a command, whose own lines report progress: Ray Data's only at errors."""
    import logging

    ray = connect(address, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _print_progress(done: int, total: int, row: dict) -> None:
    source = _shown(str(row["source"])) if "source" in row else str(row["name"])
    state = row.get("status", "failed" if row.get("error") else "scored")
    detail = row.get("message") or row.get("error") or ""
    print(f"[{done}/{total}] {state} {source}{' ' + str(detail) if detail else ''}", file=sys.stderr, flush=True)


def upscale_command(args) -> int:
    """`d3sr upscale IN... -o FOLDER --ray [ADDRESS] [--workers N]`: PNG outputs; those that
    exist are skipped (--skip-existing is how a Ray run always works)."""
    if getattr(args, "format", "png") != "png":
        raise CommandError(f"--format {args.format}: with --ray the outputs are PNG files")
    options = {name: getattr(args, name) for name in TILE_NAMES if hasattr(args, name)}
    if hasattr(args, "color_fix"):
        options["color_fix"] = None if args.color_fix == "none" else args.color_fix
    if hasattr(args, "vae_statistics"):
        options["vae_statistics"] = args.vae_statistics
    try:
        _quiet_connect(args.ray or None)
        report = upscale_dataset(args.inputs, args.output, args.checkpoint, scale=args.scale, device=args.device,
                                 dtype=args.dtype, num_workers=args.workers, threads=args.threads or None,
                                 address=args.ray or None, progress=_print_progress, **options)
    except ImportError as e:
        raise CommandError(str(e)) from None
    print(report)
    for source, why in report.failed:
        print(f"  failed: {source}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


def eval_command(args) -> int:
    """`d3sr eval --sr DIR --hr DIR --ray [ADDRESS] [...]`: d3sr eval's output, computed on Ray."""

    try:
        _quiet_connect(args.ray or None)
        result = evaluate_dataset(args.sr, args.hr, args.metrics, args.crop_border, rgb=args.rgb,
                                  ssim_downsample=args.ssim_downsample, lpips_net=args.lpips_net,
                                  weights=args.weights, sr_suffix=args.sr_suffix, csv=args.csv,
                                  num_workers=args.workers, threads=args.threads or None, address=args.ray or None,
                                  progress=_print_progress)
    except ImportError as e:
        raise CommandError(str(e)) from None
    for name, why in result.failed:
        print(f"  failed: {name}: {why}", file=sys.stderr)
    if not result.rows:
        raise CommandError("no image pair could be scored")
    print_eval_summary(args, result.metrics, result.rows)
    print("  ".join(f"{'std ' + name:>22}" for name in result.metrics))
    print("  ".join(f"{result.summary[name]['std']:>22.4f}" for name in result.metrics))
    return 1 if result.failed else 0
