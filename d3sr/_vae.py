"""The Stable Diffusion VAE (diffusers' AutoencoderKL), computed by the C core."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np

from . import _checks, _tiling as tiling
from ._model import CoreModel
from ._native import _core
from ._lora import as_lora
from ._weights import find_weight_file, load_into, read_json

# Older diffusers checkpoints name the mid-block attention's projections thus.
_LEGACY_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}

_PARTS = {"encoder": _core.VAE_ENCODER, "decoder": _core.VAE_DECODER}


def vae_config(raw: dict) -> dict:
    """The fields the core needs from a diffusers AutoencoderKL config.json.

    Every architecture value is read from the config; a value d3sr cannot run
    is a ValueError naming the field.
    """
    name = raw.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
        raise ValueError(f"_class_name is {name!r}; d3sr.VAE reads AutoencoderKL configs")
    boc = raw.get("block_out_channels", [64])
    if not isinstance(boc, list) or not boc or not all(isinstance(c, int) for c in boc):
        raise ValueError(f"block_out_channels must be a non-empty list of integers, not {boc!r}")
    levels = len(boc)
    for field, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = raw.get(field, [allowed] * levels)
        if not isinstance(types, list) or len(types) != levels or any(t != allowed for t in types):
            raise ValueError(f"{field} = {types!r} is not supported: d3sr runs {levels} x {allowed!r}")
    for field, allowed in (("act_fn", "silu"), ("norm_type", "group")):
        if raw.get(field, allowed) != allowed:
            raise ValueError(f"{field} = {raw[field]!r} is not supported: d3sr runs {allowed!r}")
    if raw.get("latents_mean") is not None or raw.get("shift_factor") not in (None, 0, 0.0):
        raise ValueError("latents_mean and shift_factor are not supported: d3sr runs SD-style VAEs without latent shift")
    config = {
        "in_channels": raw.get("in_channels", 3),
        "out_channels": raw.get("out_channels", 3),
        "latent_channels": raw.get("latent_channels", 4),
        "block_out_channels": boc,
        "layers_per_block": raw.get("layers_per_block", 1),
        "norm_num_groups": raw.get("norm_num_groups", 32),
        "use_quant_conv": int(bool(raw.get("use_quant_conv", True))),
        "use_post_quant_conv": int(bool(raw.get("use_post_quant_conv", True))),
        "mid_block_add_attention": int(bool(raw.get("mid_block_add_attention", True))),
    }
    for field in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
        if not isinstance(config[field], int) or config[field] < 1:
            raise ValueError(f"{field} must be a positive integer, not {config[field]!r}")
    return config


def _park_half(park: str) -> bool:
    if park not in ("float32", "float16"):
        raise ValueError(f"park must be 'float32' or 'float16', not {park!r}")
    return park == "float16"


def _rename_legacy(name: str) -> str:
    for old, new in _LEGACY_ATTENTION_NAMES.items():
        if old in name and ".attentions." in name:
            return name.replace(old, new)
    return name


class VAE(CoreModel):
    """diffusers' AutoencoderKL on the C core.

    `encode(x)` takes images [N, C, H, W] float32 in [-1, 1] and returns the
    posterior mean [N, latent_channels, H/f, W/f] (f = 8 for SD), unscaled:
    diffusers' `encode(x).latent_dist.mean`. `decode(z)` returns the image
    [N, C, h*f, w*f], unclamped: diffusers' `decode(z).sample`. Multiply by
    `scaling_factor` for the latents the UNet sees.
    """

    def __init__(self, model, config: dict, raw_config: dict, parts: Tuple[str, ...], device: str, dtype: str):
        self._model = model
        self.config = config
        self.raw_config = raw_config
        self.parts = parts
        self.device = device
        self.dtype = dtype
        self.scaling_factor = _checks.finite_number(raw_config.get("scaling_factor", 0.18215), "scaling_factor")
        self.downscale = 2 ** (len(config["block_out_channels"]) - 1)
        self.last_parked_bytes = 0  # host memory the last tiled call parked at most
        self.last_statistics = None  # the GroupNorm statistics the last tiled call used

    @classmethod
    def from_config(
        cls,
        raw_config: dict,
        *,
        parts: Sequence[str] = ("encoder", "decoder"),
        device: str = "cpu",
        dtype: Optional[str] = None,
        _source: Optional[str] = None,
    ) -> "VAE":
        """A VAE with its weights not yet set (see `load_weights`, `weight_shapes`).
        dtype: 'fp32', 'fp16' or 'bf16' (GPU only); None: fp32 on the CPU, bf16 on CUDA."""
        dtype = _checks.device_and_dtype(device, dtype)
        parts = tuple(parts)
        if not parts or any(p not in _PARTS for p in parts):
            raise ValueError(f"parts must name 'encoder' and/or 'decoder', not {parts!r}")
        with _checks.naming(_source):
            if not isinstance(raw_config, dict):
                raise TypeError(f"a VAE config must be a dict, not {type(raw_config).__name__}")
            config = vae_config(raw_config)
            flags = sum(_PARTS[p] for p in set(parts))
            model = _core.vae_create(config, flags, device, dtype)
            return cls(model, config, raw_config, parts, device, dtype)

    @classmethod
    def load(
        cls,
        path: str,
        *,
        parts: Sequence[str] = ("encoder", "decoder"),
        device: str = "cpu",
        dtype: Optional[str] = None,
        variant: Optional[str] = None,
        lora=None,
    ) -> "VAE":
        """Loads a diffusers `vae/` folder: config.json and
        diffusion_pytorch_model[.fp16].safetensors (fp32, fp16 or bf16 tensors).
        lora: a d3sr.LoRA (or its path) merged into the weights as they load."""
        config_path = os.path.join(path, "config.json")
        raw = read_json(config_path)
        weights = find_weight_file(path, variant)
        vae = cls.from_config(raw, parts=parts, device=device, dtype=dtype, _source=config_path)
        skipped = tuple(f"{p}." for p in _PARTS if p not in vae.parts)
        skipped += ("quant_conv.",) if "encoder" not in vae.parts else ()
        skipped += ("post_quant_conv.",) if "decoder" not in vae.parts else ()
        load_into(vae._model, weights, rename=_rename_legacy, skip=lambda name: name.startswith(skipped),
                  lora=as_lora(lora), what="VAE")
        return vae

    def encode(self, x: np.ndarray, *, return_intermediates: bool = False):
        """Posterior mean of images x [N, C, H, W] float32 in [-1, 1]; H and W
        multiples of `downscale`. With return_intermediates, also a dict of the
        activations after conv_in, each down block and the mid block."""
        return self._run(self._model.vae_encode, x, return_intermediates=return_intermediates)

    def decode(self, z: np.ndarray, *, return_intermediates: bool = False):
        """Image [N, C, h*f, w*f] of latents z [N, latent_channels, h, w] (unscaled)."""
        return self._run(self._model.vae_decode, z, return_intermediates=return_intermediates)

    def encode_tiled(self, x: np.ndarray, tile: int, *, park: str = "float32", statistics=None) -> np.ndarray:
        """encode in tiles of at most tile x tile pixels (a multiple of
        `downscale`), each with a halo covering the encoder's receptive field
        (see d3sr._tiling). Every GroupNorm layer of every tile normalises with
        statistics of the whole image, by `statistics`:
          None: the image's exact ones, pooled layer by layer over the tiles,
            whose activations wait parked in host memory, as `park`: 'float32'
            (exact) or 'float16' (half the memory). Equals encode up to float
            rounding except for the mid block's attention, which sees one tile.
          'estimated': those of the image area-resampled to fit one tile (one
            small untiled pass); then the tiles run one by one, nothing parked:
            memory one tile's, whatever the image's size. Approximate.
          an array [N, layers, groups, 2] (mean, variance per GroupNorm layer
            in call order; `last_statistics` of an earlier call): these.
        `last_statistics` keeps the statistics used."""
        _checks.float32_array(x, "x", 4, "[N, C, H, W]")
        _, _, h, w = x.shape
        tile = self._check_tile(True, h, w, tile, "x")
        return self._run_tiled(x, self._windows(True, h, w, tile), True, park, statistics, tile, self.downscale)

    def decode_tiled(self, z: np.ndarray, tile: int, *, park: str = "float32", statistics=None) -> np.ndarray:
        """decode in tiles of at most tile x tile latent pixels, as encode_tiled."""
        _checks.float32_array(z, "z", 4, "[N, latent_channels, h, w]")
        _, _, h, w = z.shape
        tile = self._check_tile(False, h, w, tile, "z")
        return self._run_tiled(z, self._windows(False, h, w, tile), False, park, statistics, tile, 1)

    def tiled_memory(self, shape: Sequence[int], tile: int, *, encode: bool, park: str = "float32") -> Tuple[int, int]:
        """(window bytes, parked bytes): what encode_tiled (encode=True) or
        decode_tiled of an input of `shape` [N, C, H, W] with the image's exact
        statistics would hold: the activations of one tile's window (on the
        VAE's device; scratch of single ops aside) and the most host memory its
        tiles park at once (0 for a single tile; with given or estimated statistics
        nothing is parked). Nothing runs: the forward of one window is planned only."""
        n, _, h, w = (int(v) for v in shape)
        tile = self._check_tile(encode, h, w, tile, "shape")
        return self._model.vae_plan_tiled((n, h, w), self._windows(encode, h, w, tile), encode, _park_half(park))

    def _check_tile(self, encode: bool, h: int, w: int, tile, name: str) -> int:
        """The tile (pixels for the encoder, latent pixels for the decoder), checked with the input's size."""
        if not encode:
            return tiling.check_tile(tile, "tile", 4, 1)
        if h % self.downscale or w % self.downscale:
            raise ValueError(f"{name}'s height and width must be multiples of {self.downscale}, got {h} x {w}")
        return tiling.check_tile(tile, "tile", 4 * self.downscale, self.downscale)

    def _windows(self, encode: bool, h: int, w: int, tile: int) -> np.ndarray:
        if encode:
            return tiling.vae_windows(h, w, tile, tiling.encoder_halo(self.config), self.downscale)
        return tiling.vae_windows(h, w, tile, tiling.decoder_halo(self.config), 1)

    def check_tiled_memory(self, shape: Sequence[int], tile: int, *, encode: bool, park: str = "float32",
                           advice: str = "statistics='estimated' parks nothing (approximate; memory one tile's at any "
                                         "size); park='float16' halves the parked set.") -> None:
        """MemoryError, before anything runs, when a tiled call with exact
        statistics (tiled_memory) would need more host memory than is available."""
        window, parked = self.tiled_memory(shape, tile, encode=encode, park=park)
        tiles = tiling.tile_count(int(shape[2]), int(shape[3]), tile, self.downscale if encode else 1)
        tiling.check_parking_fits("encode_tiled" if encode else "decode_tiled", tiles,
                                  window if self.device == "cpu" else 0, parked, advice)

    def _run_tiled(self, x: np.ndarray, tiles: np.ndarray, encode: bool, park: str, statistics, tile: int,
                   multiple: int) -> np.ndarray:
        half = _park_half(park)
        if statistics is None and len(tiles) > 1:
            self.check_tiled_memory(x.shape, tile, encode=encode, park=park)
        if isinstance(statistics, str):
            if statistics != "estimated":
                raise ValueError(f"statistics must be None, 'estimated' or an array, not {statistics!r}")
            small = tiling.shrink_for_statistics(x, tile, multiple)
            _, _, statistics = self._model.vae_run_tiled(small, tiling.whole_window(*small.shape[2:]), encode, False)
        out, self.last_parked_bytes, self.last_statistics = self._model.vae_run_tiled(x, tiles, encode, half,
                                                                                      statistics)
        return out

    def __repr__(self) -> str:
        return (f"VAE(block_out_channels={self.config['block_out_channels']}, parts={self.parts}, "
                f"device={self.device!r}, dtype={self.dtype!r})")
