"""Hostile and careless input (issue 13): every case is a clear exception
naming what is wrong, never a crash, a hang or a silently wrong answer.

Cases that could crash the interpreter run in a child process, so a
regression fails one test instead of ending the suite."""
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import d3sr
from d3sr import _torch_pickle as torch_pickle
from d3sr._tools import convert_osediff

import torch_zip
from test_metrics import ref, weights_file  # noqa: F401 (fixtures: the metric weights the tests build)

HERE = os.path.dirname(os.path.abspath(__file__))


def run_child(code: str, env=None, timeout=300) -> subprocess.CompletedProcess:
    """code in a fresh interpreter that imports the d3sr this process imported
    (an installed one in CI, a checkout's in development) and these tests' helpers."""
    environ = {**os.environ, **(env or {})}
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(d3sr.__file__)))
    paths = [package_parent, HERE] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else [])
    environ["PYTHONPATH"] = os.pathsep.join(paths)
    # cwd: the tests' folder, so a checkout's d3sr/ (without its built core) never shadows an installed one
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=timeout,
                          cwd=HERE)


# ---- 1. the torch pickle reader ----------------------------------------------

def _write(tmp_path, data: bytes, name="model.pkl") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_pickle_tensor_larger_than_its_storage_is_refused(tmp_path):
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    t.size, t.stride = (4096,), (1,)
    path = _write(tmp_path, torch_zip.dumps({"w": t}))
    with pytest.raises(ValueError, match="model.pkl: a tensor of size \\(4096,\\).*storage of 4"):
        torch_pickle.load(path)


@pytest.mark.parametrize("offset, size, stride", [
    (0, (2, 2), (1 << 40, 1)),  # a stride far past the end
    (5, (1,), (1,)),            # an offset past the end
    (0, (3, 3), (3, 1)),        # one row too many
    (-1, (2,), (1,)),           # a negative offset
    (0, (2,), (-1,)),           # a negative stride
    (0, (2.5,), (1,)),          # a fractional size
    (0, (2, 2), (1,)),          # size and stride disagree
    (0, "ab", "ab"),            # not tuples
])
def test_pickle_tensor_outside_its_storage_is_refused(tmp_path, offset, size, stride):
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    t.offset, t.size, t.stride = offset, size, stride
    path = _write(tmp_path, torch_zip.dumps({"w": t}))
    with pytest.raises(ValueError, match="model.pkl"):
        torch_pickle.load(path)


def test_pickle_storage_entry_must_match_its_declared_size(tmp_path):
    # A storage record declaring 4 floats over an entry of 256 MiB of zeros
    # (a few hundred KB compressed) is refused before the entry is read.
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(torch_zip.dumps({"w": t}, storages={"0": b""}))
    with pytest.raises(ValueError, match="storage '0' holds 0 bytes, its record declares 4 elements"):
        torch_pickle.load(str(raw))
    # The size check uses the entry's header, so the 256 MiB entry is never inflated.
    big = tmp_path / "big.pkl"
    payload = torch_zip.dumps({"w": t})
    with zipfile.ZipFile(io.BytesIO(payload)) as src, zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", src.read("archive/data.pkl"))
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(16):
                f.write(chunk)
    assert big.stat().st_size < 20 << 20
    with pytest.raises(ValueError, match="storage '0' holds 268435456 bytes, its record declares 4 elements"):
        torch_pickle.load(str(big))


def test_pickle_missing_storage_and_bad_records_are_value_errors(tmp_path):
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    payload = torch_zip.dumps({"w": t})
    with zipfile.ZipFile(io.BytesIO(payload)) as src:
        pkl = src.read("archive/data.pkl")
    only_pickle = tmp_path / "only.pkl"
    with zipfile.ZipFile(only_pickle, "w") as z:
        z.writestr("archive/data.pkl", pkl)
    with pytest.raises(ValueError, match="only.pkl: storage '0' is missing"):
        torch_pickle.load(str(only_pickle))


@pytest.mark.parametrize("payload", [
    b"",                          # EOFError inside pickle
    b"\x80\x02}q\x00(",          # truncated
    b"garbage that is not a pickle",
    b"\x80\x02cbuiltins\nlen\nq\x00.",  # a global outside the allow-list
    b"\x80\x02ctorch\nFloatStorage\nq\x00)R.",  # calling a storage type
    b"\x80\x02ccollections\nOrderedDict\nq\x00K\x01\x85R.",  # OrderedDict(1): TypeError
    b"\x80\x05\x96" + (1 << 60).to_bytes(8, "little"),  # BYTEARRAY8 claiming 2^60 bytes: was a MemoryError
])
def test_malformed_pickles_are_value_errors(tmp_path, payload):
    path = tmp_path / "bad.pkl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
    with pytest.raises(ValueError, match="bad.pkl"):
        torch_pickle.load(str(path))


