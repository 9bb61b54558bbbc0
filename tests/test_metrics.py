"""d3sr.metrics against pyiqa, lpips and DISTS_pytorch (tests/data/metrics,
made by tools/make_references.py --only metrics), and its errors.

The backbones run with seeded random weights (torchvision's ImageNet weights
cannot be fetched here), redrawn below exactly as the reference tool drew
them; the LPIPS lin layers and DISTS' alpha/beta are the real ones."""
import os
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import d3sr
import d3sr.metrics as metrics
from d3sr import _metric_weights as metric_weights
from d3sr._native import _core
from d3sr.testing import metric_pair, random_weights
from conftest import DATA

METRICS = os.path.join(DATA, "metrics")
BACKBONE_SEEDS = {"alexnet": 101, "vgg16": 102}  # tools/make_references.py
PIXEL_CASES = {
    "odd": ((1, 37, 41), 1, "uint8"),
    "batch": ((3, 64, 48), 2, "uint8"),
    "float": ((2, 33, 35), 3, "float32"),
    "large": ((1, 530, 397), 4, "uint8"),
    "tie": ((1, 640, 643), 5, "uint8"),
}
PIXEL_OPTIONS = [(True, 0, False), (False, 0, False), (True, 4, False), (False, 3, False), (True, 0, True),
                 (False, 4, True)]
PERCEPTUAL_CASES = {"odd": ((1, 47, 53), 6, "uint8"), "batch": ((2, 64, 64), 7, "float32")}
REL = 1e-4  # the bound for LPIPS / DISTS / EA-DISTS


@pytest.fixture(scope="module")
def ref():
    return load_file(os.path.join(METRICS, "reference.safetensors"))


def pair(ref, key, shape, seed, dtype):
    sr, hr = metric_pair(shape, seed, dtype)
    fingerprint = np.concatenate([sr.reshape(-1)[:16], hr.reshape(-1)[-16:]]).astype(np.float32)
    np.testing.assert_array_equal(fingerprint, ref[key], err_msg="test images differ from the reference tool's")
    return sr, hr


def backbone(name):
    """Seeded weights of torchvision's alexnet/vgg16 features under the file's names."""
    model = _core.perceptual_create("lpips_alex" if name == "alexnet" else "lpips_vgg")
    shapes = {n[len(name) + 1:]: s for n, s, _ in model.weights() if n.startswith(name + ".")}
    return {f"{name}.{k}": v for k, v in random_weights(shapes, BACKBONE_SEEDS[name]).items()}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, ref):
    tensors = dict(load_file(os.path.join(METRICS, "heads.safetensors")))
    for name in BACKBONE_SEEDS:
        drawn = backbone(name)
        first = sorted(drawn)[0]
        np.testing.assert_array_equal(drawn[first].reshape(-1)[:8], ref[f"{name}.fingerprint"])
        tensors.update(drawn)
    path = str(tmp_path_factory.mktemp("weights") / "metrics.safetensors")
    save_file(tensors, path)
    return path


# ---- PSNR and SSIM ------------------------------------------------------------------

def name(case, metric, y, crop, down):
    return f"{case}.{metric}.{'y' if y else 'rgb'}.crop{crop}{'.down' if down else ''}"


@pytest.mark.parametrize("case", sorted(PIXEL_CASES))
def test_psnr_and_ssim_match_pyiqa(ref, case):
    shape, seed, dtype = PIXEL_CASES[case]
    sr, hr = pair(ref, f"{case}.fingerprint", shape, seed, dtype)
    for y, crop, down in PIXEL_OPTIONS:
        ssim = metrics.ssim(sr, hr, crop_border=crop, y_channel=y, downsample=down)
        expected = ref[name(case, "ssim", y, crop, down)]
        assert np.abs(ssim - expected).max() <= 1e-5, (case, y, crop, down, ssim, expected)
        if not down:
            psnr = metrics.psnr(sr, hr, crop_border=crop, y_channel=y)
            expected = ref[name(case, "psnr", y, crop, down)]
            assert np.abs(psnr - expected).max() <= 1e-4, (case, y, crop, psnr, expected)


