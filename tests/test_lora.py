"""LoRA merging against PEFT: merged weights, forward outputs, key layouts, errors."""
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import d3sr
from conftest import DATA, assert_close, load_reference
from test_unet import call_args

LORA = os.path.join(DATA, "lora_unet")
TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return load_reference(os.path.join(LORA, "reference.safetensors"))


def unet_output(lora, ref):
    unet = d3sr.UNet.load(os.path.join(DATA, "unet_sd2"), lora=lora)
    args, _ = call_args(ref, "unet")
    return unet(*args)


def test_merged_weights_equal_peft_merge(ref):
    unet_lora = d3sr.LoRA.load(LORA)
    vae_lora = d3sr.LoRA.load(os.path.join(LORA, "vae_encoder_lora.safetensors"))
    base = {**load_file(os.path.join(DATA, "unet_sd2", "diffusion_pytorch_model.safetensors")),
            **load_file(os.path.join(DATA, "vae_a", "diffusion_pytorch_model.safetensors"))}
    checked = 0
    for key, merged in ref.items():
        if key.startswith("merged."):
            name = key[len("merged."):]
            lora = unet_lora if not name.startswith("encoder.") else vae_lora
            assert_close(lora.apply(name, base[name]), merged, 1e-6, name)
            checked += 1
    assert checked == 5


def test_unet_with_lora_matches_peft(ref):
    assert_close(unet_output(LORA, ref), ref["unet.output"], TOL, "UNet + LoRA")


def test_alpha_comes_from_adapter_config(ref):
    """Without adapter_config.json, PEFT's default alpha 8 applies: a different result."""
    lora = d3sr.LoRA.load(os.path.join(LORA, "adapter_model.safetensors"))
    a, b, scale = lora.updates["down_blocks.0.resnets.0.conv1.weight"]
    assert scale == pytest.approx(8 / 4)
    assert d3sr.LoRA.load(LORA).updates["down_blocks.0.resnets.0.conv1.weight"][2] == pytest.approx(16 / 4)


def test_diffusers_key_layouts_give_the_same_result(ref, tmp_path):
    """lora.down/lora.up with .alpha entries, and attention processors' to_q_lora keys."""
    peft = load_file(os.path.join(LORA, "adapter_model.safetensors"))
    old = {}
    for key, value in peft.items():
        module = key.rsplit(".lora_", 1)[0]
        is_a = ".lora_A." in key
        proc = module.rsplit(".", 1)
        if proc[-1] in ("to_q", "to_k", "to_v") and ".attn" in module:
            old[f"unet.{proc[0]}.processor.{proc[1]}_lora.{'down' if is_a else 'up'}.weight"] = value
            old[f"unet.{proc[0]}.processor.{proc[1]}_lora.alpha"] = np.array(16.0, np.float32)
        else:
            old[f"unet.{module}.lora.{'down' if is_a else 'up'}.weight"] = value
            old[f"unet.{module}.alpha"] = np.array(16.0, np.float32)
    save_file(old, str(tmp_path / "pytorch_lora_weights.safetensors"))
    lora = d3sr.LoRA.load(str(tmp_path))
    assert sorted(lora.updates) == sorted(d3sr.LoRA.load(LORA).updates)
    assert_close(unet_output(lora, ref), ref["unet.output"], TOL, "diffusers key layouts")


def test_vae_encoder_lora_default_alpha(ref):
    vae = d3sr.VAE.load(os.path.join(DATA, "vae_a"), lora=os.path.join(LORA, "vae_encoder_lora.safetensors"))
    images = load_reference(os.path.join(DATA, "vae_a", "reference.safetensors"))["encode.input"]
    assert_close(vae.encode(images), ref["vae.mean"], TOL, "VAE encoder + LoRA")