def test_corrupt_zip_is_a_value_error(tmp_path):
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    data = bytearray(torch_zip.dumps({"w": t}))
    data[len(data) // 2] ^= 0xFF  # inside the central directory or an entry: CRC or header damage
    for cut in (bytes(data), bytes(data[: len(data) // 3]), b"PK\x03\x04" + bytes(40)):
        path = _write(tmp_path, cut, "cut.pkl")
        with pytest.raises(ValueError, match="cut.pkl"):
            torch_pickle.load(path)


def test_zip_needing_a_newer_extractor_is_a_value_error(tmp_path):
    # Found by fuzz/targets.py: zipfile raises NotImplementedError for a central
    # directory entry whose "version needed to extract" it does not support.
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    data = bytearray(torch_zip.dumps({"w": t}))
    entry = data.index(b"PK\x01\x02")  # first central directory header
    data[entry + 6:entry + 8] = (235).to_bytes(2, "little")  # version needed: 23.5
    path = _write(tmp_path, bytes(data), "newer.pkl")
    with pytest.raises(ValueError, match="newer.pkl"):
        torch_pickle.load(path)


def test_convert_osediff_cli_reports_a_bad_pickle(tmp_path, capsys):
    from d3sr.cli import main

    path = tmp_path / "bad.pkl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00(")
    assert main(["convert-osediff", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "bad.pkl" in capsys.readouterr().err


# ---- 2, 3, 9. config sizes: bounded, 64-bit, refused by name ------------------

def tiny_unet_config(**changes):
    config = {"block_out_channels": [8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4, "cross_attention_dim": 8,
              "attention_head_dim": 2, "down_block_types": ["DownBlock2D"] * 3, "up_block_types": ["UpBlock2D"] * 3}
    config.update(changes)
    return config


def test_unet_with_many_layers_per_block_runs():
    # 3 levels of 21 ResNets keep 66 skips: more than the 65 the stack once held.
    code = f"""
import numpy as np, d3sr
from d3sr.testing import iter_random_weights
from test_hostile_input import tiny_unet_config
u = d3sr.UNet.from_config(tiny_unet_config(layers_per_block=21))
u.load_weights(iter_random_weights(u.weight_shapes(), seed=0))
out = u(np.zeros((1, 4, 8, 8), np.float32), 10, np.zeros((1, 2, 8), np.float32))
assert out.shape == (1, 4, 8, 8) and np.isfinite(out).all()
print("ok")
"""
    result = run_child(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("changes, message", [
    ({"layers_per_block": 33}, r"layers_per_block\[0\] = 33 is outside \[1, 32\]"),
    ({"layers_per_block": 100000}, r"layers_per_block\[0\] = 100000 is outside"),
    ({"block_out_channels": [16, 2 ** 32 + 40, 16]}, r"'block_out_channels'\[1\] = 4294967336 is outside"),
    ({"block_out_channels": [8, 10 ** 9, 8]}, r"block_out_channels\[1\] = 1000000000"),
    ({"cross_attention_dim": 2 ** 31}, r"'cross_attention_dim' = 2147483648 is outside"),
    ({"in_channels": 70000}, r"in_channels = 70000 is outside \[1, 65536\]"),
    ({"downsample_padding": 1000}, r"downsample_padding = 1000 is not supported"),
    ({"downsample_padding": -3}, r"downsample_padding = -3 is not supported"),
    ({"transformer_layers_per_block": 100000}, r"transformer_layers_per_block\[0\] is outside"),
    ({"freq_shift": 4}, r"freq_shift = 4 must be in \[0, 4\)"),
    ({"freq_shift": float("nan")}, r"freq_shift = nan must be a finite number"),
    ({"norm_eps": float("nan")}, r"norm_eps = nan must be a finite number"),
    ({"norm_eps": "abc"}, r"norm_eps = 'abc' must be a finite number"),
    ({"down_block_types": 3}, r"down_block_types = 3 is not supported"),
    ({"addition_embed_type": "text_time", "addition_time_embed_dim": 2 ** 20,
      "projection_class_embeddings_input_dim": 16}, r"addition_time_embed_dim = 1048576 is outside"),
])
def test_unet_config_out_of_range_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        d3sr.UNet.from_config(tiny_unet_config(**changes))


def test_unet_config_error_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_unet_config(layers_per_block=40)))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"config\.json: layers_per_block\[0\] = 40"):
        d3sr.UNet.load(str(tmp_path))


def test_text_time_width_check_is_64_bit():
    # P + T * D with D = 2^16, T = 2^16 wraps a 32-bit int to P: the check
    # passed and embed_time wrote 2^32 floats past its buffer.
    code = """
import numpy as np, d3sr
from d3sr.testing import iter_random_weights
from test_hostile_input import tiny_unet_config
u = d3sr.UNet.from_config(tiny_unet_config(addition_embed_type="text_time", addition_time_embed_dim=65536,
                                           projection_class_embeddings_input_dim=16))
u.load_weights(iter_random_weights(u.weight_shapes(), seed=0))
try:
    u(np.zeros((1, 4, 8, 8), np.float32), 10, np.zeros((1, 2, 8), np.float32),
      text_embeds=np.zeros((1, 16), np.float32), time_ids=np.zeros((1, 65536), np.float32))
except ValueError as e:
    print("refused:", e)
"""
    result = run_child(code)
    assert result.returncode == 0 and "refused:" in result.stdout and "P + T * 65536 = 16" in result.stdout, \
        result.stderr[-2000:]


def test_vae_config_out_of_range_is_refused():
    base = {"block_out_channels": [8, 8], "norm_num_groups": 4, "layers_per_block": 1}
    for changes, message in (({"layers_per_block": 100000}, "layers_per_block = 100000 is outside"),
                             ({"block_out_channels": [8, 2 ** 32 + 8]}, "is outside"),
                             ({"latent_channels": 10 ** 6}, "latent_channels must be in"),
                             ({"scaling_factor": float("nan")}, "scaling_factor = nan")):
        with pytest.raises(ValueError, match=message):
            d3sr.VAE.from_config({**base, **changes})


def test_head_config_out_of_range_is_refused():
    from d3sr import _core

    with pytest.raises(ValueError, match="hidden = 0 is outside"):
        _core.head_create(8, 0, 0)
    with pytest.raises(ValueError, match="hidden = 4294967304 is outside"):
        _core.head_create(8, 2 ** 32 + 8, 0)
    with pytest.raises(ValueError, match="negative_slope must be a finite number"):
        _core.head_create(8, 4, 2, float("nan"))


# ---- 4. thread counts ----------------------------------------------------------

@pytest.mark.parametrize("n", [100000, 2 ** 32 + 1, -1, 5000])
def test_set_num_threads_refuses_out_of_range(n):
    before = d3sr.get_num_threads()
    with pytest.raises(ValueError, match="thread count"):
        d3sr.set_num_threads(n)
    assert d3sr.get_num_threads() == before
    with pytest.raises(TypeError, match="integer"):
        d3sr.set_num_threads(2.5)


def test_set_num_threads_at_the_limit_still_runs():
    code = """
import numpy as np, d3sr
from d3sr import _core
d3sr.set_num_threads(_core.max_threads())
x = np.random.default_rng(0).random((1, 16, 16, 8), dtype=np.float32)
y = _core.op("group_norm", x, np.ones(8, np.float32), np.zeros(8, np.float32), groups=4, eps=1e-5)
assert np.isfinite(y).all()
print("ok", d3sr.get_num_threads())
"""
    result = run_child(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


# ---- 5. OpenMP starting fewer threads than asked --------------------------------

def test_fewer_openmp_threads_than_asked_gives_the_same_results():
    # OMP_THREAD_LIMIT=1 with 8 threads asked: per-thread partial sums of the
    # threads that never started must count as zero, not as whatever the
    # workspace held from the previous op.
    code = """
import os, numpy as np, d3sr
from d3sr import _core
from conftest import DATA, load_reference, rel_l2
d3sr.set_num_threads(8)
rng = np.random.default_rng(0)
worst = 0.0
for i in range(4):
    x = (rng.standard_normal((1, 24, 24, 16)) * 3 + 5).astype(np.float32)
    _core.op("conv2d", rng.standard_normal((1, 40, 40, 16)).astype(np.float32) * 1000,
             rng.standard_normal((16, 16, 3, 3)).astype(np.float32))
    y = _core.op("group_norm", x, np.ones(16, np.float32), np.zeros(16, np.float32), groups=4, eps=1e-5)
    g = x.reshape(1, 24 * 24, 4, 4).astype(np.float64)
    ref = ((g - g.mean((1, 3), keepdims=True)) / np.sqrt(g.var((1, 3), keepdims=True) + 1e-5)).reshape(x.shape)
    worst = max(worst, float(np.abs(y - ref).max()))
    b = (x + rng.standard_normal(x.shape).astype(np.float32)).astype(np.float32)
    m = _core.op("pair_moments", x, b)[0, 0]
    a64, b64 = x[0].reshape(-1, 16).astype(np.float64), b[0].reshape(-1, 16).astype(np.float64)
    ma, mb = a64.mean(0), b64.mean(0)
    want = np.stack([ma, mb, a64.var(0), b64.var(0), ((a64 - ma) * (b64 - mb)).mean(0)])
    worst = max(worst, float(np.abs(m - want).max() / np.abs(want).max()))
    _core.op("conv2d", rng.standard_normal((1, 40, 40, 16)).astype(np.float32) * 1000,
             rng.standard_normal((16, 16, 3, 3)).astype(np.float32))
    _, st = _core.group_norm_pooled(x, np.ones(16, np.float32), np.zeros(16, np.float32), groups=4, eps=1e-5,
                                    core=(2, 20, 3, 17))    # a tile's core: the region statistics
    r = x[0, 2:20, 3:17].reshape(-1, 4, 4).astype(np.float64)
    got = st.reshape(4, 3)
    worst = max(worst, float(np.abs(got[:, 1] - r.mean((0, 2))).max()),
                float(np.abs(got[:, 2] - r.var((0, 2)) * r.shape[0] * r.shape[2]).max() / got[:, 2].max()))
vae = d3sr.VAE.load(os.path.join(DATA, "vae_a"))
ref = load_reference(os.path.join(DATA, "vae_a", "reference.safetensors"))
errors = [rel_l2(vae.encode(ref["encode.input"]), ref["encode.mean"]) for _ in range(3)]
print("worst", worst, "vae", max(errors))
assert worst < 1e-5 and max(errors) < 1e-4
"""
    result = run_child(code, env={"OMP_THREAD_LIMIT": "1"})
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


# ---- 6. return_intermediates from several threads --------------------------------

def test_return_intermediates_from_many_threads_gets_each_calls_own():
    import threading

    vae = d3sr.VAE.load(os.path.join(HERE, "data", "vae_a"))
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-1, 1, (1, 3, 24, 32)).astype(np.float32) for _ in range(8)]
    expected = [vae.encode(x, return_intermediates=True) for x in inputs]
    got = [None] * 8
    start = threading.Barrier(8)

    def work(i):
        start.wait()
        for _ in range(3):
            got[i] = vae.encode(inputs[i], return_intermediates=True)
            vae.encode(inputs[(i + 1) % 8])  # a plain call in between must not clear another's captures

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        mean, blocks = got[i]
        assert np.array_equal(mean, expected[i][0])
        assert sorted(blocks) == sorted(expected[i][1]), f"thread {i} got {sorted(blocks)}"
        for name in blocks:
            assert np.array_equal(blocks[name], expected[i][1][name]), f"thread {i}: {name} is another call's"


# ---- 7. NaN and Inf ----------------------------------------------------------------

def _copy_model(src: str, dst, edit=None, config=None):
    """A copy of a diffusers folder, its weights changed by edit(dict) and its config by config(dict)."""
    from safetensors.numpy import load_file, save_file

    os.makedirs(dst, exist_ok=True)
    raw = json.load(open(os.path.join(src, "config.json")))
    if config:
        config(raw)
    with open(os.path.join(dst, "config.json"), "w") as f:
        f.write(json.dumps(raw, allow_nan=True))
    weight_file = [n for n in os.listdir(src) if n.endswith(".safetensors") and n.startswith("diffusion")][0]
    tensors = load_file(os.path.join(src, weight_file))
    if edit:
        edit(tensors)
    save_file(tensors, os.path.join(dst, weight_file))
    return str(dst)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_fp32_weight_is_refused_naming_file_and_tensor(tmp_path, bad):
    def poison(t):
        t["encoder.conv_in.weight"][0, 0, 0, 0] = bad
    folder = _copy_model(os.path.join(HERE, "data", "vae_a"), tmp_path / "vae", poison)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors: weight 'encoder\.conv_in\.weight' "
                                         r"contains NaN or Inf"):
        d3sr.VAE.load(folder)


def test_non_finite_fp16_weight_is_refused(tmp_path):
    def poison(t):
        key = next(k for k in t if t[k].dtype == np.float16 and t[k].ndim == 4)
        t[key].reshape(-1)[3] = np.float16(np.inf)
    folder = _copy_model(os.path.join(HERE, "data", "vae_b"), tmp_path / "vae", poison)
    with pytest.raises(ValueError, match=r"contains NaN or Inf"):
        d3sr.VAE.load(folder)


def test_non_finite_bf16_weight_is_refused():
    vae = d3sr.VAE.from_config({"block_out_channels": [8, 8], "norm_num_groups": 4})
    bits = np.full((8, 3, 3, 3), 0x3F80, np.uint16)  # 1.0
    bits[0, 0, 0, 0] = 0x7FC0  # NaN
    with pytest.raises(ValueError, match="weight 'encoder.conv_in.weight' contains NaN or Inf"):
        vae._model.set_weight("encoder.conv_in.weight", bits, bfloat16=True)


def _lora_file(tmp_path, alpha=4.0, b_value=0.01, rank=2, config=None):
    from safetensors.numpy import save_file

    folder = tmp_path / "lora"
    folder.mkdir(exist_ok=True)
    a = np.full((rank, 16, 3, 3), 0.01, np.float32)
    b = np.full((16, rank, 1, 1), b_value, np.float32)
    save_file({"encoder.down_blocks.0.resnets.0.conv1.lora_A.weight": a,
               "encoder.down_blocks.0.resnets.0.conv1.lora_B.weight": b}, str(folder / "adapter_model.safetensors"))
    with open(folder / "adapter_config.json", "w") as f:
        f.write(json.dumps(config if config is not None else {"lora_alpha": alpha}, allow_nan=True))
    return str(folder)


def test_lora_nan_alpha_in_adapter_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"adapter_config\.json is not valid JSON: NaN is not a JSON number"):
        d3sr.LoRA.load(_lora_file(tmp_path, alpha=float("nan")))
    with pytest.raises(ValueError, match=r"alpha = nan must be a finite number"):
        d3sr.LoRA.load(_lora_file(tmp_path), alpha=float("nan"))
    with pytest.raises(ValueError, match=r"lora_alpha = 'eight' must be a finite number"):
        d3sr.LoRA.load(_lora_file(tmp_path, alpha="eight"))


def test_lora_nan_alpha_tensor_and_nan_lora_b_are_refused(tmp_path):
    a = np.full((2, 8), 0.01, np.float32)
    b = np.full((16, 2), 0.01, np.float32)
    with pytest.raises(ValueError, match=r"'m\.alpha' = nan must be a finite number"):
        d3sr.LoRA.from_state_dict({"m.lora.down.weight": a, "m.lora.up.weight": b, "m.alpha": np.float32(np.nan)})
    folder = _lora_file(tmp_path, b_value=np.nan)
    with pytest.raises(ValueError, match="merging the LoRA into .* gives NaN or Inf"):
        d3sr.VAE.load(os.path.join(HERE, "data", "vae_a"), lora=folder)


def test_lora_rank_zero_and_one_dimensional_are_value_errors():
    with pytest.raises(ValueError, match=r"lora_A of shape \(0, 8\)"):
        d3sr.LoRA.from_state_dict({"m.lora_A.weight": np.zeros((0, 8), np.float32),
                                   "m.lora_B.weight": np.zeros((16, 0), np.float32)})
    with pytest.raises(ValueError, match=r"lora_A of shape \(8,\)"):
        d3sr.LoRA.from_state_dict({"m.lora_A.weight": np.zeros(8, np.float32),
                                   "m.lora_B.weight": np.zeros((16, 8), np.float32)})


def test_relu_and_max_pool_keep_nan():
    from d3sr import _core

    x = np.array([np.nan, -1.0, 2.0, 0.0], np.float32).reshape(1, 1, 2, 2)
    relu = _core.op("relu", x)
    assert np.isnan(relu[0, 0, 0, 0]) and relu.reshape(-1)[1:].tolist() == [0.0, 2.0, 0.0]
    pool = _core.op("max_pool", np.array([1.0, np.nan, 3.0, 0.0], np.float32).reshape(1, 2, 2, 1), size=(2, 2))
    assert np.isnan(pool).all()


def test_non_finite_output_raises_instead_of_black_pixels():
    # Finite weights large enough to overflow float32 inside the decoder: the
    # call raises, where it once returned NaN (and upscale a black image).
    vae = d3sr.VAE.load(os.path.join(HERE, "data", "vae_a"))
    shapes = vae.weight_shapes()
    vae._model.set_weight("decoder.conv_out.weight", np.full(shapes["decoder.conv_out.weight"], 3e38, np.float32))
    z = np.ones((1, 4, 12, 16), np.float32)
    with pytest.raises(ValueError, match="the VAE decoder's output contains NaN or Inf although the inputs were finite"):
        vae.decode(z)


def test_head_nan_negative_slope_is_refused(tmp_path):
    from d3sr._discriminator import PatchHead

    with pytest.raises(ValueError, match="negative_slope must be a finite number"):
        PatchHead(8, 4, "leaky_relu", float("nan"))


# ---- 9. small inputs, huge costs -------------------------------------------------

def _checkpoint_copy(tmp_path, name: str, **changes) -> str:
    """A copy of tests/data/<name> whose d3sr.json names its files by absolute path, with changes."""
    import shutil

    source = os.path.join(HERE, "data", name)
    folder = tmp_path / name
    shutil.copytree(source, folder)
    config = json.load(open(folder / "d3sr.json"))
    for field, value in config.items():
        if isinstance(value, str) and value.startswith(".."):
            config[field] = os.path.normpath(os.path.join(source, value))
    config.update(changes)
    (folder / "d3sr.json").write_text(json.dumps(config))
    return str(folder)


def _generator_folder(tmp_path, **changes):
    return _checkpoint_copy(tmp_path, "generator_tiny", **changes)


def test_huge_num_train_timesteps_is_refused_before_building_anything(tmp_path):
    import time

    from d3sr._checkpoint import read_generator_config

    folder = _generator_folder(tmp_path, schedule={"num_train_timesteps": 300000000})
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"d3sr\.json: num_train_timesteps must be 1000"):
        read_generator_config(folder)
    assert time.perf_counter() - start < 1.0