def test_downsampling_changes_ssim_of_large_images(ref):
    sr, hr = pair(ref, "large.fingerprint", *PIXEL_CASES["large"])
    assert abs(metrics.ssim(sr, hr, downsample=True) - metrics.ssim(sr, hr)) > 1e-3
    small = (slice(0, 300), slice(0, 300))  # round(300 / 256) = 1: nothing to downsample
    assert metrics.ssim(sr[small], hr[small], downsample=True) == metrics.ssim(sr[small], hr[small])


def luma_numpy(rgb):
    """pyiqa's float32 Y, operation by operation (tools/make_references.py checks
    it equals pyiqa's on all 2^24 colours)."""
    x = rgb.astype(np.float32) / np.float32(255) if rgb.dtype == np.uint8 else rgb
    s = x[..., 0] * np.float32(65.481) + x[..., 1] * np.float32(128.553)
    return ((s + x[..., 2] * np.float32(24.966)) + np.float32(16)) / np.float32(255)


def test_luma_matches_pyiqa_on_every_colour(ref):
    codes = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], -1).astype(np.uint8).reshape(1, 4096, 4096, 3)
    expected = luma_numpy(rgb)
    np.testing.assert_array_equal(_core.luma(rgb), expected)
    np.testing.assert_array_equal(_core.luma(rgb, True), np.rint(expected * np.float32(255)))
    # where exact BT.601 rounding and pyiqa's float32 differ, pyiqa wins
    colours = ref["luma.colours"]
    assert colours.shape[2] > 10
    np.testing.assert_array_equal(metrics.rgb_to_y(colours, rounded=True), ref["luma.pyiqa_rounded"])
    np.testing.assert_array_equal(metrics.rgb_to_y(colours), ref["luma.pyiqa"])


def test_single_images_give_floats_and_batches_arrays(ref):
    sr, hr = pair(ref, "batch.fingerprint", *PIXEL_CASES["batch"])
    batch = metrics.psnr(sr, hr)
    assert isinstance(batch, np.ndarray) and batch.shape == (3,) and batch.dtype == np.float64
    single = metrics.psnr(sr[1], hr[1])
    assert isinstance(single, float) and single == batch[1]
    assert metrics.ssim(sr[2], hr[2]) == metrics.ssim(sr, hr)[2]


def test_dtypes_convert_like_to_tensor(ref):
    sr, hr = pair(ref, "odd.fingerprint", *PIXEL_CASES["odd"])
    srf, hrf = sr.astype(np.float32) / np.float32(255), hr.astype(np.float32) / np.float32(255)
    for fn in (metrics.psnr, metrics.ssim):
        expected = fn(sr, hr)
        assert fn(srf, hrf) == expected
        assert fn(sr, hrf) == expected                 # uint8 with float: v / 255
        assert fn(srf.astype(np.float64), hr) == expected


def test_identical_images(ref):
    sr, _ = pair(ref, "odd.fingerprint", *PIXEL_CASES["odd"])
    assert metrics.psnr(sr, sr) == pytest.approx(80.0)  # 10 log10(1 / 1e-8), as pyiqa
    assert metrics.ssim(sr, sr) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim, metrics.lpips, metrics.dists, metrics.ea_dists])
def test_bad_input_is_named(fn, weights_file):
    kwargs = {} if fn in (metrics.psnr, metrics.ssim) else {"weights": weights_file}
    good = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"same shape.*\(40, 40, 3\) and \(40, 41, 3\)"):
        fn(good, np.zeros((40, 41, 3), np.uint8), **kwargs)
    with pytest.raises(TypeError, match="b must have dtype uint8"):
        fn(good, good.astype(np.int32), **kwargs)
    with pytest.raises(TypeError, match="a must be a numpy.ndarray"):
        fn(good.tolist(), good, **kwargs)
    with pytest.raises(ValueError, match=r"a must have shape \[H, W, 3\]"):
        fn(good[..., 0], good[..., 0], **kwargs)
    bad = good.astype(np.float32)
    bad[3, 4, 1] = 1.5
    with pytest.raises(ValueError, match=r"b has values in \[0, 1.5\].*\[0, 1\]"):
        fn(good.astype(np.float32), bad, **kwargs)
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="a contains NaN"):
        fn(bad, good, **kwargs)


