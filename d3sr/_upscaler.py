"""The one-step D3SR generator: bicubic upsampling, VAE encoder, one UNet step, VAE decoder.

    x_L (H x W x 3)  -> bicubic x scale (PIL's kernel, as OSEDiff and SeeSR) -> [-1, 1],
    padded (reflected) to a multiple of the VAE's factor -> z_L = E(x) * scaling_factor
    -> eps = UNet(z_L, T_L, fixed text embedding)
    -> z_H = (z_L - sqrt(1 - abar_TL) eps) / sqrt(abar_TL)   (D3SR eq. 1; coefficients in float64)
    -> D(z_H / scaling_factor), clamped to [-1, 1] -> [0, 1], padding cropped.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from . import _checks, _color as color, _tiling as tiling
from ._checkpoint import alphas_cumprod, checkpoint_path, read_generator_config, read_text_embedding
from .images import as_image_batch, bicubic
from ._lora import LoRA
from ._unet import UNet
from ._vae import VAE

MIN_SIDE = 8
TileSize = Union[int, None, str]  # pixels or latent pixels; None: no tiling; "default": the checkpoint's
# Latent pixels the UNet runs in one batch of tiles: one default tile on the CPU
# (a batch saves nothing there), eight on a GPU.
_LATENT_BATCH_PIXELS = {"cpu": 96 * 96, "cuda": 8 * 96 * 96}


class Upscaler:
    """The D3SR generator over a checkpoint folder (see d3sr._checkpoint)."""

    def __init__(self, vae: VAE, unet: UNet, text_embedding: np.ndarray, config: dict):
        self.vae = vae
        self.unet = unet
        self.text_embedding = text_embedding  # [L, cross_attention_dim]
        self.config = config
        abar = alphas_cumprod(config["schedule"])[config["timestep"]]
        self.timestep = config["timestep"]
        self.latent_formula = config["latent_formula"]
        self.scaling_factor = float(config["scaling_factor"])
        self._eps_coefficient = float(np.sqrt(1.0 - abar))  # float64 throughout
        self._x0_divisor = float(np.sqrt(abar))

    @classmethod
    def load(cls, path: Optional[str] = None, *, device: str = "cpu", dtype: Optional[str] = None) -> "Upscaler":
        """Loads a generator checkpoint folder: d3sr.json, unet/, vae/, LoRAs, text embedding.
        path None or "tiny": d3sr-tiny, the small model built into the package.
        dtype: 'fp32', 'fp16' or 'bf16' (GPU only); None: fp32 on the CPU, bf16 on CUDA."""
        dtype = _checks.device_and_dtype(device, dtype)
        path = checkpoint_path(path, "generator")
        config = read_generator_config(path)
        vae_lora = LoRA.load(config["vae_lora"]) if config["vae_lora"] else None
        unet_lora = LoRA.load(config["unet_lora"]) if config["unet_lora"] else None
        vae = VAE.load(config["vae"], device=device, dtype=dtype, lora=vae_lora)
        unet = UNet.load(config["unet"], device=device, dtype=dtype, lora=unet_lora)
        if unet.config["in_channels"] != vae.config["latent_channels"] or \
                unet.config["out_channels"] != vae.config["latent_channels"]:
            raise ValueError(f"{path}: the UNet takes {unet.config['in_channels']} channels, "
                             f"the VAE's latents have {vae.config['latent_channels']}")
        embedding = read_text_embedding(config["text_embedding"], unet.config["cross_attention_dim"])
        return cls(vae, unet, embedding, config)

    def upscale(self, image: np.ndarray, scale: int = 4, *, latent_tile: TileSize = "default",
                latent_overlap: TileSize = "default", encoder_tile: TileSize = "default",
                decoder_tile: TileSize = "default", color_fix: Optional[str] = "default",
                vae_statistics: str = "exact", progress=None) -> np.ndarray:
        """Super-resolves an image: H x W x 3 (or N x H x W x 3), uint8 or float32
        in [0, 1]; returns the same kind at scale times the size.

        Large images run in tiles (d3sr._tiling), with OSEDiff's names:
        latent_tile / latent_overlap (latent pixels) for the UNet, encoder_tile
        (pixels) and decoder_tile (latent pixels) for the VAE. A stage tiles only
        when the image is larger than its tile; None turns its tiling off.
        'default': the checkpoint's d3sr.json (OSEDiff's 96, 32, 1024 and 224
        unless it names others; d3sr-tiny's are larger, for its small memory).
        color_fix: None, 'adain' or 'wavelet' (StableSR's), against the
        bicubic-upsampled input; 'default': the checkpoint's d3sr.json
        color_fix (None unless it names one; d3sr-tiny's is 'wavelet',
        what it was trained to be scored with). vae_statistics: where a tiled
        VAE stage's GroupNorm layers get the image's statistics: 'exact' (pooled layer by
        layer over the tiles, which wait parked in host memory: about 1.5x the
        stage's activations of the whole image; MemoryError before anything runs
        when a stage's would not fit, see VAE.tiled_memory) or 'estimated' (from one small
        pass over the image area-resampled to fit a tile; then the tiles run one
        by one in one tile's memory at any image size; approximate: README,
        Large images). progress: called with the number of tiles each step
        finished (progress_steps gives the total; a VAE stage reports its tiles
        when it ends)."""
        images, single, is_uint8 = as_image_batch(image)
        if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or not 1 <= scale <= 16:
            raise ValueError(f"scale must be an integer from 1 to 16, not {scale!r}")
        latent_tile, latent_overlap, encoder_tile, decoder_tile = tiling.check_tiles(
            latent_tile, latent_overlap, encoder_tile, decoder_tile, self.config)
        color_fix = tiling.check_color_fix(color_fix, self.config["color_fix"])
        statistics = tiling.check_vae_statistics(vae_statistics)
        n, h, w, _ = images.shape
        if h < MIN_SIDE or w < MIN_SIDE:
            raise ValueError(f"image must be at least {MIN_SIDE} x {MIN_SIDE} pixels, got {h} x {w}")
        upsampled = bicubic(images, scale)                            # [N, sH, sW, 3] float32 in [0, 1]
        x, (out_h, out_w) = _pad(upsampled * 2 - 1, self.vae.downscale)
        if color_fix is None:
            del upsampled
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))              # [N, 3, H', W'] in [-1, 1]
        _, _, ph, pw = x.shape
        f = self.vae.downscale
        if statistics is None:  # exact: fail now, not after the encoder and UNet, if a stage's parked tiles cannot fit
            advice = ("vae_statistics='estimated' (--vae-statistics estimated) parks nothing: memory one tile's at "
                      "any size, statistics approximate (README, Large images).")
            if _larger(ph, pw, encoder_tile):
                self.vae.check_tiled_memory(x.shape, encoder_tile, encode=True, advice=advice)
            if _larger(ph // f, pw // f, decoder_tile):
                self.vae.check_tiled_memory((n, self.vae.config["latent_channels"], ph // f, pw // f), decoder_tile,
                                            encode=False, advice=advice)
        if _larger(ph, pw, encoder_tile):
            z = self.vae.encode_tiled(x, encoder_tile, statistics=statistics)
            _report(progress, tiling.tile_count(ph, pw, encoder_tile, f))
        else:
            z = self.vae.encode(x)
        z *= np.float32(self.scaling_factor)                             # z_L
        del x
        eps = self._unet_eps(z, latent_tile, latent_overlap, progress)
        z_h = self.denoise(z, eps)
        del z, eps
        z_h /= np.float32(self.scaling_factor)
        if _larger(z_h.shape[2], z_h.shape[3], decoder_tile):
            decoded = self.vae.decode_tiled(z_h, decoder_tile, statistics=statistics)
            _report(progress, tiling.tile_count(z_h.shape[2], z_h.shape[3], decoder_tile, 1))
        else:
            decoded = self.vae.decode(z_h)
        del z_h
        np.clip(decoded, -1, 1, out=decoded)
        decoded += 1
        decoded /= 2
        out = decoded[:, :, :out_h, :out_w].transpose(0, 2, 3, 1)
        if color_fix is not None:
            out = color.color_fix(np.ascontiguousarray(out), upsampled, color_fix)
        if is_uint8:
            out = np.round(out * 255).astype(np.uint8)
        out = np.ascontiguousarray(out, dtype=out.dtype)
        return out[0] if single else out

    def progress_steps(self, shape, scale: int = 4, *, latent_tile: TileSize = "default",
                       latent_overlap: TileSize = "default", encoder_tile: TileSize = "default",
                       decoder_tile: TileSize = "default") -> int:
        """How many tile steps upscale reports to progress for an image of shape [H, W, ...]."""
        latent_tile, latent_overlap, encoder_tile, decoder_tile = tiling.check_tiles(
            latent_tile, latent_overlap, encoder_tile, decoder_tile, self.config)
        h, w = int(shape[0]) * scale, int(shape[1]) * scale
        f = self.vae.downscale
        ph, pw = -(-h // f) * f, -(-w // f) * f
        lh, lw = ph // f, pw // f
        steps = tiling.tile_count(ph, pw, encoder_tile, f) if _larger(ph, pw, encoder_tile) else 0
        steps += len(tiling.latent_tiles(lh, lw, latent_tile, latent_overlap)) if _larger(lh, lw, latent_tile) else 0
        steps += tiling.tile_count(lh, lw, decoder_tile, 1) if _larger(lh, lw, decoder_tile) else 0
        return steps

    def _unet_eps(self, z: np.ndarray, tile: Optional[int], overlap: int, progress) -> np.ndarray:
        n = z.shape[0]

        def run(batch: np.ndarray) -> np.ndarray:
            k = batch.shape[0]
            context = np.ascontiguousarray(np.broadcast_to(self.text_embedding, (k,) + self.text_embedding.shape))
            return self.unet(batch, self.timestep, context)

        if not _larger(z.shape[2], z.shape[3], tile):
            return run(z)
        tiles_per_batch = max(1, _LATENT_BATCH_PIXELS[self.unet.device] // (min(tile, z.shape[2]) * min(tile, z.shape[3]) * n))
        return tiling.unet_tiled(run, z, tile, overlap, tiles_per_batch, progress)

    def denoise(self, z: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """z_H from z_L and the UNet's prediction, coefficients in float64."""
        z64, eps64 = z.astype(np.float64), eps.astype(np.float64)
        if self.latent_formula == "residual":
            return (z64 - eps64).astype(np.float32)
        return ((z64 - self._eps_coefficient * eps64) / self._x0_divisor).astype(np.float32)

    def __repr__(self) -> str:
        return (f"Upscaler(timestep={self.timestep}, latent_formula={self.latent_formula!r}, "
                f"device={self.vae.device!r}, dtype={self.vae.dtype!r})")


def _report(progress, steps: int) -> None:
    if progress is not None:
        progress(steps)


def _larger(h: int, w: int, tile: Optional[int]) -> bool:
    """Whether a stage with this tile size tiles an h x w input."""
    return tile is not None and (h > tile or w > tile)


def _pad(x: np.ndarray, multiple: int):
    """Reflect-pads [N, H, W, C] at the bottom and right to multiples of multiple."""
    n, h, w, _ = x.shape
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
    return x, (h, w)