def test_dists_chunks_are_bounded_by_count_as_well_as_pixels(weights_file):
    # Pairs of 1 x 1 images: chunks sized by pixels alone took every pair at
    # once (20 000 pairs peaked at 1 GB); past 64 pairs the memory must not grow.
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (200, 1, 1, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (200, 1, 1, 3), dtype=np.uint8)
    first = d3sr.metrics.dists(a[:64], b[:64], weights=weights_file)
    model = d3sr.metrics._network("dists", weights_file)
    held = model.memory()["activations"]
    scores = d3sr.metrics.dists(a, b, weights=weights_file)
    assert model.memory()["activations"] == held
    np.testing.assert_allclose(scores[:64], first, rtol=1e-6)


# ---- 10. exception types ----------------------------------------------------------

@pytest.mark.parametrize("name", ["config.json", "d3sr.json", "header"])
def test_deeply_nested_json_is_a_value_error(tmp_path, name):
    from d3sr._checkpoint import read_generator_config
    from d3sr._weights import WeightFile

    nested = "[" * 100000 + "]" * 100000
    if name == "header":
        data = nested.encode()
        path = tmp_path / "w.safetensors"
        path.write_bytes(len(data).to_bytes(8, "little") + data)
        with pytest.raises(ValueError, match="nested too deeply"):
            WeightFile(str(path))
    elif name == "config.json":
        (tmp_path / "config.json").write_text('{"a": ' + nested + "}")
        (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        with pytest.raises(ValueError, match="nested too deeply"):
            d3sr.UNet.load(str(tmp_path))
    else:
        folder = _generator_folder(tmp_path)
        with open(os.path.join(folder, "d3sr.json"), "w") as f:
            f.write('{"timestep": ' + nested + "}")
        with pytest.raises(ValueError, match="nested too deeply"):
            read_generator_config(folder)


@pytest.mark.parametrize("changes, message", [
    ({"unet": None}, "unet must name a file or folder, not null"),
    ({"unet": 5}, "unet must be a path"),
    ({"scaling_factor": 1e999}, "not valid JSON"),
    ({"latent_formula": ["epsilon"]}, "latent_formula must be one of"),
    ({"schedule": {"beta_end": 1.5}}, "beta_end must be a number in"),
    ({"color_fix": "none"}, "color_fix must be null"),
    ({"color_fix": ["wavelet"]}, "color_fix must be null"),
    ({"latent_tile": "default"}, "latent_tile must be an integer or null"),
    ({"latent_tile": 100}, "latent_tile must be a multiple of 8"),
    ({"decoder_tile": -224}, "decoder_tile must be a multiple of 8"),
    ({"latent_overlap": 96}, "latent_overlap must be smaller than latent_tile"),
    ({"encoder_tile": 1024.0}, "encoder_tile must be an integer or None"),
])
def test_bad_d3sr_json_fields_are_value_errors(tmp_path, changes, message):
    from d3sr._checkpoint import read_generator_config

    folder = _generator_folder(tmp_path)
    config = json.load(open(os.path.join(folder, "d3sr.json")))
    config.update(changes)
    text = json.dumps(config).replace("Infinity", "1e999")
    with open(os.path.join(folder, "d3sr.json"), "w") as f:
        f.write(text)
    with pytest.raises(ValueError, match=message):
        read_generator_config(folder)


def test_discriminator_json_nan_slope_is_refused(tmp_path):
    from d3sr._checkpoint import read_discriminator_config

    folder = _checkpoint_copy(tmp_path, "disc_tiny", head_negative_slope="steep")
    with pytest.raises(ValueError, match="head_negative_slope must be a finite number"):
        read_discriminator_config(folder)


def test_cli_overflowing_numbers_are_errors_not_tracebacks(tmp_path, capsys):
    from d3sr.cli import main
    from PIL import Image

    for d in ("sr", "hr"):
        (tmp_path / d).mkdir()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / d / "a.png")
    assert main(["eval", "--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--metrics", "psnr",
                 "--crop-border", "2147483648"]) == 2
    assert "crop_border" in capsys.readouterr().err


