#!/usr/bin/env python3
"""Coverage-guided fuzz targets (atheris) for every reader of untrusted input.

    python fuzz/targets.py TARGET [libFuzzer arguments...]

TARGET is one of TARGETS below. Each target feeds one input to one loader
and accepts only the exceptions that loader documents (ValueError,
TypeError, FileNotFoundError, d3sr._evaluation.CommandError...); anything else, a
crash of the C core, or a hang is a finding. The seeds are in
fuzz/corpus/TARGET (fuzz/make_seeds.py writes them); fuzz/run.sh runs every
target for a bounded time. Needs `pip install atheris` (the fuzz extra).
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import zipfile

import atheris

with atheris.instrument_imports(include=["d3sr"]):
    import numpy as np

    import d3sr
    from d3sr import _checkpoint as checkpoint, _evaluation as evaluation, _lora as lora, _torch_pickle as torch_pickle, _weights as weights

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "tests", "data")
SCRATCH = tempfile.mkdtemp(prefix="d3sr-fuzz-")


def _write(name: str, data: bytes) -> str:
    path = os.path.join(SCRATCH, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def fuzz_safetensors(data: bytes) -> None:
    """The safetensors reader: header, offsets, every tensor."""
    try:
        with weights.WeightFile(_write("w.safetensors", data)) as f:
            for key in f.keys():
                array, _ = f.get(key)
                assert array.shape == f.shape(key)
    except ValueError:
        pass


def fuzz_model_config(data: bytes) -> None:
    """config.json of a UNet or a VAE (first byte chooses), through the core's create."""
    kind, text = (data[:1], data[1:]) if data else (b"\0", b"")
    try:
        raw = weights.parse_json(text, "config.json")
        if kind[0] % 2:
            d3sr.VAE.from_config(raw)
        else:
            d3sr.UNet.from_config(raw, trunk_only=bool(kind[0] & 2))
    except (ValueError, TypeError):
        pass


_CHECKPOINT = os.path.join(SCRATCH, "ckpt")


def _checkpoint_folder() -> str:
    """A folder holding every file a d3sr.json may name, by the default names."""
    os.makedirs(os.path.join(_CHECKPOINT, "unet"), exist_ok=True)
    os.makedirs(os.path.join(_CHECKPOINT, "vae"), exist_ok=True)
    for name in ("text_embedding.safetensors", "head.safetensors", "conditioning.safetensors",
                 "unet_lora.safetensors", "vae_lora.safetensors"):
        open(os.path.join(_CHECKPOINT, name), "wb").close()
    return _CHECKPOINT


def fuzz_d3sr_json(data: bytes) -> None:
    """d3sr.json of a generator and of a discriminator checkpoint."""
    folder = _checkpoint_folder()
    _write(os.path.join("ckpt", "d3sr.json"), data)
    for read in (checkpoint.read_generator_config, checkpoint.read_discriminator_config):
        try:
            config = read(folder)
            checkpoint.alphas_cumprod(config["schedule"])
        except (ValueError, FileNotFoundError):
            pass


