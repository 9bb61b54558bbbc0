"""Writes the seed corpora of fuzz/targets.py into fuzz/corpus/TARGET/:
small valid inputs of every kind each loader reads (and a few broken ones),
so the fuzzer starts from the formats' real structure.

    python fuzz/make_seeds.py
"""
from __future__ import annotations

import io
import json
import os
import sys
import zipfile

import numpy as np
from PIL import Image
from safetensors.numpy import save

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "tests", "data")
sys.path.insert(0, os.path.join(ROOT, "tests"))

import torch_zip  # noqa: E402 (the tests' writer of torch.save-layout files)


def write(target: str, name: str, data: bytes) -> None:
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def main() -> None:
    rng = np.random.default_rng(0)
    # safetensors: every dtype, empty tensors, metadata, and a cut file.
    write("safetensors", "f32", save({"a": rng.standard_normal((2, 3)).astype(np.float32)}))
    write("safetensors", "mixed", save({"h": np.ones((4,), np.float16), "i": np.arange(3, dtype=np.int64),
                                        "u": np.zeros((2, 2), np.uint8), "e": np.zeros((0, 3), np.float32)},
                                       metadata={"format": "pt"}))
    write("safetensors", "cut", save({"a": np.ones((8,), np.float32)})[:-5])
    # config.json: the first byte picks UNet (even) or VAE (odd).
    for name in ("unet_sd1", "unet_sd2", "unet_sdxl"):
        with open(os.path.join(DATA, name, "config.json"), "rb") as f:
            write("model_config", name, b"\x00" + f.read())
    for name in ("vae_a", "vae_b"):
        with open(os.path.join(DATA, name, "config.json"), "rb") as f:
            write("model_config", name, b"\x01" + f.read())
    # d3sr.json: the tests' checkpoints with their paths as the defaults.
    write("d3sr_json", "generator", json.dumps({"type": "generator", "timestep": 399, "latent_formula": "epsilon",
                                                "schedule": {"num_train_timesteps": 1000}}).encode())
    write("d3sr_json", "discriminator", json.dumps({"type": "discriminator", "head_activation": "leaky_relu",
                                                    "head_negative_slope": 0.2, "vae": "vae"}).encode())
    write("d3sr_json", "empty_object", b"{}")
    # LoRA: FuzzedDataProvider bytes; random seeds of several lengths.
    for n in (16, 64, 256, 1024):
        write("lora", f"random{n}", rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    # torch pickles: the seed model's data.pkl (kept small), whole zips from the tests' writer.
    with zipfile.ZipFile(os.path.join(DATA, "osediff_tiny", "model.pkl")) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        write("torch_pickle", "osediff_data_pkl", z.read(pkl))
    t = torch_zip.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), "0")
    write("torch_pickle", "zip_one_tensor", torch_zip.dumps({"w": t, "rank": 4, "names": ["a", "b"]}))
    view = torch_zip.Tensor(t.storage, 1, (2, 2), (3, 1))
    write("torch_pickle", "zip_view", torch_zip.dumps({"v": view}))
    # images: each format PIL reads that d3sr eval lists.
    pixels = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("BMP", "RGB"), ("TIFF", "RGB"), ("WEBP", "RGB"),
                      ("PNG", "L"), ("PNG", "P"), ("PNG", "RGBA"), ("GIF", "P")):
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
        write("image", f"{fmt.lower()}_{mode}", buf.getvalue())
    # arrays: FuzzedDataProvider bytes.
    for n in (8, 64, 512, 4096):
        write("arrays", f"random{n}", rng.integers(0, 256, n, dtype=np.uint8).tobytes())


if __name__ == "__main__":
    main()