def test_make_discriminator_head_hidden_zero_is_an_error(tmp_path):
    from d3sr._discriminator import init_head
    from d3sr._tools import make_discriminator_checkpoint

    with pytest.raises(ValueError, match="hidden must be an integer in"):
        init_head(1280, 0)
    sdxl = tmp_path / "sdxl"
    (sdxl / "unet").mkdir(parents=True)
    (sdxl / "unet" / "config.json").write_text(json.dumps(tiny_unet_config()))
    with pytest.raises(ValueError, match="head_hidden must be an integer in"):
        make_discriminator_checkpoint(str(tmp_path / "out"), sdxl=str(sdxl), head_hidden=0)
    assert not (tmp_path / "out").exists()


def test_decompression_bomb_is_a_cli_error(tmp_path, monkeypatch):
    from PIL import Image

    from d3sr._evaluation import CommandError, read_rgb

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is then a "bomb"
    with pytest.raises(CommandError, match="a.png: cannot read the image"):
        read_rgb(str(tmp_path / "a.png"))


def test_one_dimensional_head_weight_is_a_value_error(tmp_path):
    from safetensors.numpy import save_file

    from d3sr._discriminator import PatchHead

    path = str(tmp_path / "head.safetensors")
    save_file({"0.weight": np.zeros(8, np.float32)}, path)
    with pytest.raises(ValueError, match=r"head\.safetensors: '0\.weight' has shape \(8,\)"):
        PatchHead.load(path)


