"""D3SR's large-scale diffusion discriminator: SDXL's UNet trunk plus a patch head.

    z (SD 2.1 latents, scaled)  -> F(z, t) = sqrt(abar_t) z + sqrt(1 - abar_t) noise
    -> SDXL UNet conv_in, time and text_time embeddings, down blocks, mid block
       (conditioned on a fixed text embedding, pooled embedding and time_ids)
    -> per-location MLP -> logits [N, 1, h/4, w/4]: one score per 4x4 latent patch
       (32 x 32 pixels); positive means "real".
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _checks
from ._model import CoreModel
from ._native import _core
from ._checkpoint import HEAD_ACTIVATIONS, alphas_cumprod, checkpoint_path, read_discriminator_config
from ._lora import LoRA
from ._unet import UNet
from .images import as_image_batch
from ._vae import VAE
from ._weights import WeightFile, bf16_to_float32

PATCH = 4  # latent pixels per logit in each direction (SDXL's trunk downsamples twice)


class PatchHead(CoreModel):
    """The per-location MLP: features [N, C, h, w] -> logits [N, 1, h, w]."""

    def __init__(self, in_channels: int, hidden: int, activation: str = "silu", negative_slope: float = 0.2, *,
                 device: str = "cpu", dtype: Optional[str] = None):
        if activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"activation must be one of {HEAD_ACTIVATIONS}, not {activation!r}")
        dtype = _checks.device_and_dtype(device, dtype)
        self.in_channels, self.hidden, self.activation = in_channels, hidden, activation
        self._model = _core.head_create(in_channels, hidden, HEAD_ACTIVATIONS.index(activation), negative_slope,
                                        device, dtype)

    @classmethod
    def load(cls, path: str, activation: str = "silu", negative_slope: float = 0.2, *, device: str = "cpu",
             dtype: Optional[str] = None) -> "PatchHead":
        """A head from a .safetensors file with nn.Sequential's names ("0.weight", "0.bias", "2.weight", "2.bias")."""
        with WeightFile(path) as f:
            if "0.weight" not in f.keys():
                raise ValueError(f"{path}: expected the head's weights '0.weight', '0.bias', '2.weight', '2.bias', "
                                 f"found {f.keys()}")
            shape = f.shape("0.weight")
            if len(shape) not in (2, 4):
                raise ValueError(f"{path}: '0.weight' has shape {shape}; [hidden, in_channels] or "
                                 f"[hidden, in_channels, 1, 1] was expected")
            tensors = {}
            for key in f.keys():
                array, bf16 = f.get(key)
                tensors[key] = bf16_to_float32(array) if bf16 else array
        try:
            head = cls(shape[1], shape[0], activation, negative_slope, device=device, dtype=dtype)
            head.load_weights(tensors)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{path}: {e}") from None
        return head

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self._run(self._model.head_forward, features)