def test_pixel_metric_size_errors():
    x = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match=r"10 x 12 .* at least 11 x 11"):
        metrics.ssim(x, x)
    y = np.zeros((30, 30, 3), np.uint8)
    with pytest.raises(ValueError, match=r"8 x 8 after cropping 11"):
        metrics.ssim(y, y, crop_border=11)
    with pytest.raises(ValueError, match="crop_border 15 leaves nothing"):
        metrics.psnr(y, y, crop_border=15)
    with pytest.raises(ValueError, match="crop_border must be an integer >= 0"):
        metrics.psnr(y, y, crop_border=-1)


# ---- LPIPS, DISTS, EA-DISTS ---------------------------------------------------------

@pytest.mark.parametrize("case", sorted(PERCEPTUAL_CASES))
def test_perceptual_metrics_match_references(ref, weights_file, case):
    sr, hr = pair(ref, f"perceptual.{case}.fingerprint", *PERCEPTUAL_CASES[case])
    key = f"perceptual.{case}"
    for net in ("alex", "vgg"):
        ours = metrics.lpips(sr, hr, net=net, weights=weights_file)
        for theirs in (ref[f"{key}.lpips_{net}"], ref[f"{key}.lpips_{net}.pyiqa"]):
            assert np.abs(ours / theirs - 1).max() <= REL, (net, ours, theirs)
    ours = metrics.dists(sr, hr, weights=weights_file)
    for theirs in (ref[f"{key}.dists"], ref[f"{key}.dists.pyiqa"]):
        assert np.abs(ours / theirs - 1).max() <= REL, ("dists", ours, theirs)
    ours = metrics.ea_dists(sr, hr, weights=weights_file)
    assert np.abs(ours / ref[f"{key}.ea_dists"] - 1).max() <= REL, ("ea_dists", ours, ref[f"{key}.ea_dists"])


def test_perceptual_identical_images(weights_file):
    x = metric_pair((1, 40, 40), 8)[0][0]
    assert metrics.lpips(x, x, weights=weights_file) == pytest.approx(0.0, abs=1e-10)
    assert metrics.dists(x, x, weights=weights_file) == pytest.approx(0.0, abs=1e-6)


def test_batches_are_chunked_like_single_calls(weights_file):
    sr, hr = metric_pair((3, 362, 362), 9)  # 2 pairs per chunk at this size: chunks of 2 and 1
    batch = metrics.lpips(sr, hr, weights=weights_file)
    singles = [metrics.lpips(sr[i], hr[i], weights=weights_file) for i in range(3)]
    np.testing.assert_allclose(batch, singles, rtol=1e-6)