# ---- 11, 12. the safetensors reader ------------------------------------------------

def _raw_safetensors(path, header: str, data: bytes = b""):
    raw = header.encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)
    return str(path)


@pytest.mark.parametrize("header, message", [
    ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
     ' "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', "'a' and 'b' overlap"),
    ('{"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}', "malformed"),
    ('{"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}', "malformed"),
    ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}', "malformed"),
    ('{"a": {"dtype": "F32", "shape": [true, 2], "data_offsets": [0, 8]}}', "malformed"),
    ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
     ' "a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}', "the key 'a' appears twice"),
    ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 12]}}', "malformed"),
    ('{"a": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}', "malformed"),
    ('{"__metadata__": {"x": 1}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "__metadata__"),
    ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": NaN}', "NaN is not a JSON number"),
])
def test_safetensors_reader_is_as_strict_as_the_library(tmp_path, header, message):
    from d3sr._weights import WeightFile

    path = _raw_safetensors(tmp_path / "w.safetensors", header, bytes(16))
    with pytest.raises(ValueError, match=message):
        WeightFile(path)


def test_safetensors_reader_still_reads_what_the_library_writes(tmp_path):
    from safetensors.numpy import save_file

    from d3sr._weights import WeightFile

    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros((0, 4), np.float16),
               "c": np.ones(3, np.int64)}
    path = str(tmp_path / "w.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    with WeightFile(path) as f:
        for key, value in tensors.items():
            array, bf16 = f.get(key)
            assert not bf16 and array.dtype == value.dtype and np.array_equal(array, value)


def test_text_file_named_as_weights_gets_no_integer_of_its_bytes(tmp_path):
    from d3sr._weights import WeightFile

    path = tmp_path / "emb.safetensors"
    path.write_text("hello world, this is a text file")
    with pytest.raises(ValueError) as error:
        WeightFile(str(path))
    message = str(error.value)
    assert str(int.from_bytes(b"hello wo", "little")) not in message
    assert "emb.safetensors" in message and "first 8 bytes" in message


def test_pickle_memo_index_does_not_size_memory(tmp_path):
    # LONG_BINPUT 2^32 - 16: the C unpickler sized its memo table by the index
    # (gigabytes from 10 bytes of input); found by fuzz/targets.py.
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("ASan reserves terabytes of address space: an RLIMIT_AS cap cannot work under it")
    path = tmp_path / "memo.pkl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02N" + b"r" + (2 ** 32 - 16).to_bytes(4, "little") + b".")
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from d3sr import _torch_pickle as torch_pickle
print("loaded", torch_pickle.load({str(path)!r}))
"""
    result = run_child(code)
    assert result.returncode == 0 and "loaded None" in result.stdout, result.stderr[-2000:]


# ---- lasting: no growth over 1000 calls, 8 threads deterministic ----------------------

def test_thousand_calls_of_each_entry_point_grow_no_memory(tmp_path):
    # Successful calls and refused ones (the error paths free what they took),
    # in a fresh process so the resident size is this test's alone.
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("ASan's quarantine holds freed memory: the resident size says nothing under it")
    code = """
