"""diffusers' UNet2DConditionModel (SD 1.x, SD 2.x, SDXL), computed by the C core."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

from . import _checks
from ._model import CoreModel
from ._native import _core
from ._lora import as_lora
from ._weights import find_weight_file, load_into, read_json

_DOWN_TYPES = {"CrossAttnDownBlock2D": 1, "DownBlock2D": 0}
_UP_TYPES = {"CrossAttnUpBlock2D": 1, "UpBlock2D": 0}

# Fields whose value d3sr must see as given: (default, allowed values).
_FIXED = {
    "act_fn": ("silu", ("silu",)),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", ("UNetMidBlock2DCrossAttn",)),
    "resnet_time_scale_shift": ("default", ("default",)),
    "time_embedding_type": ("positional", ("positional",)),
    "class_embed_type": (None, (None,)),
    "num_class_embeds": (None, (None,)),
    "encoder_hid_dim": (None, (None,)),
    "encoder_hid_dim_type": (None, (None,)),
    "time_cond_proj_dim": (None, (None,)),
    "timestep_post_act": (None, (None,)),
    "time_embedding_act_fn": (None, (None,)),
    "conv_in_kernel": (3, (3,)),
    "conv_out_kernel": (3, (3,)),
    "center_input_sample": (False, (False,)),
    "dual_cross_attention": (False, (False,)),
    "only_cross_attention": (False, (False,)),
    "resnet_skip_time_act": (False, (False,)),
    "resnet_out_scale_factor": (1.0, (1.0,)),
    "mid_block_scale_factor": (1, (1,)),
    "cross_attention_norm": (None, (None,)),
    "mid_block_only_cross_attention": (None, (None, False)),
    "attention_type": ("default", ("default",)),
    "addition_embed_type": (None, (None, "text_time")),
    "num_attention_heads": (None, (None,)),
    "class_embeddings_concat": (False, (False,)),
    "reverse_transformer_layers_per_block": (None, (None,)),
}


def _per_level(raw: dict, field: str, default, levels: int) -> list:
    value = raw.get(field, default)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * levels
    if isinstance(value, (list, tuple)) and len(value) == levels and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ValueError(f"{field} = {value!r} is not supported: d3sr takes an integer or a list of {levels} integers")


def unet_config(raw: dict) -> dict:
    """The fields the core needs from a diffusers UNet2DConditionModel config.json.

    Every architecture value is read from the config; a value d3sr cannot run
    is a ValueError naming the field and the value.
    """
    name = raw.get("_class_name", "UNet2DConditionModel")
    if name != "UNet2DConditionModel":
        raise ValueError(f"_class_name is {name!r}; d3sr.UNet reads UNet2DConditionModel configs")
    for field, (default, allowed) in _FIXED.items():
        if raw.get(field, default) not in allowed:
            raise ValueError(f"{field} = {raw[field]!r} is not supported (d3sr runs {', '.join(map(repr, allowed))})")
    boc = raw.get("block_out_channels", [320, 640, 1280, 1280])
    if not isinstance(boc, (list, tuple)) or not boc or not all(isinstance(c, int) for c in boc):
        raise ValueError(f"block_out_channels must be a non-empty list of integers, not {boc!r}")
    levels = len(boc)
    down = raw.get("down_block_types", ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"])
    up = raw.get("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1))
    for field, types, known in (("down_block_types", down, _DOWN_TYPES), ("up_block_types", up, _UP_TYPES)):
        if not isinstance(types, (list, tuple)) or len(types) != levels or any(t not in known for t in types):
            raise ValueError(f"{field} = {types!r} is not supported: d3sr runs {levels} of {sorted(known)}")
    cross_dim = raw.get("cross_attention_dim", 1280)
    if not isinstance(cross_dim, int):
        raise ValueError(f"cross_attention_dim = {cross_dim!r} is not supported: d3sr takes one integer")
    groups = raw.get("norm_num_groups", 32)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"norm_num_groups = {groups!r} is not supported: d3sr takes a positive integer")
    transformer_layers = _per_level(raw, "transformer_layers_per_block", 1, levels)
    text_time = raw.get("addition_embed_type") == "text_time"
    time_embed_dim = raw.get("time_embedding_dim") or 4 * boc[0]
    config = {
        "in_channels": raw.get("in_channels", 4),
        "out_channels": raw.get("out_channels", 4),
        "block_out_channels": list(boc),
        "down_cross_attention": [_DOWN_TYPES[t] for t in down],
        "up_cross_attention": [_UP_TYPES[t] for t in up],
        "layers_per_block": _per_level(raw, "layers_per_block", 2, levels),
        "transformer_layers": transformer_layers,
        "up_transformer_layers": transformer_layers[::-1],
        # SD 2 and SDXL configs name the head count "attention_head_dim" (diffusers reads it so).
        "attention_heads": _per_level(raw, "attention_head_dim", 8, levels),
        "cross_attention_dim": cross_dim,
        "norm_num_groups": groups,
        "norm_eps": _checks.finite_number(raw.get("norm_eps", 1e-5), "norm_eps"),
        "use_linear_projection": int(bool(raw.get("use_linear_projection", False))),
        "flip_sin_to_cos": int(bool(raw.get("flip_sin_to_cos", True))),
        "freq_shift": _checks.finite_number(raw.get("freq_shift", 0), "freq_shift"),
        "time_embed_dim": time_embed_dim,
        "text_time": int(text_time),
        "addition_time_embed_dim": raw.get("addition_time_embed_dim") or 0 if text_time else 0,
        "addition_input_dim": raw.get("projection_class_embeddings_input_dim") or 0 if text_time else 0,
        "downsample_padding": raw.get("downsample_padding", 1),
    }
    if text_time and not (config["addition_time_embed_dim"] and config["addition_input_dim"]):
        raise ValueError("addition_embed_type 'text_time' needs addition_time_embed_dim and "
                         "projection_class_embeddings_input_dim")
    return config


# Keys the trunk (down and mid blocks only) never reads.
_TRUNK_SKIPPED = ("up_blocks.", "conv_norm_out.", "conv_out.")


class UNet(CoreModel):
    """diffusers' UNet2DConditionModel on the C core.

    `unet(sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None)`
    returns the prediction [N, out_channels, h, w], the same as diffusers'
    `UNet2DConditionModel(...).sample`. With trunk_only, only conv_in, the
    embeddings, the down blocks and the mid block are built and loaded, and the
    call returns the mid block's output (the discriminator's trunk).
    """

    def __init__(self, model, config: dict, raw_config: dict, trunk_only: bool, device: str, dtype: str):
        self._model = model
        self.config = config
        self.raw_config = raw_config
        self.trunk_only = trunk_only
        self.device = device
        self.dtype = dtype

    @classmethod
    def from_config(cls, raw_config: dict, *, trunk_only: bool = False, device: str = "cpu",
                    dtype: Optional[str] = None, _source: Optional[str] = None) -> "UNet":
        """A UNet with its weights not yet set (see `load_weights`, `weight_shapes`)."""
        dtype = _checks.device_and_dtype(device, dtype)
        with _checks.naming(_source):
            if not isinstance(raw_config, dict):
                raise TypeError(f"a UNet config must be a dict, not {type(raw_config).__name__}")
            config = unet_config(raw_config)
            model = _core.unet_create(config, trunk_only, device, dtype)
        return cls(model, config, raw_config, trunk_only, device, dtype)

    @classmethod
    def load(cls, path: str, *, trunk_only: bool = False, device: str = "cpu", dtype: Optional[str] = None,
             variant: Optional[str] = None, lora=None) -> "UNet":
        """Loads a diffusers `unet/` folder (config.json and
        diffusion_pytorch_model[.fp16].safetensors), one tensor at a time.
        lora: a d3sr.LoRA (or its path) merged into the weights as they load."""
        config_path = os.path.join(path, "config.json")
        raw = read_json(config_path)
        weights = find_weight_file(path, variant)
        unet = cls.from_config(raw, trunk_only=trunk_only, device=device, dtype=dtype, _source=config_path)
        skip = (lambda name: name.startswith(_TRUNK_SKIPPED)) if trunk_only else (lambda name: False)
        load_into(unet._model, weights, skip=skip, lora=as_lora(lora), what="UNet")
        return unet

    def __call__(self, sample: np.ndarray, timestep: Union[int, float, Sequence, np.ndarray],
                 encoder_hidden_states: np.ndarray, text_embeds: Optional[np.ndarray] = None,
                 time_ids: Optional[np.ndarray] = None, *, return_intermediates: bool = False):
        """sample [N, C, h, w] float32; timestep one value or one per sample, in
        [0, 999]; encoder_hidden_states [N, L, cross_attention_dim] float32; for
        SDXL-style UNets text_embeds [N, P] and time_ids [N, 6]. With
        return_intermediates, also a dict of the activations after conv_in,
        each down block, the mid block and each up block."""
        # The binding and the core check the arrays and the timesteps' range;
        # here only what Python coerces: one timestep per sample, time_ids to float32.
        n = sample.shape[0] if isinstance(sample, np.ndarray) and sample.ndim else 1
        timesteps = _timesteps(timestep, n)
        extra = {}
        if text_embeds is not None:
            extra["text_embeds"] = text_embeds
        if time_ids is not None:
            extra["time_ids"] = np.asarray(time_ids, np.float32)
        return self._run(self._model.unet_forward, sample, timesteps, encoder_hidden_states, **extra,
                         return_intermediates=return_intermediates)

    def __repr__(self) -> str:
        kind = "trunk" if self.trunk_only else "full"
        return (f"UNet(block_out_channels={self.config['block_out_channels']}, {kind}, "
                f"device={self.device!r}, dtype={self.dtype!r})")


def _timesteps(timestep, n: int) -> np.ndarray:
    """One float32 timestep per sample (the core checks that each is in [0, 999])."""
    t = np.asarray(timestep)
    if t.dtype.kind not in "iuf":
        raise TypeError(f"timestep must be a number or an array of numbers, not {t.dtype}")
    t = np.broadcast_to(t.astype(np.float32), (n,)) if t.ndim == 0 else t.astype(np.float32)
    if t.shape != (n,):
        raise ValueError(f"timestep must be one value or {n} values (one per sample), got shape {t.shape}")
    return np.ascontiguousarray(t)