class Discriminator:
    """Scores SD 2.1 latents (or images, encoded first) patch by patch."""

    def __init__(self, trunk: UNet, head: PatchHead, conditioning: dict, config: dict, vae: Optional[VAE] = None):
        if not trunk.trunk_only:
            raise ValueError("the discriminator needs a trunk: UNet.load(..., trunk_only=True)")
        width = trunk.config["block_out_channels"][-1]
        if head.in_channels != width:
            raise ValueError(f"the head takes {head.in_channels} channels, the trunk's mid block gives {width}")
        self.trunk, self.head, self.vae, self.config = trunk, head, vae, config
        self.conditioning = conditioning
        self.scaling_factor = float(config["scaling_factor"])
        self.alphas_cumprod = alphas_cumprod(config["schedule"])

    @classmethod
    def load(cls, path: Optional[str] = None, *, device: str = "cpu", dtype: Optional[str] = None) -> "Discriminator":
        """Loads a discriminator checkpoint folder (see d3sr._checkpoint): only the
        trunk of its UNet is read; up blocks never reach memory. path None or "tiny":
        d3sr-tiny's discriminator, built into the package. dtype None: fp32 on
        the CPU, bf16 on CUDA."""
        dtype = _checks.device_and_dtype(device, dtype)
        path = checkpoint_path(path, "discriminator")
        config = read_discriminator_config(path)
        lora = LoRA.load(config["unet_lora"]) if config["unet_lora"] else None
        trunk = UNet.load(config["unet"], trunk_only=True, device=device, dtype=dtype, lora=lora)
        head = PatchHead.load(config["head"], config["head_activation"], config["head_negative_slope"],
                              device=device, dtype=dtype)
        vae = VAE.load(config["vae"], parts=("encoder",), device=device, dtype=dtype) if config["vae"] else None
        return cls(trunk, head, read_conditioning(config["conditioning"], trunk.config), config, vae)

    def noise(self, z: np.ndarray, t, noise: Optional[np.ndarray] = None, seed: Optional[int] = None) -> np.ndarray:
        """F(z, t) = sqrt(abar_t) z + sqrt(1 - abar_t) noise, coefficients in float64
        (diffusers' DDPMScheduler.add_noise). noise is given, or drawn from seed
        (a fresh generator when both are None)."""
        _checks.float32_array(z, "z", 4, "[N, 4, h, w]")
        t = _timesteps(t, z.shape[0])
        if noise is None:
            noise = np.random.default_rng(seed).standard_normal(z.shape, dtype=np.float32)
        elif seed is not None:
            raise ValueError("give noise or seed, not both")
        else:
            _checks.float32_array(noise, "noise", 4, "[N, 4, h, w]")
            if noise.shape != z.shape:
                raise ValueError(f"noise must have z's shape {z.shape}, got {noise.shape}")
        abar = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return (np.sqrt(abar) * z + np.sqrt(1.0 - abar) * noise).astype(np.float32)

    def features(self, z_t: np.ndarray, t) -> np.ndarray:
        """The trunk's mid-block features [N, C, h/4, w/4] of noised latents."""
        n = z_t.shape[0]
        c = self.conditioning
        context = np.ascontiguousarray(np.broadcast_to(c["prompt_embeds"], (n,) + c["prompt_embeds"].shape))
        extra = {}
        if "pooled_prompt_embeds" in c:
            extra = {"text_embeds": np.ascontiguousarray(np.broadcast_to(c["pooled_prompt_embeds"], (n, c["pooled_prompt_embeds"].size))),
                     "time_ids": np.ascontiguousarray(np.broadcast_to(c["time_ids"], (n, c["time_ids"].size)))}
        return self.trunk(z_t, _timesteps(t, n), context, **extra)

    def score_latents(self, z: np.ndarray, t, noise: Optional[np.ndarray] = None, seed: Optional[int] = None,
                      *, return_features: bool = False):
        """Logits [N, 1, h/4, w/4] for SD 2.1 latents z [N, 4, h, w] (already
        scaled), noised to timestep t (one int, or one per sample, in [0, 999])."""
        _checks.float32_array(z, "z", 4, "[N, 4, h, w]")
        if z.shape[2] % PATCH or z.shape[3] % PATCH:
            raise ValueError(f"z's height and width must be multiples of {PATCH} (each logit scores a "
                             f"{PATCH}x{PATCH} latent patch), got {z.shape[2]} x {z.shape[3]}")
        features = self.features(self.noise(z, t, noise, seed), t)
        logits = self.head(features)
        return (logits, features) if return_features else logits

    def score_real_fake(self, real: np.ndarray, fake: np.ndarray, t, noise: Optional[np.ndarray] = None,
                        seed: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Real and generated latents in one batched call: (real_logits, fake_logits).
        t is one integer or one per latent of [real | fake]; noise, if given,
        covers both: [len(real) + len(fake), 4, h, w]."""
        _checks.float32_array(real, "real", 4, "[N, 4, h, w]")
        _checks.float32_array(fake, "fake", 4, "[N, 4, h, w]")
        if real.shape[1:] != fake.shape[1:]:
            raise ValueError(f"real {real.shape} and fake {fake.shape} latents must have the same channels and size")
        logits = self.score_latents(np.concatenate([real, fake]), t, noise, seed)
        return logits[: len(real)], logits[len(real):]

    def score_images(self, images: np.ndarray, t, noise: Optional[np.ndarray] = None,
                     seed: Optional[int] = None) -> np.ndarray:
        """Logits for images H x W x 3 or N x H x W x 3 (uint8, or float32 in [0, 1]),
        encoded by the SD 2.1 VAE first; H and W multiples of 32."""
        if self.vae is None:
            raise ValueError("this discriminator has no VAE (set 'vae' in its d3sr.json) to encode images")
        batch, _, _ = as_image_batch(images)
        multiple = self.vae.downscale * PATCH
        if batch.shape[1] % multiple or batch.shape[2] % multiple:
            raise ValueError(f"image height and width must be multiples of {multiple}, got {batch.shape[1]} x {batch.shape[2]}")
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2) * 2 - 1, dtype=np.float32)
        z = self.vae.encode(x) * np.float32(self.scaling_factor)
        return self.score_latents(z, t, noise, seed)


def read_conditioning(path: str, unet_config: dict) -> dict:
    """The fixed SDXL conditioning: prompt_embeds [L, cross_attention_dim] and, for
    text_time UNets, pooled_prompt_embeds [P] and time_ids [T]."""
    needed = ["prompt_embeds"] + (["pooled_prompt_embeds", "time_ids"] if unet_config["text_time"] else [])
    with WeightFile(path) as f:
        missing = [k for k in needed if k not in f.keys()]
        if missing:
            raise ValueError(f"{path}: the conditioning lacks {missing}")
        tensors = {}
        for key in needed:
            array, bf16 = f.get(key)
            tensors[key] = bf16_to_float32(array) if bf16 else array.astype(np.float32)
    embeds = tensors["prompt_embeds"]
    embeds = embeds[0] if embeds.ndim == 3 and embeds.shape[0] == 1 else embeds  # [1, L, D] as diffusers returns it
    tensors["prompt_embeds"] = embeds
    if embeds.ndim != 2 or embeds.shape[1] != unet_config["cross_attention_dim"]:
        raise ValueError(f"{path}: prompt_embeds must be [L, {unet_config['cross_attention_dim']}], not {embeds.shape}")
    if unet_config["text_time"]:
        pooled, ids = tensors["pooled_prompt_embeds"].reshape(-1), tensors["time_ids"].reshape(-1)
        expected = unet_config["addition_input_dim"]
        if pooled.size + ids.size * unet_config["addition_time_embed_dim"] != expected:
            raise ValueError(f"{path}: pooled_prompt_embeds ({pooled.size}) and time_ids ({ids.size}) do not fill the "
                             f"UNet's {expected}-wide text_time input")
        tensors["pooled_prompt_embeds"], tensors["time_ids"] = pooled, ids
    return {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}


def _timesteps(t, n: int) -> np.ndarray:
    """One integer timestep per sample in [0, 999], as an int64 array."""
    array = np.asarray(t)
    if array.dtype.kind not in "iu":
        raise TypeError(f"t must be an integer or integers in [0, 999], not {array.dtype}")
    array = np.broadcast_to(array, (n,)) if array.ndim == 0 else array
    if array.shape != (n,):
        raise ValueError(f"t must be one integer or {n} (one per sample), got shape {array.shape}")
    if array.min() < 0 or array.max() > 999:
        raise ValueError(f"t must be in [0, 999], got {array.tolist()}")
    return array.astype(np.int64)


def init_head(in_channels: int, hidden: int, seed: int = 0) -> dict:
    """A fresh head as PyTorch initialises Conv2d (every weight and bias
    ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))), drawn from seed."""
    for name, value in (("in_channels", in_channels), ("hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 65536:
            raise ValueError(f"the head's {name} must be an integer in [1, 65536], not {value!r}")
    rng = np.random.default_rng(seed)

    def uniform(shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)

    return {"0.weight": uniform((hidden, in_channels, 1, 1), in_channels), "0.bias": uniform((hidden,), in_channels),
            "2.weight": uniform((1, hidden, 1, 1), hidden), "2.bias": uniform((1,), hidden)}
