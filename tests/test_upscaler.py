"""The generator end to end against a PyTorch reference (diffusers modules + D3SR eq. 1)."""
import json
import os
import shutil

import numpy as np
import pytest

import d3sr
from conftest import DATA, assert_close, load_reference

CKPT = os.path.join(DATA, "generator_tiny")
TOL = 1e-4


@pytest.fixture(scope="module")
def upscaler():
    return d3sr.Upscaler.load(CKPT)


@pytest.fixture(scope="module")
def ref():
    return load_reference(os.path.join(CKPT, "reference.safetensors"))


def test_float_batch_matches_pytorch(upscaler, ref):
    out = upscaler.upscale(ref["image"], scale=int(ref["scale"][0]))
    assert out.dtype == np.float32 and out.shape == ref["output"].shape
    assert_close(out, ref["output"], TOL, "generator output")


def test_single_image_and_uint8(upscaler, ref):
    image = ref["image"][1]
    single = upscaler.upscale(image, scale=2)
    assert single.shape == (22, 26, 3)
    assert_close(single, ref["output"][1], TOL, "single image")
    as_uint8 = np.round(image * 255).astype(np.uint8)
    out = upscaler.upscale(as_uint8, scale=2)
    assert out.dtype == np.uint8 and out.shape == (22, 26, 3)
    expected = upscaler.upscale(as_uint8.astype(np.float32) / 255, scale=2)
    assert np.abs(out.astype(int) - np.round(expected * 255)).max() <= 1


def test_denoise_formulas(upscaler):
    rng = np.random.default_rng(0)
    z, eps = rng.standard_normal((1, 4, 3, 3)).astype(np.float32), rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    abar = np.cumprod(1 - betas)[399]
    expected = (z.astype(np.float64) - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
    np.testing.assert_allclose(upscaler.denoise(z, eps), expected, rtol=1e-6)


def test_residual_formula_and_timestep_from_config(tmp_path, ref):
    shutil.copy(os.path.join(CKPT, "text_embedding.safetensors"), tmp_path)
    config = json.load(open(os.path.join(CKPT, "d3sr.json")))
    for field in ("unet", "vae", "unet_lora", "vae_lora"):
        config[field] = os.path.join(CKPT, config[field])
    config.update(latent_formula="residual", timestep=999)
    json.dump(config, open(tmp_path / "d3sr.json", "w"))
    up = d3sr.Upscaler.load(str(tmp_path))
    assert up.timestep == 999
    z, eps = np.ones((1, 4, 2, 2), np.float32), np.full((1, 4, 2, 2), 0.25, np.float32)
    np.testing.assert_array_equal(up.denoise(z, eps), z - eps)


@pytest.mark.parametrize("image,error,match", [
    (np.zeros((7, 9, 3), np.float32), ValueError, "at least 8 x 8"),
    (np.zeros((8, 8, 4), np.float32), ValueError, r"\[H, W, 3\]"),
    (np.zeros((8, 8, 3), np.float64), TypeError, "uint8 or float32"),
    (np.full((8, 8, 3), 1.5, np.float32), ValueError, r"\[0, 1\]"),
    (np.full((8, 8, 3), np.nan, np.float32), ValueError, "NaN"),
    ([[0.5] * 3] * 8, TypeError, "numpy.ndarray"),
])
def test_bad_images(upscaler, image, error, match):
    with pytest.raises(error, match=match):
        upscaler.upscale(image)


@pytest.mark.parametrize("scale", [0, 2.5, "4", 17])
def test_bad_scale(upscaler, scale):
    with pytest.raises(ValueError, match="scale"):
        upscaler.upscale(np.zeros((8, 8, 3), np.float32), scale=scale)


def _checkpoint_copy(tmp_path, **changes):
    config = json.load(open(os.path.join(CKPT, "d3sr.json")))
    for field in ("unet", "vae", "unet_lora", "vae_lora"):
        config[field] = os.path.join(CKPT, config[field])
    config["text_embedding"] = os.path.join(CKPT, config["text_embedding"])
    config.update(changes)
    json.dump(config, open(tmp_path / "d3sr.json", "w"))
    return str(tmp_path)


@pytest.mark.parametrize("changes,error,match", [
    ({"unet": "/nowhere/unet"}, FileNotFoundError, "unet names"),
    ({"text_embedding": "/nowhere/emb.safetensors"}, FileNotFoundError, "text_embedding"),
    ({"timestep": 1000}, ValueError, "timestep"),
    ({"latent_formula": "v"}, ValueError, "latent_formula"),
    ({"type": "discriminator"}, ValueError, "generator"),
    ({"timesteps": 399}, ValueError, "unknown field"),
    ({"schedule": {"beta_schedule": "cosine"}}, ValueError, "cosine"),
])
def test_bad_checkpoints(tmp_path, changes, error, match):
    with pytest.raises(error, match=match):
        d3sr.Upscaler.load(_checkpoint_copy(tmp_path, **changes))


def test_missing_checkpoint_pieces(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder"):
        d3sr.Upscaler.load(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="d3sr.json"):
        d3sr.Upscaler.load(str(tmp_path))


def test_text_embedding_of_the_wrong_width(tmp_path):
    from safetensors.numpy import save_file

    save_file({"prompt_embeds": np.zeros((77, 1024), np.float32)}, str(tmp_path / "emb.safetensors"))
    with pytest.raises(ValueError, match=r"\[L, 24\]"):
        d3sr.Upscaler.load(_checkpoint_copy(tmp_path, text_embedding=str(tmp_path / "emb.safetensors")))