_LORA_KEYS = ["down_blocks.0.resnets.0.conv1", "mid_block.attentions.0.proj_in", "conv_in",
              "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "x"]
_LORA_SUFFIXES = [".lora_A.weight", ".lora_B.weight", ".lora_A.default.weight", ".lora.down.weight",
                  ".lora.up.weight", ".alpha", ".weight", ".processor.to_q_lora.down.weight",
                  ".processor.to_q_lora.up.weight", ".processor.to_q_lora.alpha"]
_LORA_TARGETS = {"down_blocks.0.resnets.0.conv1.weight": (8, 8, 3, 3), "conv_in.weight": (8, 4, 3, 3),
                 "mid_block.attentions.0.proj_in.weight": (8, 8),
                 "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight": (8, 8)}


def fuzz_lora(data: bytes) -> None:
    """LoRA parsing, target checks and merging, from a fuzzed state dict and adapter config."""
    fdp = atheris.FuzzedDataProvider(data)
    tensors = {}
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        prefix = fdp.PickValueInList(["", "unet.", "base_model.model.", "vae.", "base_model.model.unet."])
        key = prefix + fdp.PickValueInList(_LORA_KEYS) + fdp.PickValueInList(_LORA_SUFFIXES)
        shape = tuple(fdp.ConsumeIntInRange(0, 9) for _ in range(fdp.ConsumeIntInRange(0, 4)))
        values = fdp.ConsumeFloatListInRange(int(np.prod(shape)), -1e3, 1e3) if fdp.ConsumeBool() else \
            [fdp.ConsumeRegularFloat() for _ in range(int(np.prod(shape)))]
        tensors[key] = np.asarray(values, np.float32).reshape(shape)
    config_text = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    try:
        config = weights.parse_json(config_text, "adapter_config.json") if config_text else {}
        alpha = fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else None
        adapter = lora.LoRA.from_state_dict(tensors, config=config, alpha=alpha, source="fuzz")
        adapter.check_targets(_LORA_TARGETS, "model")
        for name in adapter.targets():
            merged = adapter.apply(name, np.zeros(_LORA_TARGETS[name], np.float32))
            assert merged.shape == _LORA_TARGETS[name]
    except (ValueError, TypeError):
        pass


_PICKLE_STORAGES = {}


def fuzz_torch_pickle(data: bytes) -> None:
    """torch.save files: the whole zip (input starting with PK), or the
    data.pkl of an archive that holds the seed model's storages."""
    if not _PICKLE_STORAGES:
        with zipfile.ZipFile(os.path.join(DATA, "osediff_tiny", "model.pkl")) as z:
            for name in z.namelist():
                if "/data/" in name:
                    _PICKLE_STORAGES[name.split("/data/", 1)[1]] = z.read(name)
    if data[:2] == b"PK":
        path = _write("model.pkl", data)
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", data)
            for key, raw in _PICKLE_STORAGES.items():
                z.writestr(f"archive/data/{key}", raw)
        path = _write("model.pkl", buf.getvalue())
    try:
        torch_pickle.load(path)
    except ValueError:
        pass


def fuzz_image(data: bytes) -> None:
    """Image files as `d3sr eval` reads them."""
    try:
        image = evaluation.read_rgb(_write("image", data))
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    except (evaluation.CommandError, OSError, ValueError):
        pass


_MODELS = {}


def _models():
    if not _MODELS:
        _MODELS["vae"] = d3sr.VAE.load(os.path.join(DATA, "vae_a"))
        _MODELS["unet"] = d3sr.UNet.load(os.path.join(DATA, "unet_sd1"))
    return _MODELS


def _array(fdp, dtypes=(np.float32, np.float64, np.uint8, np.float16, np.int32)):
    ndim = fdp.ConsumeIntInRange(0, 5)
    shape = tuple(fdp.ConsumeIntInRange(0, 24) for _ in range(ndim))
    dtype = fdp.PickValueInList(list(dtypes))
    count = int(np.prod(shape))
    if count > 4096:  # larger only costs time: the model calls are real forward passes
        shape, count = (count % 7,), count % 7
    raw = fdp.ConsumeBytes(count * np.dtype(dtype).itemsize)
    raw += bytes(count * np.dtype(dtype).itemsize - len(raw))
    array = np.frombuffer(raw, dtype).reshape(shape).copy()
    if fdp.ConsumeBool() and array.ndim:  # a view that is not C-contiguous
        array = array[..., ::-1]
    return array


def fuzz_arrays(data: bytes) -> None:
    """The array entry points with random shapes, dtypes and values."""
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 7)
    a = _array(fdp)
    try:
        if which == 0:
            d3sr.metrics.psnr(a, _array(fdp), crop_border=fdp.ConsumeIntInRange(-2, 40))
        elif which == 1:
            d3sr.metrics.ssim(a, _array(fdp), crop_border=fdp.ConsumeIntInRange(-2, 12),
                              downsample=fdp.ConsumeBool())
        elif which == 2:
            _models()["vae"].encode(a)
        elif which == 3:
            _models()["vae"].decode(a)
        elif which == 4:
            context = _array(fdp, (np.float32,))
            t = fdp.ConsumeFloat() if fdp.ConsumeBool() else _array(fdp)
            _models()["unet"](a, t, context)
        elif which == 5:
            d3sr.metrics.rgb_to_y(a, rounded=fdp.ConsumeBool())
        elif which == 6:  # the raw tiled call: any tile table, any statistics
            statistics = _array(fdp, (np.float64, np.float32)) if fdp.ConsumeBool() else None
            _models()["vae"]._model.vae_run_tiled(a, _array(fdp, (np.int32, np.int64)), fdp.ConsumeBool(),
                                                  fdp.ConsumeBool(), statistics)
        else:  # its plan: sizes far larger than any array cost nothing to plan
            shape = tuple(fdp.ConsumeIntInRange(-2, 1 << 20) for _ in range(3))
            _models()["vae"]._model.vae_plan_tiled(shape, a, fdp.ConsumeBool(), fdp.ConsumeBool())
    except (ValueError, TypeError):
        pass


TARGETS = {
    "safetensors": fuzz_safetensors,
    "model_config": fuzz_model_config,
    "d3sr_json": fuzz_d3sr_json,
    "lora": fuzz_lora,
    "torch_pickle": fuzz_torch_pickle,
    "image": fuzz_image,
    "arrays": fuzz_arrays,
}


def main() -> None:
    # libFuzzer's -fork mode restarts this script with its own arguments only,
    # so the target also travels in the environment.
    if len(sys.argv) > 1 and sys.argv[1] in TARGETS:
        name, args = sys.argv[1], sys.argv[2:]
        os.environ["D3SR_FUZZ_TARGET"] = name
    else:
        name, args = os.environ.get("D3SR_FUZZ_TARGET"), sys.argv[1:]
    if name not in TARGETS:
        sys.exit(f"usage: python fuzz/targets.py {{{','.join(TARGETS)}}} [libFuzzer arguments]")
    atheris.Setup([sys.argv[0]] + args, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
