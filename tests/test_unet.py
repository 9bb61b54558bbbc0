"""The UNet against diffusers' UNet2DConditionModel: block by block, end to end, bad input."""
import os

import numpy as np
import pytest

import d3sr
from conftest import DATA, assert_close, load_reference

TOL = 1e-4
TINY = ["unet_sd2", "unet_sdxl", "unet_sd1"]


def cases(ref):
    return sorted({k.split(".")[0] for k in ref})


def call_args(ref, case):
    inputs = {k[len(f"{case}.input."):]: v for k, v in ref.items() if k.startswith(f"{case}.input.")}
    extra = {k: inputs[k] for k in ("text_embeds", "time_ids") if k in inputs}
    return (inputs["sample"], inputs["timesteps"], inputs["encoder_hidden_states"]), extra


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    folder = os.path.join(DATA, request.param)
    return d3sr.UNet.load(folder), load_reference(os.path.join(folder, "reference.safetensors")), request.param


def test_matches_diffusers_block_by_block(tiny):
    unet, ref, name = tiny
    for case in cases(ref):
        args, extra = call_args(ref, case)
        out, blocks = unet(*args, **extra, return_intermediates=True)
        expected = {k[len(f"{case}.block."):]: v for k, v in ref.items() if k.startswith(f"{case}.block.")}
        assert set(blocks) == set(expected)
        for block, value in expected.items():
            assert_close(blocks[block], value, TOL, f"{name} {case} {block}")
        assert_close(out, ref[f"{case}.output"], TOL, f"{name} {case} output")


def test_scalar_timestep_broadcasts():
    folder = os.path.join(DATA, "unet_sd2")
    unet, ref = d3sr.UNet.load(folder), load_reference(os.path.join(folder, "reference.safetensors"))
    (sample, timesteps, context), _ = call_args(ref, "case0")
    assert_close(unet(sample, int(timesteps[0]), context), ref["case0.output"], TOL, "int timestep")


def test_trunk_matches_the_full_models_mid_block():
    folder = os.path.join(DATA, "unet_sdxl")
    ref = load_reference(os.path.join(folder, "reference.safetensors"))
    trunk = d3sr.UNet.load(folder, trunk_only=True)
    assert not any(k.startswith(("up_blocks.", "conv_out", "conv_norm_out")) for k in trunk.weight_shapes())
    args, extra = call_args(ref, "case0")
    assert_close(trunk(*args, **extra), ref["case0.block.mid_block"], TOL, "trunk")


def test_inputs_are_not_modified(tiny):
    unet, ref, _ = tiny
    args, extra = call_args(ref, "case0")
    copies = [a.copy() for a in args] + [v.copy() for v in extra.values()]
    unet(*args, **extra)
    for before, after in zip(copies, list(args) + list(extra.values())):
        np.testing.assert_array_equal(before, after)


# ---- bad input ------------------------------------------------------------

@pytest.fixture(scope="module")
def sd2():
    folder = os.path.join(DATA, "unet_sd2")
    return d3sr.UNet.load(folder), call_args(load_reference(os.path.join(folder, "reference.safetensors")), "case0")[0]


def test_wrong_context_shape(sd2):
    unet, (sample, t, context) = sd2
    with pytest.raises(ValueError, match=r"encoder_hidden_states must have shape \[N, L, 24\]"):
        unet(sample, t, np.zeros((1, 7, 23), np.float32))
    with pytest.raises(ValueError, match="encoder_hidden_states must have shape"):
        unet(sample, t, np.zeros((7, 24), np.float32))
    with pytest.raises(ValueError, match="one row per sample"):
        unet(sample, t, np.zeros((2, 7, 24), np.float32))


@pytest.mark.parametrize("bad", [-1, 1000, 1e9, float("nan"), [3, 4]])
def test_timestep_out_of_range(sd2, bad):
    unet, (sample, _, context) = sd2
    with pytest.raises(ValueError, match="timestep"):
        unet(sample, bad, context)


def test_wrong_dtypes(sd2):
    unet, (sample, t, context) = sd2
    with pytest.raises(TypeError, match="sample must have dtype float32"):
        unet(sample.astype(np.float64), t, context)
    with pytest.raises(TypeError, match="encoder_hidden_states must have dtype float32"):
        unet(sample, t, context.astype(np.float16))
    with pytest.raises(TypeError, match="timestep"):
        unet(sample, "399", context)


def test_wrong_sample_channels(sd2):
    unet, (sample, t, context) = sd2
    with pytest.raises(ValueError, match=r"sample must have shape \[N, 4, h, w\]"):
        unet(np.zeros((1, 3, 8, 8), np.float32), t, context)


def test_nan_in_inputs(sd2):
    unet, (sample, t, context) = sd2
    bad = sample.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="sample contains NaN or Inf"):
        unet(bad, t, context)
    bad = context.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="encoder_hidden_states contains NaN or Inf"):
        unet(sample, t, bad)


def test_text_time_inputs_are_required_and_checked():
    folder = os.path.join(DATA, "unet_sdxl")
    unet = d3sr.UNet.load(folder)
    args, extra = call_args(load_reference(os.path.join(folder, "reference.safetensors")), "case0")
    with pytest.raises(ValueError, match="text_time"):
        unet(*args)
    with pytest.raises(ValueError, match="P \\+ T \\* 8 = 60"):
        unet(*args, text_embeds=extra["text_embeds"][:, :5], time_ids=extra["time_ids"])
    sd2 = d3sr.UNet.load(os.path.join(DATA, "unet_sd2"))
    sample, t, context = call_args(load_reference(os.path.join(DATA, "unet_sd2", "reference.safetensors")), "case0")[0]
    with pytest.raises(ValueError, match="only for UNets"):
        sd2(sample, t, context, text_embeds=np.zeros((1, 4), np.float32), time_ids=np.zeros((1, 6), np.float32))


@pytest.mark.parametrize("field,value", [("act_fn", "gelu"), ("resnet_time_scale_shift", "scale_shift"),
                                         ("class_embed_type", "timestep"), ("cross_attention_dim", [8, 8]),
                                         ("down_block_types", ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]),
                                         ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn")])
def test_unsupported_config_names_the_field(field, value):
    config = {"block_out_channels": [8, 16], "norm_num_groups": 4, "cross_attention_dim": 8, "attention_head_dim": 2,
              "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], field: value}
    with pytest.raises(ValueError, match=field):
        d3sr.UNet.from_config(config)


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="attention_head_dim"):
        d3sr.UNet.from_config({"block_out_channels": [8, 16], "norm_num_groups": 4, "cross_attention_dim": 8,
                               "attention_head_dim": 3})
