"""The discriminator against a PyTorch reference: diffusers' SDXL-like UNet run to
its mid block, DDPMScheduler.add_noise, and an nn.Sequential head."""
import json
import os
import shutil

import numpy as np
import pytest

from d3sr import losses
from d3sr._discriminator import Discriminator, PatchHead, init_head
from conftest import DATA, assert_close, load_reference

CKPT = os.path.join(DATA, "disc_tiny")
TOL = 1e-4


@pytest.fixture(scope="module")
def disc():
    return Discriminator.load(CKPT)


@pytest.fixture(scope="module")
def ref():
    return load_reference(os.path.join(CKPT, "reference.safetensors"))


def test_noising_equals_diffusers_add_noise(disc, ref):
    assert_close(disc.noise(ref["z"], ref["t"], noise=ref["noise"]), ref["z_t"], 1e-6, "F(z, t)")


def test_latent_scores_match_pytorch(disc, ref):
    logits, features = disc.score_latents(ref["z"], ref["t"], noise=ref["noise"], return_features=True)
    assert logits.shape == (3, 1, 2, 3)
    assert_close(features, ref["features"], TOL, "mid-block features")
    assert_close(logits, ref["logits"], TOL, "logits")


def test_real_and_fake_in_one_call(disc, ref):
    real, fake = disc.score_real_fake(ref["z"][:1], ref["z"][1:], ref["t"], noise=ref["noise"])
    assert_close(np.concatenate([real, fake]), ref["logits"], TOL, "real and fake")


def test_image_scores_match_pytorch(disc, ref):
    logits = disc.score_images(ref["images"], 500, noise=ref["image_noise"])
    assert_close(logits, ref["image_logits"], TOL, "image logits")
    as_uint8 = np.round(ref["images"] * 255).astype(np.uint8)
    assert disc.score_images(as_uint8[0], 500, noise=ref["image_noise"][:1]).shape == (1, 1, 2, 3)


def test_seeded_noise_is_reproducible(disc, ref):
    a = disc.score_latents(ref["z"], 300, seed=7)
    np.testing.assert_array_equal(a, disc.score_latents(ref["z"], 300, seed=7))
    assert not np.array_equal(a, disc.score_latents(ref["z"], 300, seed=8))


def test_trunk_ignores_up_blocks():
    """The full UNet's up-block weights (and the LoRA's updates of them) are never loaded."""
    shapes = Discriminator.load(CKPT).trunk.weight_shapes()
    assert not any(k.startswith("up_blocks.") for k in shapes)


def test_losses():
    real, fake = np.array([[2.0, -1.0]]), np.array([[0.5, -3.0]])
    sp = lambda x: np.log1p(np.exp(x))
    assert losses.generator_loss(fake) == pytest.approx(np.mean(sp(-fake)))
    assert losses.discriminator_loss(real, fake) == pytest.approx(np.mean(sp(-real)) + np.mean(sp(fake)))
    assert losses.generator_loss(np.array([1e4])) == pytest.approx(0.0)
    assert losses.discriminator_loss(np.array([-1e4]), np.array([1e4])) == pytest.approx(2e4)
    np.testing.assert_allclose(losses.probabilities(np.array([0.0, 40.0, -40.0])), [0.5, 1.0, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="fake_logits"):
        losses.generator_loss(np.array([np.nan]))


def test_fresh_head_matches_pytorch_init_bounds():
    head = init_head(1280, 64, seed=3)
    assert head["0.weight"].shape == (64, 1280, 1, 1) and head["2.bias"].shape == (1,)
    assert np.abs(head["0.weight"]).max() <= 1 / np.sqrt(1280)
    assert np.abs(head["2.weight"]).max() <= 1 / np.sqrt(64)
    np.testing.assert_array_equal(init_head(1280, 64, seed=3)["0.bias"], head["0.bias"])


# ---- bad input ------------------------------------------------------------

def test_latent_size_not_a_multiple_of_4(disc, ref):
    with pytest.raises(ValueError, match="multiples of 4"):
        disc.score_latents(np.zeros((1, 4, 8, 10), np.float32), 10, seed=0)


@pytest.mark.parametrize("t,error", [(-1, ValueError), (1000, ValueError), (0.5, TypeError), ([1, 2], ValueError)])
def test_bad_timesteps(disc, ref, t, error):
    with pytest.raises(error, match="t must"):
        disc.score_latents(ref["z"][:1], t, seed=0)


def test_bad_noise(disc, ref):
    with pytest.raises(ValueError, match="noise must have z's shape"):
        disc.score_latents(ref["z"], 10, noise=ref["noise"][:1])
    with pytest.raises(TypeError, match="noise must have dtype float32"):
        disc.score_latents(ref["z"], 10, noise=ref["noise"].astype(np.float64))
    with pytest.raises(ValueError, match="noise or seed"):
        disc.score_latents(ref["z"], 10, noise=ref["noise"], seed=1)


def test_wrong_latent_channels(disc):
    with pytest.raises(ValueError, match=r"sample must have shape \[N, 4"):
        disc.score_latents(np.zeros((1, 3, 8, 8), np.float32), 10, seed=0)


def test_head_width_must_match_the_trunk(tmp_path, disc):
    from safetensors.numpy import save_file

    for name in ("conditioning.safetensors", "unet_lora.safetensors"):
        shutil.copy(os.path.join(CKPT, name), tmp_path / name)
    config = json.load(open(os.path.join(CKPT, "d3sr.json")))
    config.update(unet=os.path.join(CKPT, config["unet"]), vae=os.path.join(CKPT, config["vae"]))
    json.dump(config, open(tmp_path / "d3sr.json", "w"))
    save_file(init_head(48, 8), str(tmp_path / "head.safetensors"))
    with pytest.raises(ValueError, match="the head takes 48 channels, the trunk's mid block gives 32"):
        Discriminator.load(str(tmp_path))


def test_images_need_a_vae_and_the_right_size(disc, ref):
    with pytest.raises(ValueError, match="multiples of 8"):
        disc.score_images(np.zeros((12, 16, 3), np.uint8), 10, seed=0)
    no_vae = Discriminator(disc.trunk, disc.head, disc.conditioning, disc.config)
    with pytest.raises(ValueError, match="no VAE"):
        no_vae.score_images(ref["images"], 10, seed=0)


def test_patch_head_alone():
    head = PatchHead(6, 4, "relu")
    weights = init_head(6, 4, seed=1)
    head.load_weights(weights)
    x = np.random.default_rng(0).standard_normal((2, 6, 3, 5)).astype(np.float32)
    h = np.einsum("nchw,oc->nohw", x, weights["0.weight"][:, :, 0, 0]) + weights["0.bias"][:, None, None]
    y = np.einsum("nchw,oc->nohw", np.maximum(h, 0), weights["2.weight"][:, :, 0, 0]) + weights["2.bias"][:, None, None]
    assert_close(head(x), y, 1e-6, "patch head")
    with pytest.raises(ValueError, match="takes 6 channels"):
        head(np.zeros((1, 5, 2, 2), np.float32))
    with pytest.raises(ValueError, match="activation"):
        PatchHead(6, 4, "tanh")