def test_perceptual_size_errors(weights_file):
    x = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"LPIPS \(alex\) needs images of at least 31 x 31 pixels, got 30 x 40"):
        metrics.lpips(x, x, weights=weights_file)
    y = np.zeros((15, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"LPIPS \(vgg\) needs images of at least 16 x 16"):
        metrics.lpips(y, y, net="vgg", weights=weights_file)
    assert np.isfinite(metrics.dists(y, y, weights=weights_file))  # L2 pooling pads: any size
    with pytest.raises(ValueError, match="net must be 'alex' or 'vgg'"):
        metrics.lpips(x, x, net="squeeze", weights=weights_file)


def test_missing_weights_name_the_files_and_the_command(tmp_path, monkeypatch):
    monkeypatch.delenv(metric_weights.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    x = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(FileNotFoundError) as info:
        metrics.dists(x, x)
    text = str(info.value)
    for needed in ("vgg16-397923af.pth", "weights.pt", "d3sr convert-metric-weights", "--dists",
                   str(tmp_path / "d3sr" / "metrics.safetensors"), "D3SR_METRICS_WEIGHTS"):
        assert needed in text, (needed, text)
    with pytest.raises(FileNotFoundError, match=r"(?s)alexnet-owt-7be5be79.pth.*lpips' weights/v0.1/alex.pth"):
        metrics.lpips(x, x, weights=str(tmp_path / "nowhere.safetensors"))


def test_weight_file_without_a_network_says_what_it_lacks(tmp_path, weights_file, monkeypatch):
    partial = {k: v for k, v in load_file(weights_file).items() if not k.startswith("vgg16.")}
    path = str(tmp_path / "partial.safetensors")
    save_file(partial, path)
    monkeypatch.setenv(metric_weights.ENV, path)
    x = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"(?s)lacks .*'vgg16.features.0.bias'.*--vgg16"):
        metrics.dists(x, x)
    assert metrics.lpips(x, x) == pytest.approx(0.0, abs=1e-10)  # the alex part is complete


def test_metrics_release_the_gil(weights_file):
    sr, hr = metric_pair((4, 128, 128), 10)
    metrics.dists(sr[:1], hr[:1], weights=weights_file)  # load the network first
    started, done, result = threading.Event(), threading.Event(), {}

    def work():
        started.set()
        result["scores"] = metrics.dists(sr, hr, weights=weights_file)
        done.set()

    thread = threading.Thread(target=work)
    thread.start()
    started.wait()
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    thread.join()
    assert ticks > 20, f"the main thread ran {ticks} times while DISTS ran: the GIL was held"
    np.testing.assert_allclose(result["scores"], metrics.dists(sr, hr, weights=weights_file), rtol=1e-12)


def test_concurrent_calls_on_one_network_agree(weights_file):
    sr, hr = metric_pair((2, 48, 48), 11)
    expected = metrics.lpips(sr, hr, weights=weights_file)
    out = [None] * 4

    def work(i):
        out[i] = metrics.lpips(sr, hr, weights=weights_file)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for scores in out:
        np.testing.assert_array_equal(scores, expected)


# ---- the weight converter ------------------------------------------------------------

def test_converter_maps_the_original_state_dicts(tmp_path, weights_file):
    heads = load_file(os.path.join(METRICS, "heads.safetensors"))
    strip = lambda d, p: {k[len(p):]: v for k, v in d.items() if k.startswith(p)}
    alex = strip(backbone("alexnet"), "alexnet.")
    alex["classifier.1.weight"] = np.zeros((4096, 9216), np.float32)  # torchvision's head: dropped
    tensors = metric_weights.convert_state_dicts(
        alexnet=alex, vgg16=strip(backbone("vgg16"), "vgg16."),
        lpips={"alex": strip(heads, "lpips.alex."), "vgg": strip(heads, "lpips.vgg.")},
        dists={"alpha": heads["dists.alpha"], "beta": heads["dists.beta"]})
    expected = load_file(weights_file)
    assert sorted(tensors) == sorted(expected)
    for k in expected:
        np.testing.assert_array_equal(tensors[k], expected[k])
    assert metric_weights.networks_in(tensors) == ["lpips_alex", "lpips_vgg", "dists"]
    with pytest.raises(ValueError, match=r"'dists.alpha' has shape \(3,\), expected \(1, 1475, 1, 1\)"):
        metric_weights.convert_state_dicts(dists={"alpha": np.zeros(3, np.float32), "beta": heads["dists.beta"]})
    with pytest.raises(ValueError, match=r"--alexnet: the file lacks 'alexnet.features.10.bias'"):
        metric_weights.convert_state_dicts(alexnet={k: v for k, v in alex.items() if k != "features.10.bias"})
    with pytest.raises(ValueError, match="nothing to convert"):
        metric_weights.convert_state_dicts()


def test_converter_says_it_needs_torch():
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="needs torch"):
        metric_weights.convert(alexnet="alexnet.pth")


def test_ssim_is_the_same_at_any_thread_count():
    """The strips' partial sums are added in a fixed order: a reduction over dynamically
    scheduled strips once scored the same pair differently in the last bits from call to call."""
    rng = np.random.default_rng(3)
    a = rng.random((2, 300, 420, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.05, a.shape).astype(np.float32), 0, 1)
    before = d3sr.get_num_threads()
    try:
        scores = []
        for threads in (1, 2, 3, 4):
            d3sr.set_num_threads(threads)
            scores += [metrics.ssim(a, b), metrics.ssim(a, b, y_channel=False)]
    finally:
        d3sr.set_num_threads(before)
    assert all(np.array_equal(scores[i], scores[i % 2]) for i in range(len(scores)))