import gc, os, numpy as np, d3sr
from d3sr import metrics
from d3sr import _torch_pickle as torch_pickle
from d3sr._lora import LoRA
from d3sr._weights import WeightFile
from conftest import DATA

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

from d3sr.testing import iter_random_weights
import torch_zip
from test_hostile_input import tiny_unet_config
d3sr.set_num_threads(2)
# Tiny models and files, so 1000 calls of each stay cheap: the point is the bookkeeping.
vae = d3sr.VAE.from_config({"block_out_channels": [8, 8], "norm_num_groups": 4, "layers_per_block": 1})
vae.load_weights(iter_random_weights(vae.weight_shapes(), seed=0))
unet = d3sr.UNet.from_config(tiny_unet_config())
unet.load_weights(iter_random_weights(unet.weight_shapes(), seed=1))
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
z = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
s = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
ctx = rng.standard_normal((1, 3, 8)).astype(np.float32)
img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
weights = os.path.join(DATA, "vae_a", "diffusion_pytorch_model.safetensors")
from safetensors.numpy import save_file
lora_file = os.path.join(os.environ["SCRATCH"], "lora.safetensors")
save_file({"conv_in.lora_A.weight": np.ones((2, 4, 3, 3), np.float32),
           "conv_in.lora_B.weight": np.ones((8, 2, 1, 1), np.float32)}, lora_file)
