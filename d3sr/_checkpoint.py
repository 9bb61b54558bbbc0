"""The d3sr checkpoint folders: d3sr.json and the files it names.

D3SR has no public weights, so d3sr defines the layout over the standard
formats researchers already have. A generator checkpoint:

    d3sr.json                       "type": "generator"; see GENERATOR_DEFAULTS
    unet/                           a diffusers UNet2DConditionModel folder (SD 2.1-base)
    vae/                            a diffusers AutoencoderKL folder
    unet_lora.safetensors           optional: a LoRA merged into the UNet at load
    vae_lora.safetensors            optional: a LoRA merged into the VAE encoder
    text_embedding.safetensors      the fixed prompt embedding [77, 1024], key "prompt_embeds"

A discriminator checkpoint:

    d3sr.json                       "type": "discriminator"; see DISCRIMINATOR_DEFAULTS
    unet/                           an SDXL-layout UNet folder; only its down and mid blocks are read
    unet_lora.safetensors           optional: a LoRA merged into the trunk at load
    head.safetensors                the patch head: "0.weight" [hidden, 1280, 1, 1], "0.bias",
                                    "2.weight" [1, hidden, 1, 1], "2.bias" (nn.Sequential's names)
    conditioning.safetensors        "prompt_embeds" [77, 2048], "pooled_prompt_embeds" [1280],
                                    "time_ids" [6]: the fixed SDXL conditioning
    vae/                            optional: the SD 2.1 VAE that encodes images for score_images

Paths in d3sr.json are relative to the folder (they may point outside it).

Built-in checkpoints ship inside the package, under d3sr/models/NAME/ (a
"generator" and a "discriminator" folder each); the loaders take their NAME
in place of a path: "tiny" (d3sr-tiny, the default), trained by
tools/train_tiny.py. A local folder of the same name is reached as "./tiny".
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import numpy as np

from ._tiling import COLOR_FIXES, TILE_NAMES, check_tiles
from ._weights import WeightFile, bf16_to_float32, read_json

CONFIG_NAME = "d3sr.json"

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
BUILTIN = ("tiny",)
DEFAULT_MODEL = "tiny"


def checkpoint_path(path, kind: str) -> str:
    """The folder of a checkpoint: path itself, or for a built-in name (or None,
    the default model) its folder inside the package. kind: 'generator' or 'discriminator'."""
    if path is None:
        path = DEFAULT_MODEL
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a checkpoint folder or one of {BUILTIN}, not {type(path).__name__}")
    if path in BUILTIN:
        folder = os.path.join(MODELS_DIR, path, kind)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"the built-in model {path!r} is missing from this installation ({folder})")
        return folder
    return os.fspath(path)

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
    # What Upscaler.upscale(color_fix="default") applies: null, "adain" or "wavelet". A model
    # trained to be scored after a colour fix names it here (d3sr-tiny: "wavelet").
    "color_fix": None,
    # Upscaler.upscale's tiles when called with "default" (null: that stage never tiles).
    # OSEDiff's, sized for SD 2.1's memory; a small model can afford larger ones.
    "latent_tile": 96,
    "latent_overlap": 32,
    "encoder_tile": 1024,
    "decoder_tile": 224,
}

LATENT_FORMULAS = ("epsilon", "residual")

DISCRIMINATOR_DEFAULTS: Dict[str, Any] = {
    "type": "discriminator",
    "unet": "unet",
    "unet_lora": None,
    "head": "head.safetensors",
    "head_activation": "silu",
    "head_negative_slope": 0.2,  # leaky_relu only
    "conditioning": "conditioning.safetensors",
    "vae": None,
    "scaling_factor": 0.18215,
    "schedule": SD_SCHEDULE,
}

HEAD_ACTIVATIONS = ("silu", "relu", "leaky_relu", "gelu")  # the C core's d3sr_head_activation order


def _read_config(folder: str, kind: str, defaults: dict, paths) -> dict:
    """d3sr.json of a checkpoint of kind, defaults filled in, paths resolved and checked."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    where = os.path.join(folder, CONFIG_NAME)
    raw = read_json(where)
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(defaults)}")
    config = {**defaults, **raw}
    if config["type"] != kind:
        raise ValueError(f"{where}: type is {config['type']!r}, this needs a {kind!r} checkpoint")
    sf = config["scaling_factor"]
    if isinstance(sf, bool) or not isinstance(sf, (int, float)) or not 0 < sf < float("inf"):
        raise ValueError(f"{where}: scaling_factor must be a positive finite number, not {sf!r}")
    try:
        alphas_cumprod(config["schedule"])  # checks the schedule
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    required = {field for field, value in defaults.items() if value is not None and field in paths}
    for field in paths:
        value = config[field]
        if value is None and field in required:
            raise ValueError(f"{where}: {field} must name a file or folder, not null")
        if value is not None and (not isinstance(value, str) or not value or "\0" in value):
            raise ValueError(f"{where}: {field} must be a path (a non-empty string), not {value!r}")
        if value is not None:
            path = os.path.join(folder, value)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{where}: {field} names {config[field]!r}, which is missing ({path})")
            config[field] = path
    return config


