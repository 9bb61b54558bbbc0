"""The d3sr checkpoint folder: d3sr.json and the files it names.

A generator checkpoint (D3SR has no public weights, so d3sr defines the layout
over the standard formats researchers already have):

    d3sr.json                       see GENERATOR_DEFAULTS below
    unet/                           a diffusers UNet2DConditionModel folder (SD 2.1-base)
    vae/                            a diffusers AutoencoderKL folder
    unet_lora.safetensors           optional: a LoRA merged into the UNet at load
    vae_lora.safetensors            optional: a LoRA merged into the VAE encoder
    text_embedding.safetensors      the fixed prompt embedding [77, 1024], key "prompt_embeds"

Paths in d3sr.json are relative to the folder (they may point outside it).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import numpy as np

from .weights import WeightFile, bf16_to_float32, read_json

CONFIG_NAME = "d3sr.json"

# SD's DDPM schedule: scaled_linear betas from 0.00085 to 0.012 over 1000 steps.
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

GENERATOR_DEFAULTS: Dict[str, Any] = {
    "type": "generator",
    "unet": "unet",
    "vae": "vae",
    "unet_lora": None,
    "vae_lora": None,
    "text_embedding": "text_embedding.safetensors",
    # T_L: D3SR does not publish it; 399 is what its authors' sister projects use.
    "timestep": 399,
    # "epsilon": z_H = (z_L - sqrt(1 - abar_T) eps) / sqrt(abar_T) (D3SR's eq. 1, OSEDiff);
    # "residual": z_H = z_L - eps (peers that predict the latent residual).
    "latent_formula": "epsilon",
    "scaling_factor": 0.18215,
    "schedule": SD_SCHEDULE,
}

LATENT_FORMULAS = ("epsilon", "residual")


def read_generator_config(folder: str) -> dict:
    """d3sr.json of a generator checkpoint, defaults filled in and checked."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    raw = read_json(os.path.join(folder, CONFIG_NAME))
    unknown = sorted(set(raw) - set(GENERATOR_DEFAULTS))
    if unknown:
        raise ValueError(f"{os.path.join(folder, CONFIG_NAME)}: unknown field(s) {unknown}; "
                         f"known: {sorted(GENERATOR_DEFAULTS)}")
    config = {**GENERATOR_DEFAULTS, **raw}
    where = os.path.join(folder, CONFIG_NAME)
    if config["type"] != "generator":
        raise ValueError(f"{where}: type is {config['type']!r}, an Upscaler needs 'generator'")
    t = config["timestep"]
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= 999:
        raise ValueError(f"{where}: timestep must be an integer in [0, 999], not {t!r}")
    if config["latent_formula"] not in LATENT_FORMULAS:
        raise ValueError(f"{where}: latent_formula must be one of {LATENT_FORMULAS}, not {config['latent_formula']!r}")
    if not isinstance(config["scaling_factor"], (int, float)) or not config["scaling_factor"] > 0:
        raise ValueError(f"{where}: scaling_factor must be a positive number")
    alphas_cumprod(config["schedule"])  # checks the schedule
    for field in ("unet", "vae", "unet_lora", "vae_lora", "text_embedding"):
        if config[field] is not None:
            path = os.path.join(folder, config[field])
            if not os.path.exists(path):
                raise FileNotFoundError(f"{where}: {field} names {config[field]!r}, which is missing ({path})")
            config[field] = path
    return config


def alphas_cumprod(schedule: dict) -> np.ndarray:
    """abar_t for t = 0 .. T-1 in float64, from a diffusers-style schedule."""
    known = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule"}
    if not isinstance(schedule, dict) or set(schedule) - known:
        raise ValueError(f"schedule must be a dict with fields {sorted(known)}, not {schedule!r}")
    s = {**SD_SCHEDULE, **schedule}
    n, start, end = s["num_train_timesteps"], s["beta_start"], s["beta_end"]
    if s["beta_schedule"] == "scaled_linear":
        betas = np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    elif s["beta_schedule"] == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    else:
        raise ValueError(f"beta_schedule {s['beta_schedule']!r} is not supported ('scaled_linear' or 'linear')")
    if n != 1000:
        raise ValueError(f"num_train_timesteps must be 1000 (timesteps are in [0, 999]), not {n}")
    return np.cumprod(1.0 - betas)


def read_text_embedding(path: str, width: int) -> np.ndarray:
    """The fixed prompt embedding [L, width] float32 from a .safetensors file
    (key "prompt_embeds", or its only tensor; [1, L, width] is accepted)."""
    with WeightFile(path) as f:
        keys = f.keys()
        key = "prompt_embeds" if "prompt_embeds" in keys else keys[0] if len(keys) == 1 else None
        if key is None:
            raise ValueError(f"{path}: expected a tensor 'prompt_embeds', found {keys}")
        array, bf16 = f.get(key)
    array = bf16_to_float32(array) if bf16 else np.asarray(array, np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"{path}: the text embedding must have shape [L, {width}], not {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: the text embedding contains NaN or Inf")
    return np.ascontiguousarray(array)


def write_config(folder: str, config: dict) -> str:
    """Writes config as the folder's d3sr.json; returns its path."""
    path = os.path.join(folder, CONFIG_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return path