pkl = os.path.join(os.environ["SCRATCH"], "small.pkl")
with open(pkl, "wb") as f:
    f.write(torch_zip.dumps({"w": torch_zip.tensor(np.ones((4, 4), np.float32), "0"), "rank": 4}))
calls = {
    "vae.encode": lambda: vae.encode(x),
    "vae.decode": lambda: vae.decode(z, return_intermediates=True),
    "unet": lambda: unet(s, 10, ctx),
    "psnr+ssim": lambda: (metrics.psnr(img, img), metrics.ssim(img, img)),
    "weight file": lambda: WeightFile(weights).close(),
    "lora": lambda: LoRA.load(lora_file),
    "pickle": lambda: torch_pickle.load(pkl),
    "bad array": lambda: vae.encode(np.full((1, 3, 8, 8), np.nan, np.float32)),
    "bad shape": lambda: unet(s[:, :3], 10, ctx),
}
import time
for name, call in calls.items():
    start = time.perf_counter()
    def run(n):
        for _ in range(n):
            try:
                call()
            except ValueError:
                pass
    run(100)
    gc.collect()
    before = rss()
    run(1000)
    gc.collect()
    grown = rss() - before
    print(name, grown, "bytes", round(time.perf_counter() - start, 1), "s")
    assert grown < 4 << 20, f"{name}: {grown} bytes more after 1000 calls"
