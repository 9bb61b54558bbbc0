"""d3sr.distributed on a local Ray instance (2 CPUs): upscaling through Ray equals the
single-process loop bit for bit, a killed worker and an interrupted run lose nothing,
unreadable files are reported and skipped, evaluate_dataset equals `d3sr eval`.

The Ray tests share one Ray instance and one run over 20 images of mixed sizes (the tiny
test generator, scale 2). The tests before them need no Ray.
"""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import d3sr
from d3sr import cli, distributed
from d3sr.images import read_image, upscale_picture
from d3sr.testing import random_images
from test_metrics import weights_file, ref  # noqa: F401  (fixtures)

from conftest import DATA

CHECKPOINT = os.path.join(DATA, "generator_tiny")
SIZES = [(16, 16), (40, 24), (33, 17), (24, 40), (17, 31), (40, 40), (21, 36), (28, 19), (16, 37), (35, 29)] * 2


def photo(h, w, seed):
    """An H x W x 3 uint8 test picture."""
    return np.round((random_images((1, 3, h, w), seed)[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)


def partial_files(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(distributed.PARTIAL_SUFFIX)]


def outputs(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


# ---- without Ray ------------------------------------------------------------------------

def test_import_d3sr_and_d3sr_distributed_import_no_ray():
    code = "import sys, d3sr, d3sr.distributed; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(d3sr.__file__))).stdout
    assert out.strip() == "[]", out


def test_plan_keeps_relative_names_and_refuses_collisions(tmp_path):
    for name in ("a.png", "b.jpg", "sub/c.png", ".hidden.png", "notes.txt"):
        os.makedirs(os.path.dirname(tmp_path / "in" / name), exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    plan = distributed.plan_upscale(str(tmp_path / "in"), str(tmp_path / "out"))
    assert [(os.path.relpath(s, tmp_path / "in"), os.path.relpath(t, tmp_path / "out")) for s, t in plan] == \
        [("a.png", "a.png"), ("b.jpg", "b.png"), (os.path.join("sub", "c.png"), os.path.join("sub", "c.png"))]

    (tmp_path / "in" / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="would both be written to"):
        distributed.plan_upscale(str(tmp_path / "in"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="is the input folder"):
        distributed.plan_upscale(str(tmp_path / "in"), str(tmp_path / "in"))
    with pytest.raises(FileNotFoundError, match="input not found"):
        distributed.plan_upscale(str(tmp_path / "missing"), str(tmp_path / "out"))
    # An output folder inside the input folder is not read as input (a resumed run would).
    (tmp_path / "in" / "a.jpg").unlink()
    os.makedirs(tmp_path / "in" / "out")
    (tmp_path / "in" / "out" / "a.png").write_bytes(b"")
    assert len(distributed.plan_upscale(str(tmp_path / "in"), str(tmp_path / "in" / "out"))) == 3


def test_bad_arguments_fail_before_ray_starts(tmp_path):
    folder = tmp_path / "in"
    os.makedirs(folder)
    Image.fromarray(photo(16, 16, 0)).save(folder / "a.png")
    run = lambda **kw: distributed.upscale_dataset(str(folder), str(tmp_path / "out"), **kw)  # noqa: E731
    with pytest.raises(TypeError, match="no_such_option"):
        run(checkpoint=CHECKPOINT, no_such_option=1)
    with pytest.raises(ValueError, match="scale"):
        run(checkpoint=CHECKPOINT, scale=0)
    with pytest.raises(ValueError, match="num_workers"):
        run(checkpoint=CHECKPOINT, num_workers=0)
    with pytest.raises(ValueError, match="device"):
        run(checkpoint=CHECKPOINT, device="tpu")
    with pytest.raises(FileNotFoundError):
        run(checkpoint=str(tmp_path / "no_checkpoint"))
    with pytest.raises(ValueError, match="metrics"):
        distributed.evaluate_dataset(str(folder), str(folder), metrics="psnr,nope")
    assert not os.path.exists(tmp_path / "out")


# ---- on Ray -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    # Workers are processes started by Ray's raylet, which passes on this environment: they
    # import the d3sr under test, and use one core thread each, as the reference loop below.
    # Ray also puts the driver's working directory on the workers' sys.path: started in
    # tests/, a checkout's d3sr/ (without its built core, in CI) never shadows the installed one.
    root = os.path.dirname(os.path.dirname(d3sr.__file__))
    saved, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, saved) if p)
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    try:
        ray.init(num_cpus=2, object_store_memory=100 << 20, include_dashboard=False, logging_level="warning")
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ray
    finally:
        ray.shutdown()
        os.chdir(cwd)
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """20 images of mixed sizes (6 in a subfolder), an undecodable file and a truncated PNG."""
    folder = tmp_path_factory.mktemp("lr")
    names = []
    for i, (h, w) in enumerate(SIZES):
        name = f"{'sub/' if i % 3 == 0 else ''}img{i:02d}.png"
        os.makedirs(os.path.dirname(folder / name), exist_ok=True)
        Image.fromarray(photo(h, w, i)).save(folder / name)
        names.append(name)
    (folder / "garbage.png").write_bytes(b"this is not an image")
    whole = (folder / names[1]).read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return str(folder), names


@pytest.fixture(scope="module")
def reference(dataset):
    """The plain single-process loop (what `d3sr upscale` does), one core thread (the workers' count)."""
    folder, names = dataset
    upscaler = d3sr.Upscaler.load(CHECKPOINT)
    d3sr.set_num_threads(1)
    try:
        return {name: upscale_picture(read_image(os.path.join(folder, name)), lambda rgb: upscaler.upscale(rgb, 2)).pixels
                for name in names}
    finally:
        d3sr.set_num_threads(0)


def assert_outputs_equal_reference(output_dir, reference):
    assert outputs(output_dir) == sorted(reference)
    for name, expected in reference.items():
        actual = np.asarray(Image.open(os.path.join(output_dir, name)))
        assert actual.shape == expected.shape and np.array_equal(actual, expected), name


@pytest.fixture(scope="module")
def first_run(ray_session, dataset, tmp_path_factory):
    folder, _ = dataset
    output_dir = str(tmp_path_factory.mktemp("sr") / "out")
    report = distributed.upscale_dataset(folder, output_dir, CHECKPOINT, scale=2, num_workers=2)
    return output_dir, report


def test_ray_equals_the_single_process_loop_bit_for_bit(first_run, reference):
    output_dir, report = first_run
    assert_outputs_equal_reference(output_dir, reference)
    assert sorted(os.path.relpath(t, output_dir) for t in report.written) == sorted(reference)
    assert report.skipped == [] and report.workers == 2 and partial_files(output_dir) == []
    assert len({row["worker"] for row in report.rows}) == 2  # both actors took part


def test_unreadable_images_are_reported_per_file_and_skipped(first_run):
    output_dir, report = first_run
    failed = {os.path.basename(source): why for source, why in report.failed}
    assert sorted(failed) == ["garbage.png", "truncated.png"], report.failed
    assert all(name in why for name, why in failed.items()), failed  # each message names its file
    assert not os.path.exists(os.path.join(output_dir, "garbage.png"))


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(ray_session, dataset, reference, tmp_path):
    folder, _ = dataset
    killed = []

    def kill_the_first_worker(done, total, row):
        if not killed:  # the first image is back: its worker is on its next one
            os.kill(int(row["worker"]), signal.SIGKILL)
            killed.append((int(row["worker"]), done, len(outputs(tmp_path))))

    report = distributed.upscale_dataset(folder, str(tmp_path), CHECKPOINT, scale=2, num_workers=2,
                                         progress=kill_the_first_worker)
    pid, done, written_then = killed[0]
    assert done == 1 and written_then < len(reference), "the run ended before the kill"
    assert_outputs_equal_reference(tmp_path, reference)
    targets = [row["target"] for row in report.rows]
    assert len(targets) == len(set(targets)) == len(reference) + 2  # one row per image, none twice
    assert len(report.written) == len(reference) and len(report.failed) == 2
    assert partial_files(tmp_path) == []


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumed_computes_only_the_missing_outputs(ray_session, dataset, reference, tmp_path,
                                                                      capsys):
    folder, _ = dataset

    def interrupt(done, total, row):
        if done == 6:
            raise Interrupted

    with pytest.raises(Interrupted):
        distributed.upscale_dataset(folder, str(tmp_path), CHECKPOINT, scale=2, num_workers=2, progress=interrupt)
    # The pool is stopped on the way out; wait until no straggler writes any more.
    seen, quiet_since = None, time.monotonic()
    while time.monotonic() - quiet_since < 2:
        now = outputs(tmp_path)
        if now != seen:
            seen, quiet_since = now, time.monotonic()
        time.sleep(0.1)
    done_before = {name: os.stat(tmp_path / name) for name in seen if not name.endswith(distributed.PARTIAL_SUFFIX)}
    missing = sorted(set(reference) - set(done_before))
    assert 6 <= len(done_before) < len(reference)
    (tmp_path / f".img05.png.k2j4h6g8{distributed.PARTIAL_SUFFIX}").write_bytes(b"\x89PNG half")  # a killed write

    # Resumed with the command: its count of images computed is the report's.
    rc = cli.main(["upscale", folder, "-o", str(tmp_path), "--checkpoint", CHECKPOINT, "--scale", "2",
                   "--ray", "--workers", "2"])
    out, err = capsys.readouterr()
    assert rc == 1 and f"{len(missing)} written, {len(done_before)} already there, 2 failed" in out, out
    assert f"[{len(missing) + 2}/{len(missing) + 2}]" in err and "garbage.png" in err
    written = [line for line in err.splitlines() if " written " in line]
    assert len(written) == len(missing) and all(any(f"{os.sep}{name} " in line for line in written) for name in missing)
    for name, before in done_before.items():  # left as they were, not written again
        after = os.stat(tmp_path / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    assert_outputs_equal_reference(tmp_path, reference)
    assert partial_files(tmp_path) == []


def test_evaluate_dataset_equals_d3sr_eval(ray_session, reference, weights_file, tmp_path, capsys):  # noqa: F811
    rng = np.random.default_rng(0)
    for name in sorted(reference)[:10]:
        sr = reference[name]
        hr = np.clip(sr.astype(np.int16) + rng.integers(-20, 21, sr.shape), 0, 255).astype(np.uint8)
        for folder, image, stem in (("sr", sr, name[:-4] + "_x2"), ("hr", hr, name[:-4])):
            os.makedirs(tmp_path / folder, exist_ok=True)
            Image.fromarray(image).save(tmp_path / folder / (os.path.basename(stem) + ".png"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "sr" / "small_x2.png")  # its HR is larger
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "hr" / "small.png")
    options = ["--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--sr-suffix", "_x2",
               "--metrics", "psnr,ssim,lpips", "--crop-border", "2", "--weights", weights_file]

    result = distributed.evaluate_dataset(tmp_path / "sr", tmp_path / "hr", ("psnr", "ssim", "lpips"), 2,
                                          weights=weights_file, sr_suffix="_x2", csv=tmp_path / "ray.csv",
                                          num_workers=2)
    assert [name for name, _ in result.failed] == ["small"] and "SR small_x2.png is 8x8" in result.failed[0][1]
    os.unlink(tmp_path / "sr" / "small_x2.png")  # d3sr eval stops at a bad pair
    os.unlink(tmp_path / "hr" / "small.png")
    assert cli.main(["eval", *options, "--csv", str(tmp_path / "plain.csv")]) == 0
    plain = capsys.readouterr().out.splitlines()

    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert len(result.rows) == 10
    scores = np.asarray([row[1:] for row in result.rows], np.float64)
    means, stds = np.mean(scores, axis=0), np.std(scores, axis=0)  # d3sr eval's mean, over the same rows
    for i, metric in enumerate(result.metrics):
        assert (result.summary[metric]["mean"], result.summary[metric]["std"]) == (means[i], stds[i])
    assert plain[2] == "  ".join(f"{result.summary[m]['mean']:>22.4f}" for m in result.metrics)

    # The command: d3sr eval's lines and CSV, then the standard deviations.
    assert cli.main(["eval", *options, "--csv", str(tmp_path / "ray_command.csv"), "--ray"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == plain[:3] + [f"per-image scores: {tmp_path / 'ray_command.csv'}"]
    assert (tmp_path / "ray_command.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert lines[5] == "  ".join(f"{s:>22.4f}" for s in stds)
