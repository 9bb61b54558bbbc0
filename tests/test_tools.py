"""Checkpoint tools and the command line: OSEDiff conversion, assembling, upscale, demo."""
import io
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest

import d3sr
from d3sr import _torch_pickle as torch_pickle
from d3sr._evaluation import read_rgb
from d3sr.cli import main, write_image
from d3sr._tools import convert_osediff, make_generator_checkpoint
from conftest import DATA, assert_close, load_reference
from test_unet import call_args

TOL = 1e-4


def test_osediff_pickle_converts_and_matches_peft(tmp_path):
    folder = os.path.join(DATA, "osediff_tiny")
    written = convert_osediff(os.path.join(folder, "model.pkl"), str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == ["unet_lora.safetensors", "vae_lora.safetensors"]
    ref = load_reference(os.path.join(folder, "reference.safetensors"))
    unet = d3sr.UNet.load(os.path.join(DATA, "unet_sd2"), lora=str(tmp_path / "unet_lora.safetensors"))
    args, _ = call_args(ref, "unet")
    assert_close(unet(*args), ref["unet.output"], TOL, "OSEDiff UNet LoRA (three adapters, conv_in)")
    vae = d3sr.VAE.load(os.path.join(DATA, "vae_a"), lora=str(tmp_path / "vae_lora.safetensors"))
    images = load_reference(os.path.join(DATA, "vae_a", "reference.safetensors"))["encode.input"]
    assert_close(vae.encode(images), ref["vae.mean"], TOL, "OSEDiff VAE encoder LoRA")


def test_torch_pickle_reads_tensors_without_torch():
    model = torch_pickle.load(os.path.join(DATA, "osediff_tiny", "model.pkl"))
    assert model["rank_unet"] == 2 and model["unet_lora_encoder_modules"] == ["to_q", "to_k", "conv1"]
    conv_in = model["state_dict_unet"]["conv_in.weight"]
    assert conv_in.dtype == np.float32 and conv_in.shape == (24, 4, 3, 3)


def _torch_like_zip(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", payload)
    return buf.getvalue()


def test_torch_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(_torch_like_zip(pickle.dumps(Evil(), protocol=2)))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        torch_pickle.load(str(path))
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="zip-format"):
        torch_pickle.load(str(legacy))


def _fake_sd(tmp_path):
    sd = tmp_path / "sd21"
    shutil.copytree(os.path.join(DATA, "unet_sd2"), sd / "unet")
    shutil.copytree(os.path.join(DATA, "vae_a"), sd / "vae")
    return str(sd)


def test_make_checkpoint_assembles_a_working_generator(tmp_path):
    ckpt = os.path.join(DATA, "generator_tiny")
    embedding = load_reference(os.path.join(ckpt, "text_embedding.safetensors"))["prompt_embeds"]
    np.save(tmp_path / "embedding.npy", embedding)
    out = tmp_path / "ckpt"
    make_generator_checkpoint(str(out), sd=_fake_sd(tmp_path), text_embedding=str(tmp_path / "embedding.npy"),
                              unet_lora=os.path.join(DATA, "lora_unet"),
                              vae_lora=os.path.join(DATA, "lora_unet", "vae_encoder_lora.safetensors"))
    ref = load_reference(os.path.join(ckpt, "reference.safetensors"))
    assert_close(d3sr.Upscaler.load(str(out)).upscale(ref["image"], scale=2), ref["output"], TOL, "assembled")


def test_make_checkpoint_needs_an_sd_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        make_generator_checkpoint(str(tmp_path / "out"), sd=str(tmp_path), text_embedding="x.npy")


def test_cli_upscale_writes_the_api_result(tmp_path, capsys):
    image = (np.random.default_rng(0).random((10, 12, 3)) * 255).astype(np.uint8)
    write_image(str(tmp_path / "in.png"), image)
    ckpt = os.path.join(DATA, "generator_tiny")
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--checkpoint", ckpt,
                 "--scale", "2"]) == 0
    out = read_rgb(str(tmp_path / "out.png"))
    np.testing.assert_array_equal(out, d3sr.Upscaler.load(ckpt).upscale(image, scale=2))
    assert "in.png 12x10" in capsys.readouterr().err


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png"),
                 "--checkpoint", os.path.join(DATA, "generator_tiny")]) == 2
    assert "input not found" in capsys.readouterr().err


def test_demo_runs_the_tiny_pipeline(tmp_path, capsys):
    assert main(["demo", "--random-weights", "--tiny", "--size", "16", "-o", str(tmp_path / "demo.png")]) == 0
    assert read_rgb(str(tmp_path / "demo.png")).shape == (64, 64, 3)


def test_make_discriminator_with_a_fresh_head(tmp_path):
    from d3sr import Discriminator

    sdxl = tmp_path / "sdxl"
    shutil.copytree(os.path.join(DATA, "unet_sdxl"), sdxl / "unet")
    assert main(["make-discriminator", "--sdxl", str(sdxl), "--head-hidden", "8", "--seed", "5",
                 "--vae", os.path.join(DATA, "vae_a"), "--lora", os.path.join(DATA, "disc_tiny", "unet_lora.safetensors"),
                 "-o", str(tmp_path / "disc")]) == 0
    disc = Discriminator.load(str(tmp_path / "disc"))
    assert disc.head.hidden == 8 and disc.head.in_channels == 32
    np.testing.assert_array_equal(disc.conditioning["time_ids"], [512, 512, 0, 0, 512, 512])
    logits = disc.score_images(np.zeros((16, 16, 3), np.uint8), 100, seed=0)
    assert logits.shape == (1, 1, 2, 2) and np.isfinite(logits).all()
