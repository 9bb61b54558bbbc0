"""d3sr-tiny, the model built into the package: it loads by name and by default,
beats bicubic on held-out real photos, its discriminator tells photos from their
bicubic upsamplings, and the C core computes what diffusers computes with the
same weights (tests/data/tiny/reference.safetensors, tools/tiny/make_reference.py).

The crops in tests/data/tiny come from photos that training never saw
(tools/tiny/photos.tsv, split held_out; licences in tests/data/tiny/LICENSES.md)."""
import os

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

import d3sr
from d3sr import metrics
from d3sr._checkpoint import checkpoint_path
from d3sr.cli import main
from d3sr._demo import bicubic_upscale, downscale
from d3sr._discriminator import Discriminator

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny")
CROPS = ("evening_glow", "ladybird", "kleiber")


def read(name: str) -> np.ndarray:
    with Image.open(os.path.join(DATA, f"{name}.png")) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def upscaler():
    return d3sr.Upscaler.load()


@pytest.fixture(scope="module")
def crops(upscaler):
    """(original, bicubic x4, d3sr-tiny x4) of each held-out crop, from its PIL-bicubic x4 downscaling."""
    rows = []
    for name in CROPS:
        hr = read(name)
        lr = downscale(hr)
        rows.append((hr, bicubic_upscale(lr), upscaler.upscale(lr)))
    return rows


def gradient_magnitude(image: np.ndarray) -> float:
    """Mean |Sobel gradient| of the luma, 4-pixel border dropped."""
    y = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    p = np.pad(y, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return float(np.hypot(gx, gy)[4:-4, 4:-4].mean())


def test_default_and_tiny_name_the_builtin_model(upscaler):
    lr = downscale(read("kleiber"))[:16, :20]
    assert np.array_equal(upscaler.upscale(lr), d3sr.Upscaler.load("tiny").upscale(lr))
    assert checkpoint_path(None, "generator") == checkpoint_path("tiny", "generator")
    assert os.path.isfile(os.path.join(checkpoint_path(None, "discriminator"), "d3sr.json"))
    with pytest.raises(TypeError, match="path"):
        d3sr.Upscaler.load(3)


def test_beats_bicubic_psnr_on_held_out_photos(crops):
    gains = [metrics.psnr(sr, hr, crop_border=4) - metrics.psnr(bic, hr, crop_border=4) for hr, bic, sr in crops]
    # On the whole held-out photos the shipped model gains +0.54 dB on average (README, d3sr-tiny;
    # tools/tiny/evaluate.py); on these three textured crops +0.39, +0.45, +0.39 (its default
    # colour fix; +0.37 to +0.44 without it). The bound guards that with a margin for other
    # processors' last bits, which move a crop's PSNR by far less than 0.1 dB.
    assert np.mean(gains) >= 0.3, gains


def test_beats_bicubic_ssim_on_held_out_photos(crops):
    ssim_sr = np.mean([metrics.ssim(sr, hr, crop_border=4) for hr, bic, sr in crops])
    ssim_bic = np.mean([metrics.ssim(bic, hr, crop_border=4) for hr, bic, sr in crops])
    assert ssim_sr > ssim_bic


def test_gradients_closer_to_the_original_than_bicubic(crops):
    sr_gap = np.mean([abs(gradient_magnitude(sr) - gradient_magnitude(hr)) for hr, bic, sr in crops])
    bic_gap = np.mean([abs(gradient_magnitude(bic) - gradient_magnitude(hr)) for hr, bic, sr in crops])
    assert sr_gap < bic_gap


def test_discriminator_scores_photos_above_their_bicubic_upsamplings(crops):
    # measured: 0.766 against 0.752 at t = 250 (photos above bicubic on each crop, for noise seeds
    # 0-2 and at t = 100 and 500 too)
    disc = Discriminator.load("tiny")
    originals = np.stack([hr for hr, _, _ in crops])
    bicubics = np.stack([bic for _, bic, _ in crops])
    real = disc.score_images(originals, 250, seed=0)   # the same seed: the same noise for both
    fake = disc.score_images(bicubics, 250, seed=0)
    assert real.mean() > fake.mean()
    assert np.array_equal(real, Discriminator.load().score_images(originals, 250, seed=0))


def test_c_core_matches_diffusers_on_the_same_weights(upscaler):
    ref = load_file(os.path.join(DATA, "reference.safetensors"))
    out = upscaler.upscale(ref["lr"].astype(np.float32) / 255, color_fix=None)   # the reference is the raw pipeline
    assert np.linalg.norm(out - ref["output"]) / np.linalg.norm(ref["output"]) <= 1e-4

    logits = Discriminator.load("tiny").score_latents(ref["z"], ref["t"], noise=ref["noise"])
    assert np.linalg.norm(logits - ref["logits"]) / np.linalg.norm(ref["logits"]) <= 1e-4


def test_upscale_without_checkpoint_uses_the_builtin_model(tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(downscale(read("ladybird"))).save(src)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.png")]) == 0
    err = capsys.readouterr().err
    assert err.count("d3sr-tiny") >= 1 and "--checkpoint" in err
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (128, 128)


def test_demo_writes_the_side_by_side_picture(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bicubic" in printed and "d3sr-tiny" in printed and "dB" in printed
    with Image.open(out) as image:
        assert image.width > 3 * 512 and image.height > 384


def test_demo_options_are_checked(capsys):
    assert main(["demo", "--size", "16"]) == 2
    assert "--random-weights" in capsys.readouterr().err