def read_generator_config(folder: str) -> dict:
    """d3sr.json of a generator checkpoint, defaults filled in and checked."""
    config = _read_config(folder, "generator", GENERATOR_DEFAULTS,
                          ("unet", "vae", "unet_lora", "vae_lora", "text_embedding"))
    where = os.path.join(folder, CONFIG_NAME)
    t = config["timestep"]
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= 999:
        raise ValueError(f"{where}: timestep must be an integer in [0, 999], not {t!r}")
    if not isinstance(config["latent_formula"], str) or config["latent_formula"] not in LATENT_FORMULAS:
        raise ValueError(f"{where}: latent_formula must be one of {LATENT_FORMULAS}, not {config['latent_formula']!r}")
    if config["color_fix"] not in COLOR_FIXES:
        raise ValueError(f"{where}: color_fix must be null, \"adain\" or \"wavelet\", not {config['color_fix']!r}")
    for name in TILE_NAMES:
        if isinstance(config[name], str):  # "default" is upscale's word for this very field
            raise ValueError(f"{where}: {name} must be an integer or null, not {config[name]!r}")
    try:
        check_tiles(*(config[name] for name in TILE_NAMES), {})
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return config


def read_discriminator_config(folder: str) -> dict:
    """d3sr.json of a discriminator checkpoint, defaults filled in and checked."""
    config = _read_config(folder, "discriminator", DISCRIMINATOR_DEFAULTS,
                          ("unet", "unet_lora", "head", "conditioning", "vae"))
    where = os.path.join(folder, CONFIG_NAME)
    if not isinstance(config["head_activation"], str) or config["head_activation"] not in HEAD_ACTIVATIONS:
        raise ValueError(f"{where}: head_activation must be one of {HEAD_ACTIVATIONS}, not {config['head_activation']!r}")
    slope = config["head_negative_slope"]
    if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not abs(slope) < float("inf"):
        raise ValueError(f"{where}: head_negative_slope must be a finite number, not {slope!r}")
    return config


def alphas_cumprod(schedule: dict) -> np.ndarray:
    """abar_t for t = 0 .. T-1 in float64, from a diffusers-style schedule."""
    known = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule"}
    if not isinstance(schedule, dict) or set(schedule) - known:
        raise ValueError(f"schedule must be a dict with fields {sorted(known)}, not {schedule!r}")
    s = {**SD_SCHEDULE, **schedule}
    n, start, end = s["num_train_timesteps"], s["beta_start"], s["beta_end"]
    # Checked before anything is built: num_train_timesteps 3e8 once built a 4.6 GB schedule first.
    if isinstance(n, bool) or not isinstance(n, int) or n != 1000:
        raise ValueError(f"num_train_timesteps must be 1000 (timesteps are in [0, 999]), not {n!r}")
    for field, value in (("beta_start", start), ("beta_end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{field} must be a number in [0, 1), not {value!r}")
    if not isinstance(s["beta_schedule"], str):
        raise ValueError(f"beta_schedule must be a string, not {s['beta_schedule']!r}")
    if s["beta_schedule"] == "scaled_linear":
        betas = np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    elif s["beta_schedule"] == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    else:
        raise ValueError(f"beta_schedule {s['beta_schedule']!r} is not supported ('scaled_linear' or 'linear')")
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