print("ok")
"""
    result = run_child(code, env={"SCRATCH": str(tmp_path)}, timeout=900)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr[-2000:]


def test_eight_cpu_threads_are_bit_identical_call_to_call():
    vae = d3sr.VAE.load(os.path.join(HERE, "data", "vae_a"))
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 24, 32)).astype(np.float32)
    before = d3sr.get_num_threads()
    d3sr.set_num_threads(8)
    try:
        first = vae.encode(x)
        for _ in range(3):
            np.testing.assert_array_equal(vae.encode(x), first)
        z = first.copy()
        decoded = vae.decode(z)
        np.testing.assert_array_equal(vae.decode(z), decoded)
    finally:
        d3sr.set_num_threads(before)


def test_zip_with_an_offset_before_the_start_is_a_value_error(tmp_path):
    # Found by fuzz/targets.py: zipfile seeks before the file's start (OSError EINVAL).
    import base64

    path = tmp_path / "seek.pkl"
    path.write_bytes(base64.b64decode("UEsDBBQAAAAAAGWKgV0LboNPogAAAKIAAAAQAAAAYXJjaGl2ZS9kYXRhLnBrbIACfXEAWAEAAAB2cQFjdG9yY2guX3V0aWxzCl9yZWJ1aWxkX3RlbnNvcl92MgooKFgHAAAAc3RvcmFnZXECY3RvcmNoCkZsb2F0U3RvcmFnZQpYAQAAADAvZGF0YS8wAAAAAAAAgD8AAABAAABAQAAAgEAAAKBAUEsBAhQDFAAAAAAAZYqBXQtug0+iAAAAogAAABAAAAAAAAAAAAAAAIABAAAAAGFyY2hpdmUvZGF0YS5wa2xQSwECFAMUAAAAAABlioFdF5DnkRgAAAAYAAAADgAAAAAAAAAAAAAAgAHQAAAAYXJjaGl2ZS9kYXRhLzVQSwUGAAAAAAIAAgB6AAAAFAEAAAAA"))
    with pytest.raises(ValueError, match="seek.pkl"):
        torch_pickle.load(str(path))