def test_lora_key_matching_no_weight_is_named(tmp_path):
    tensors = load_file(os.path.join(LORA, "adapter_model.safetensors"))
    tensors["down_blocks.9.attentions.0.proj_in.lora_A.weight"] = np.zeros((4, 24), np.float32)
    tensors["down_blocks.9.attentions.0.proj_in.lora_B.weight"] = np.zeros((24, 4), np.float32)
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="'down_blocks.9.attentions.0.proj_in.weight' matches no weight of the UNet"):
        d3sr.UNet.load(os.path.join(DATA, "unet_sd2"), lora=str(tmp_path / "bad.safetensors"))


def test_lora_of_the_wrong_shape_is_named(tmp_path):
    tensors = load_file(os.path.join(LORA, "adapter_model.safetensors"))
    key = "down_blocks.0.attentions.0.proj_in.lora_A.weight"
    tensors[key] = np.zeros((4, 7), np.float32)
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="proj_in.weight"):
        d3sr.UNet.load(os.path.join(DATA, "unet_sd2"), lora=str(tmp_path / "bad.safetensors"))


def test_half_a_pair_is_an_error(tmp_path):
    tensors = load_file(os.path.join(LORA, "adapter_model.safetensors"))
    del tensors["down_blocks.0.attentions.0.proj_in.lora_B.weight"]
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="only its lora_A"):
        d3sr.LoRA.load(str(tmp_path / "bad.safetensors"))


def test_peft_adapter_names_and_prefixes_are_understood(ref, tmp_path):
    tensors = load_file(os.path.join(LORA, "adapter_model.safetensors"))
    renamed = {"base_model.model." + k.replace(".lora_A.", ".lora_A.default_encoder.").replace(
        ".lora_B.", ".lora_B.default_encoder."): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "adapter_model.safetensors"))
    shutil.copy(os.path.join(LORA, "adapter_config.json"), tmp_path / "adapter_config.json")
    assert_close(unet_output(str(tmp_path), ref), ref["unet.output"], TOL, "renamed PEFT keys")


def test_base_layer_names_map_back(tmp_path):
    """A base model saved from a PEFT-wrapped UNet names its weights '<module>.base_layer.weight'."""
    src = os.path.join(DATA, "unet_sd2")
    weights = load_file(os.path.join(src, "diffusion_pytorch_model.safetensors"))
    wrapped = {k.replace(".to_q.", ".to_q.base_layer.").replace(".conv1.", ".conv1.base_layer."): v
               for k, v in weights.items()}
    save_file(wrapped, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    ref = load_reference(os.path.join(src, "reference.safetensors"))
    args, _ = call_args(ref, "case0")
    assert_close(d3sr.UNet.load(str(tmp_path))(*args), ref["case0.output"], TOL, "base_layer names")


def test_full_weights_in_a_lora_file_replace_the_base(tmp_path):
    """OSEDiff retrains conv_in fully and ships it beside the LoRA."""
    base = load_file(os.path.join(DATA, "unet_sd2", "diffusion_pytorch_model.safetensors"))
    new_conv_in = {"conv_in.weight": base["conv_in.weight"] * 2, "conv_in.bias": base["conv_in.bias"] - 1}
    save_file(new_conv_in, str(tmp_path / "conv_in.safetensors"))
    lora = d3sr.LoRA.load(str(tmp_path / "conv_in.safetensors"))
    assert sorted(lora.replacements) == ["conv_in.bias", "conv_in.weight"]
    np.testing.assert_array_equal(lora.apply("conv_in.weight", base["conv_in.weight"]), base["conv_in.weight"] * 2)
    unet = d3sr.UNet.load(os.path.join(DATA, "unet_sd2"), lora=lora)
    ref = load_reference(os.path.join(DATA, "unet_sd2", "reference.safetensors"))
    args, _ = call_args(ref, "case0")
    blocks = unet(*args, return_intermediates=True)[1]
    plain = d3sr.UNet.load(os.path.join(DATA, "unet_sd2"))(*args, return_intermediates=True)[1]
    assert not np.allclose(blocks["conv_in"], plain["conv_in"])


def test_missing_lora_file():
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        d3sr.LoRA.load("/nonexistent/nowhere.safetensors")
