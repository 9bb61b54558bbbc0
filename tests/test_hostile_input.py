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
from d3sr import torch_pickle
from d3sr.tools import convert_osediff

import torch_zip

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_child(code: str, env=None, timeout=120) -> subprocess.CompletedProcess:
    """code in a fresh interpreter with this checkout importable."""
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join([ROOT, HERE] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=timeout)


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
y = _core.group_norm(x, 4, np.ones(8, np.float32), np.zeros(8, np.float32), 1e-5)
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
    _core.conv2d(rng.standard_normal((1, 40, 40, 16)).astype(np.float32) * 1000,
                 rng.standard_normal((16, 16, 3, 3)).astype(np.float32))
    y = _core.group_norm(x, 4, np.ones(16, np.float32), np.zeros(16, np.float32), 1e-5)
    g = x.reshape(1, 24 * 24, 4, 4).astype(np.float64)
    ref = ((g - g.mean((1, 3), keepdims=True)) / np.sqrt(g.var((1, 3), keepdims=True) + 1e-5)).reshape(x.shape)
    worst = max(worst, float(np.abs(y - ref).max()))
    b = (x + rng.standard_normal(x.shape).astype(np.float32)).astype(np.float32)
    m = _core.simple_op(_core.OP_PAIR_MOMENTS, x, b)[0, 0]
    a64, b64 = x[0].reshape(-1, 16).astype(np.float64), b[0].reshape(-1, 16).astype(np.float64)
    ma, mb = a64.mean(0), b64.mean(0)
    want = np.stack([ma, mb, a64.var(0), b64.var(0), ((a64 - ma) * (b64 - mb)).mean(0)])
    worst = max(worst, float(np.abs(m - want).max() / np.abs(want).max()))
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
