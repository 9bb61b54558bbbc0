"""The VAE against diffusers' AutoencoderKL: block by block, end to end, and bad input."""
import os
import shutil
import threading
import time

import numpy as np
import pytest

import d3sr
from d3sr.testing import random_weights, real_config
from conftest import DATA, assert_close, load_reference

TOL = 1e-4


@pytest.fixture(scope="module", params=["vae_a", "vae_b"])
def tiny(request):
    folder = os.path.join(DATA, request.param)
    return d3sr.VAE.load(folder), load_reference(os.path.join(folder, "reference.safetensors")), request.param


def test_encode_matches_diffusers_block_by_block(tiny):
    vae, ref, name = tiny
    mean, blocks = vae.encode(ref["encode.input"], return_intermediates=True)
    expected_blocks = {k[len("block."):]: v for k, v in ref.items() if k.startswith("block.encoder.")}
    assert set(blocks) == set(expected_blocks)
    for block, expected in expected_blocks.items():
        assert_close(blocks[block], expected, TOL, f"{name} {block}")
    assert_close(mean, ref["encode.mean"], TOL, f"{name} posterior mean")


def test_decode_matches_diffusers_block_by_block(tiny):
    vae, ref, name = tiny
    image, blocks = vae.decode(ref["decode.input"], return_intermediates=True)
    expected_blocks = {k[len("block."):]: v for k, v in ref.items() if k.startswith("block.decoder.")}
    assert set(blocks) == set(expected_blocks)
    for block, expected in expected_blocks.items():
        assert_close(blocks[block], expected, TOL, f"{name} {block}")
    assert_close(image, ref["decode.output"], TOL, f"{name} decoded image")


def test_real_sd21_config_matches_diffusers():
    """The SD 2.1 VAE's real architecture, random weights redrawn from the seed."""
    ref = load_reference(os.path.join(DATA, "sd21_vae_reference.safetensors"))
    vae = d3sr.VAE.from_config(real_config("sd21-vae"))
    weights = random_weights(vae.weight_shapes(), seed=21)
    first = sorted(weights)[0]
    np.testing.assert_array_equal(weights[first].reshape(-1)[:8], ref["fingerprint"],
                                  err_msg="NumPy's random stream changed: rerun tools/make_references.py")
    vae.load_weights(weights)
    assert_close(vae.encode(ref["encode.input"]), ref["encode.mean"], TOL, "SD 2.1 VAE encode")
    assert_close(vae.decode(ref["decode.input"]), ref["decode.output"], TOL, "SD 2.1 VAE decode")


def test_inputs_are_not_modified(tiny):
    vae, ref, _ = tiny
    x = ref["encode.input"].copy()
    z = ref["decode.input"].copy()
    vae.encode(x)
    vae.decode(z)
    np.testing.assert_array_equal(x, ref["encode.input"])
    np.testing.assert_array_equal(z, ref["decode.input"])


def test_repeated_calls_do_not_grow_memory(tiny):
    vae, ref, _ = tiny
    vae.decode(ref["decode.input"])
    held = vae.memory()["activations"]
    first = vae.decode(ref["decode.input"])
    for _ in range(5):
        np.testing.assert_array_equal(vae.decode(ref["decode.input"]), first)
    assert vae.memory()["activations"] == held


def test_non_contiguous_input_gives_the_same_result(tiny):
    vae, ref, _ = tiny
    x = ref["encode.input"]
    flipped = np.ascontiguousarray(x[..., ::-1])[..., ::-1]  # a strided view of the same values
    assert not flipped.flags.c_contiguous
    np.testing.assert_array_equal(vae.encode(flipped), vae.encode(x))


def test_encoder_only_load_has_no_decoder():
    vae = d3sr.VAE.load(os.path.join(DATA, "vae_a"), parts=("encoder",))
    assert not any(name.startswith("decoder.") for name in vae.weight_shapes())
    with pytest.raises(ValueError, match="without its decoder"):
        vae.decode(np.zeros((1, 4, 2, 2), np.float32))


def test_legacy_attention_names_load(tmp_path):
    """Old diffusers checkpoints: query/key/value/proj_attn as 1x1 conv weights."""
    from safetensors.numpy import load_file, save_file

    src = os.path.join(DATA, "vae_a")
    weights = load_file(os.path.join(src, "diffusion_pytorch_model.safetensors"))
    legacy = {}
    for name, array in weights.items():
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
            if new in name:
                name = name.replace(new, old)
                array = array[:, :, None, None] if array.ndim == 2 else array
        legacy[name] = array
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    save_file(legacy, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    ref = load_reference(os.path.join(src, "reference.safetensors"))
    assert_close(d3sr.VAE.load(str(tmp_path)).encode(ref["encode.input"]), ref["encode.mean"], TOL, "legacy names")


def test_gil_is_released_while_computing():
    vae = d3sr.VAE.from_config(real_config("sd21-vae"), parts=("decoder",))
    vae.load_weights(random_weights(vae.weight_shapes(), seed=0))
    z = np.zeros((1, 4, 24, 24), np.float32)
    worker = threading.Thread(target=vae.decode, args=(z,))
    ticks = 0
    worker.start()
    while worker.is_alive():
        ticks += 1
        time.sleep(0.002)
    assert ticks >= 20, "the main thread barely ran: the GIL was held during decode"


def test_concurrent_calls_on_one_model_wait_their_turn(tiny):
    vae, ref, _ = tiny
    expected = vae.encode(ref["encode.input"])
    results = [None] * 4

    def run(i):
        results[i] = vae.encode(ref["encode.input"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)


# ---- bad input ------------------------------------------------------------

@pytest.fixture(scope="module")
def vae_a():
    return d3sr.VAE.load(os.path.join(DATA, "vae_a"))


def test_wrong_ndim(vae_a):
    with pytest.raises(ValueError, match=r"x must have shape \[N, C, H, W\]"):
        vae_a.encode(np.zeros((3, 8, 8), np.float32))


def test_wrong_channels(vae_a):
    with pytest.raises(ValueError, match=r"x must have shape \[N, 3, H, W\]"):
        vae_a.encode(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"z must have shape \[N, 4, H, W\]"):
        vae_a.decode(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.uint8, np.int32])
def test_wrong_dtype(vae_a, dtype):
    with pytest.raises(TypeError, match="x must have dtype float32"):
        vae_a.encode(np.zeros((1, 3, 8, 8), dtype))


def test_not_an_array(vae_a):
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        vae_a.encode([[[[0.0]]]])


def test_size_not_a_multiple(vae_a):
    with pytest.raises(ValueError, match="multiples of 2"):
        vae_a.encode(np.zeros((1, 3, 8, 7), np.float32))


def test_empty_input(vae_a):
    with pytest.raises(ValueError, match="empty"):
        vae_a.encode(np.zeros((0, 3, 8, 8), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf(vae_a, bad):
    x = np.zeros((1, 3, 8, 8), np.float32)
    x[0, 1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        vae_a.encode(x)
    z = np.zeros((1, 4, 4, 4), np.float32)
    z[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        vae_a.decode(z)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        d3sr.VAE.load(str(tmp_path / "nowhere"))


def test_missing_weight_file(tmp_path):
    shutil.copy(os.path.join(DATA, "vae_a", "config.json"), tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        d3sr.VAE.load(str(tmp_path))


def _folder_with(tmp_path, mutate):
    from safetensors.numpy import load_file, save_file

    src = os.path.join(DATA, "vae_a")
    weights = load_file(os.path.join(src, "diffusion_pytorch_model.safetensors"))
    mutate(weights)
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    return str(tmp_path)


def test_missing_key(tmp_path):
    folder = _folder_with(tmp_path, lambda w: w.pop("decoder.conv_out.bias"))
    with pytest.raises(ValueError, match="decoder.conv_out.bias"):
        d3sr.VAE.load(folder)


def test_wrong_shape(tmp_path):
    def mutate(w):
        w["encoder.conv_in.weight"] = np.zeros((16, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"encoder.conv_in.weight' has shape \[16, 3, 5, 5\], expected \[16, 3, 3, 3\]"):
        d3sr.VAE.load(_folder_with(tmp_path, mutate))


def test_wrong_weight_dtype(tmp_path):
    def mutate(w):
        w["encoder.conv_in.bias"] = np.zeros(16, np.int32)
    with pytest.raises(TypeError, match="encoder.conv_in.bias"):
        d3sr.VAE.load(_folder_with(tmp_path, mutate))


def test_unexpected_key(tmp_path):
    def mutate(w):
        w["encoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="unexpected weight 'encoder.extra.weight'"):
        d3sr.VAE.load(_folder_with(tmp_path, mutate))


def test_truncated_file(tmp_path):
    folder = _folder_with(tmp_path, lambda w: None)
    path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        d3sr.VAE.load(folder)


def test_corrupt_file(tmp_path):
    folder = _folder_with(tmp_path, lambda w: None)
    open(os.path.join(folder, "diffusion_pytorch_model.safetensors"), "wb").write(b"\x10\x00" + b"garbage" * 99)
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        d3sr.VAE.load(folder)


def test_unsupported_config_field():
    with pytest.raises(ValueError, match="act_fn"):
        d3sr.VAE.from_config({"block_out_channels": [8], "norm_num_groups": 4, "act_fn": "gelu"})
    with pytest.raises(ValueError, match="norm_num_groups"):
        d3sr.VAE.from_config({"block_out_channels": [8, 12], "norm_num_groups": 8})


def test_bad_device_and_dtype():
    cfg = {"block_out_channels": [8], "norm_num_groups": 4}
    with pytest.raises(ValueError, match="device"):
        d3sr.VAE.from_config(cfg, device="tpu")
    with pytest.raises(ValueError, match="fp32"):
        d3sr.VAE.from_config(cfg, dtype="bf16")
    if not d3sr.cuda_available():
        with pytest.raises(RuntimeError, match="cuda"):
            d3sr.VAE.from_config(cfg, device="cuda", dtype="bf16")


def test_forward_before_weights_names_the_missing_one():
    vae = d3sr.VAE.from_config({"block_out_channels": [8], "norm_num_groups": 4})
    with pytest.raises(ValueError, match="missing, the first is 'encoder.conv_in.weight'"):
        vae.decode(np.zeros((1, 4, 2, 2), np.float32))


def test_bfloat16_weights_load(tmp_path):
    """bfloat16 files (NumPy has no such dtype): the same result as their float32 values."""
    import json
    import struct

    from safetensors.numpy import load_file, save_file

    src = os.path.join(DATA, "vae_a")
    weights = load_file(os.path.join(src, "diffusion_pytorch_model.safetensors"))
    bits = {k: (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) for k, v in weights.items()}
    header, offset, blobs = {}, 0, []
    for k, b in bits.items():
        header[k] = {"dtype": "BF16", "shape": list(b.shape), "data_offsets": [offset, offset + b.nbytes]}
        offset += b.nbytes
        blobs.append(b.tobytes())
    raw = json.dumps(header).encode()
    bf16_dir, f32_dir = tmp_path / "bf16", tmp_path / "f32"
    for d in (bf16_dir, f32_dir):
        d.mkdir()
        shutil.copy(os.path.join(src, "config.json"), d / "config.json")
    with open(bf16_dir / "diffusion_pytorch_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    rounded = {k: (b.astype(np.uint32) << 16).view(np.float32) for k, b in bits.items()}
    save_file(rounded, str(f32_dir / "diffusion_pytorch_model.safetensors"))
    x = load_reference(os.path.join(src, "reference.safetensors"))["encode.input"]
    np.testing.assert_array_equal(d3sr.VAE.load(str(bf16_dir)).encode(x), d3sr.VAE.load(str(f32_dir)).encode(x))


def test_profile_times_each_op(tiny):
    vae, ref, _ = tiny
    assert vae.profile() == {}  # nothing accumulated before profiling was on
    vae.decode(ref["decode.input"])
    stats = vae.profile(False)
    assert stats["conv2d"][0] > 0 and stats["group_norm"][0] > 0 and stats["attention"][0] == 1
    assert all(seconds >= 0 for _, seconds in stats.values())
    vae.decode(ref["decode.input"])
    assert vae.profile(False) == {}  # off: nothing more accumulates
