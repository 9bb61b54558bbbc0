"""Trains d3sr-tiny, the small D3SR generator and discriminator shipped in
d3sr/models/tiny, from scratch on the photographs of tools/tiny/photos.tsv.

Needs PyTorch and diffusers (a separate environment: never a d3sr dependency)
and the photos (tools/tiny/get_photos.sh). The generator is diffusers'
AutoencoderKL and UNet2DConditionModel at small widths, run exactly as
d3sr.Upscaler runs it:

    LR -> PIL bicubic x4 in float32 (d3sr/images.py's own function) -> [-1, 1]
    -> z_L = VAE encoder posterior mean x scaling_factor
    -> eps = UNet(z_L, T_L, a learned text embedding, frozen at export)
    -> z_H = (z_L - sqrt(1 - abar) eps) / sqrt(abar)      (D3SR eq. 1)
    -> VAE decoder (clamped to [-1, 1] at inference)

The discriminator is D3SR's: an SDXL-layout UNet trunk (down and mid blocks,
text_time conditioning fixed) plus a 1x1 patch head, scoring noised latents
F(z, t) = sqrt(abar_t) z + sqrt(1 - abar_t) n at random t < T_MAX; real latents
are the encoder's of the HR crop.

Two stages, because a 2-core machine gives about an hour (a few hundred steps):
1. fit_linear_path: six 3x3 kernels of a linear x4 upsampler with the VAE's
   own layout, fitted to the training crops (seconds); init_passthrough then
   builds the VAE around them (main path linear, residual branches zero, the
   UNet's output zero), so the generator starts a little above bicubic;
2. the D3SR losses on random crops (most textured of three), Adam, EMA:
    generator: L1(CF(SR), HR) + w_edge L1(|Sobel CF(SR)|, |Sobel HR|)  (pixel + edge-aware)
             + w_low L1(mean4x4(SR), mean4x4(HR))                     (colour: the raw output too)
             + w_rec [L1 + w_edge Sobel L1](D(E(HR)), HR)             (the VAE stays an autoencoder)
             + w_adv softplus(-D(F(z_H, t)))                          (after ADV_START of the steps)
    discriminator: softplus(-D(F(E(HR), t))) + softplus(D(F(z_H, t)))
                   (+ the bicubic latents z_L as fakes too: blur is what it must learn to see)
   The VAE layers of the linear main path stay frozen (FROZEN says why).
   CF is StableSR's wavelet colour fix against the bicubic input (--color-fix wavelet:
   SR's high frequencies over the input's low ones), which the exported d3sr.json names
   as the model's default, so the loss scores what Upscaler.upscale returns. Without it
   the generator drifted in colour and brightness on whole photos (mean offsets up to
   0.7 levels, a low-pass error 8-20 dB above bicubic's) and lost to bicubic.

Recipes and checkpoints are chosen on the validation split of photos.tsv (whole photos,
validate()); the held-out split is only scored, by tools/tiny/evaluate.py.

EA-DISTS needs ImageNet VGG weights, which cannot be had offline; the
edge-aware term here is the L1 distance of Sobel gradient magnitudes (the
edge map EA-DISTS compares), on every colour channel.

    python tools/train_tiny.py --work WORKDIR --seed 0                 # the shipped model: the defaults
    python tools/train_tiny.py --work WORKDIR --export d3sr/models/tiny [--checkpoint WORKDIR/ema_000600.pt]
"""
from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import math
import os
import sys
import time

import numpy as np

# Under a shared CPU, OpenMP threads that spin while waiting for a descheduled
# sibling made each step 4x slower than one thread (measured); sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_module(name: str, relative: str):
    """A NumPy-only d3sr module, imported by file (d3sr itself needs its C core built)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


images = _load_module("d3sr_images", "d3sr/images.py")  # the Upscaler's bicubic, bit for bit
photos = _load_module("tiny_photos", "tools/tiny/photos.py")
read_photo_list, load_photo, load_hr = photos.read_photo_list, photos.load_photo, photos.load_hr
# the SDXL trunk as the reference script runs it (down and mid blocks)
sdxl_trunk = _load_module("make_references", "tools/make_references.py").sdxl_trunk

SCALE = 4
TIMESTEP = 399           # T_L: d3sr's default (D3SR does not publish its own)
SCALING_FACTOR = 1.0     # the latents start at the image's scale (init_passthrough): no rescaling needed
CONTEXT_LEN = 8          # tokens of the fixed text embedding

# x4 VAE (three levels) with 16 latent channels: 16 numbers per 4x4x3 = 48 HR values, five
# times what the LR image holds per patch (3). Full-resolution widths stay at 8 and 16 because
# the encoder's first and the decoder's last layers run at the output size (256 -> 1024 speed).
# No mid-block attention: at 1024x1024 output it would attend over 65,536 latent pixels.
VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "block_out_channels": [8, 16, 32], "layers_per_block": 1, "norm_num_groups": 1,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "mid_block_add_attention": False, "scaling_factor": SCALING_FACTOR,
}
# The UNet carries the capacity; attention only at 1/32 of the output size (and in the mid block).
UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "in_channels": 16, "out_channels": 16, "block_out_channels": [16, 32, 64, 128],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1, "transformer_layers_per_block": 1, "attention_head_dim": [2, 2, 2, 4],
    "cross_attention_dim": 64, "norm_num_groups": 4, "use_linear_projection": True,
}
# D3SR's discriminator trunk at small scale: SDXL's layout (text_time conditioning,
# DownBlock2D then two CrossAttnDownBlock2D, so two downsamplings: one logit per 4x4 latent patch).
DISC_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "in_channels": 16, "out_channels": 16, "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1, "transformer_layers_per_block": 1, "attention_head_dim": [2, 2, 4],
    "cross_attention_dim": 32, "norm_num_groups": 8, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 16 + 6 * 8,
}
HEAD_HIDDEN = 32
# The Upscaler's default tiles for d3sr-tiny (written into d3sr.json): OSEDiff's (96, 32, 1024,
# 224) are sized for SD's memory, and its x4 VAE makes them half the pixels they are for SD. At
# 256 -> 1024 they cut the UNet into 16 tiles and the decoder into 4 and doubled the time (3.0 s
# against 1.4 s untiled, 2 threads), for a model that peaks at 0.36 GB untiled at that size.
TILES = {"latent_tile": 256, "latent_overlap": 64, "encoder_tile": 2048, "decoder_tile": 512}

WARMUP = 20              # steps of linear learning-rate warm-up: larger first steps wrecked init_passthrough
ADV_START = 0.25         # fraction of the steps before the adversarial term starts
T_MAX = 750              # discriminator timesteps t ~ U[0, T_MAX): above, F(z, t) is nearly all noise


# read_photo_list, load_photo, load_hr: tools/tiny/photos.py, shared with tools/tiny/evaluate.py


def downscale(hr: np.ndarray) -> np.ndarray:
    """The LR image: PIL bicubic x4 downscaling of uint8 HR (sides multiples of 4)."""
    h, w = hr.shape[:2]
    return np.asarray(Image.fromarray(hr).resize((w // SCALE, h // SCALE), Image.BICUBIC))


def upsample(lr: np.ndarray) -> np.ndarray:
    """What the Upscaler feeds the encoder: [N, 3, H, W] float32 in [-1, 1]."""
    up = images.bicubic(lr.astype(np.float32) / 255, SCALE)
    return np.ascontiguousarray(up.transpose(0, 3, 1, 2) * 2 - 1)


class Crops:
    """Random HR crops (flips, 90-degree turns) with their LR and bicubic inputs."""

    def __init__(self, photos, crop: int, seed: int, candidates: int):
        self.photos, self.crop, self.candidates = photos, crop, candidates
        areas = np.array([p.shape[0] * p.shape[1] for p in photos], np.float64)
        self.weights = areas / areas.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int):
        hrs = []
        for _ in range(n):
            # of `candidates` random crops the most textured (1: uniform crops)
            candidates = []
            for _ in range(self.candidates):
                photo = self.photos[self.rng.choice(len(self.photos), p=self.weights)]
                y = self.rng.integers(0, photo.shape[0] - self.crop + 1)
                x = self.rng.integers(0, photo.shape[1] - self.crop + 1)
                candidates.append(photo[y:y + self.crop, x:x + self.crop])
            hr = max(candidates, key=texture)
            hr = np.rot90(hr, self.rng.integers(4))
            if self.rng.integers(2):
                hr = hr[:, ::-1]
            hrs.append(np.ascontiguousarray(hr))
        hr = np.stack(hrs)
        lr = np.stack([downscale(h) for h in hrs])
        return hr, lr


def texture(hr: np.ndarray) -> float:
    """Mean absolute horizontal and vertical difference of a uint8 crop."""
    a = hr.astype(np.float32)
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


WAVELET_KERNEL = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0])) / 16


def wavelet_low(x: torch.Tensor) -> torch.Tensor:
    """The low-frequency part of StableSR's wavelet colour fix, as d3sr's color_fix='wavelet'
    computes it: five 3x3 binomial blurs with dilation 1, 2, 4, 8, 16 (replicate padding)."""
    kernel = WAVELET_KERNEL.to(x.dtype).expand(x.shape[1], 1, 3, 3)
    for r in (1, 2, 4, 8, 16):
        x = F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), kernel, dilation=r, groups=x.shape[1])
    return x


def color_fixed(sr: torch.Tensor, up: torch.Tensor, color_fix: str) -> torch.Tensor:
    """SR as the Upscaler returns it with this colour fix ('none' or 'wavelet'), unclamped:
    with 'wavelet', SR's high frequencies over the bicubic input up's low ones."""
    return sr - wavelet_low(sr) + wavelet_low(up) if color_fix == "wavelet" else sr


def to_tensor(hr_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(hr_uint8.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1)


def abar_table() -> np.ndarray:
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1 - betas)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|Sobel gradient| of every channel of [N, C, H, W] (replicate padding)."""
    kx = torch.tensor([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=x.dtype) / 4
    k = torch.stack([kx, kx.t()])[:, None].repeat(x.shape[1], 1, 1, 1)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])
    g = g.view(x.shape[0], x.shape[1], 2, *x.shape[2:])
    return torch.sqrt(g.pow(2).sum(2) + 1e-6)


CONSTANT = 32.0  # the constant feature channel of init_passthrough
DETAIL_GAIN = 4.0  # latent detail channels: luma high-pass and differences of photos are about +-0.1
# The VAE's main path as init_passthrough sets it stays fixed: these layers read the constant
# channel (or GroupNorm's +12 offset) directly, so each Adam step on them moved the output by
# 32x (12x) the step and training diverged (measured: L1 0.08 -> 0.23 in 40 steps). The VAE
# learns in its residual branches (ResNet norm1/conv1/norm2/conv2, which read normalised
# features), as the UNet learns everywhere.
FROZEN = ("encoder.conv_in.", "encoder.conv_norm_out.", "encoder.conv_out.", "quant_conv.", "post_quant_conv.",
          "decoder.conv_in.", "decoder.conv_norm_out.", "decoder.conv_out.", "encoder.down_blocks.0.downsamplers.",
          "encoder.down_blocks.1.downsamplers.", "decoder.up_blocks.0.upsamplers.", "decoder.up_blocks.1.upsamplers.")


def _depthwise(x, kernel, stride=1, padding=1):
    c = x.shape[1]
    return F.conv2d(x, kernel.expand(c, 1, 3, 3), stride=stride, padding=padding, groups=c)


def linear_path(up, kernels):
    """The VAE's main path as init_passthrough builds it, on the colour channels alone:
    encoder conv_in, the two stride-2 downsamplers (pad at the bottom and right), decoder
    conv_in, the two nearest x2 + conv upsamplers; one 3x3 kernel each, shared by R, G, B."""
    k_in, k_down1, k_down2, k_dec, k_up1, k_up2 = kernels
    y = _depthwise(up, k_in)
    y = _depthwise(F.pad(y, (0, 1, 0, 1)), k_down1, 2, 0)
    y = _depthwise(F.pad(y, (0, 1, 0, 1)), k_down2, 2, 0)
    h = _depthwise(y, k_dec)
    h = _depthwise(F.interpolate(h, scale_factor=2, mode="nearest"), k_up1)
    return _depthwise(F.interpolate(h, scale_factor=2, mode="nearest"), k_up2)


def fit_linear_path(photos, seed: int, candidates: int, steps: int = 1200):
    """Stage 1: the six 3x3 kernels of linear_path fitted (Adam, MSE away from the border) to
    map the bicubic input to the HR crop on training crops, starting from identity, 2x2 box
    and bilinear tent kernels. Returns them and the PSNR (RGB) of the fit and of bicubic."""
    crops = Crops(photos, 64, seed + 2, candidates)
    batches = []
    for _ in range(8):
        hr, lr = crops.batch(16)
        batches.append((to_tensor(hr), torch.from_numpy(upsample(lr))))
    eye = torch.zeros(1, 1, 3, 3)
    eye[0, 0, 1, 1] = 1
    box = torch.zeros(1, 1, 3, 3)
    box[0, 0, :2, :2] = 0.25
    tent = (torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0])) / 16)[None, None]
    kernels = [k.clone().requires_grad_(True) for k in (eye, box, box, eye, tent, tent)]
    opt = torch.optim.Adam(kernels, lr=0.003)
    inner = lambda t: t[..., 8:-8, 8:-8]
    for step in range(steps):
        hr, up = batches[step % len(batches)]
        loss = F.mse_loss(inner(linear_path(up, kernels)), inner(hr))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fit = np.mean([F.mse_loss(inner(linear_path(up, kernels)), inner(hr)).item() for hr, up in batches])
        bic = np.mean([F.mse_loss(inner(up), inner(hr)).item() for hr, up in batches])
    return [k.detach() for k in kernels], 10 * np.log10(4 / fit), 10 * np.log10(4 / bic)


@torch.no_grad()
def init_passthrough(vae, unet, kernels) -> None:
    """Starts the generator at a fitted linear x4 upsampler instead of noise, so that the
    short training run refines a working model rather than discovering one.

    A from-scratch VAE of this size barely learned to carry colour in the time we have
    (GroupNorm removes each crop's mean and scale at every level). Here the VAE starts
    linear on its main path: every residual branch is zero (conv2 = 0: each ResNet block is
    the identity); the colour channels 0-2 go through linear_path's kernels (encoder conv_in,
    the downsamplers, decoder conv_in, the upsamplers); channel 3 carries a large constant,
    so that GroupNorm (one group) divides by nearly the same number for every image, and
    the SiLU after the last GroupNorms runs where it is linear (bias 12): the output layers
    undo both. The UNet's conv_out is zero (eps = 0): z_H = z_L / sqrt(abar), which the
    decoder's last GroupNorm makes no difference to. Training grows the residual branches
    and the UNet from there."""
    k_in, k_down1, k_down2, k_dec, k_up1, k_up2 = kernels
    for model in (vae, unet):
        for name, module in model.named_modules():
            if name.endswith(".conv2") and "resnets" in name:
                module.weight.zero_(); module.bias.zero_()
    # Each VAE residual branch starts from GroupNorm of [c0, c1, c2, K, 0, ...]: rescale and
    # recentre the colour channels to the image's own scale and drop the constant, so the
    # branch's SiLUs see O(1) inputs (with the constant dominating, they were near-linear and
    # the branches learned slowly: +0.16 dB in 125 steps, measured).
    for name, module in vae.named_modules():
        if name.endswith(".norm1") and "resnets" in name:
            n = module.num_channels
            module.weight.zero_(); module.bias.zero_()
            module.weight[:3] = CONSTANT * math.sqrt(n - 1) / n
            module.bias[:3] = CONSTANT / n

    def identity(conv, channels, value=1.0):
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
        k = conv.weight.shape[-1] // 2
        for c in channels:
            conv.weight[c, c, k, k] = value

    def colour_kernel(conv, kernel):
        for c in range(3):
            conv.weight[c, c] = kernel[0, 0]

    enc, dec = vae.encoder, vae.decoder
    identity(enc.conv_in, [])
    colour_kernel(enc.conv_in, k_in)
    enc.conv_in.bias[3] = CONSTANT
    # Detail channels for the discriminator: latents that hold only the blurred colour would
    # look the same for a photo and its bicubic upsampling. Channels 4-6 at full resolution:
    # the luma's high-pass (identity minus the tent) and its x and y differences; the
    # downsamplers keep several 2x2 phases of them, so latent channels 4-15 carry the HR
    # detail of each 4x4 patch (and the decoder does not read them at the start).
    luma = torch.tensor([0.299, 0.587, 0.114])
    tent = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0])) / 16
    high_pass = -tent
    high_pass[1, 1] += 1
    dx = torch.tensor([[0.0, 0.0, 0.0], [-0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])
    for c in range(3):
        enc.conv_in.weight[4, c] = luma[c] * high_pass
        enc.conv_in.weight[5, c] = luma[c] * dx
        enc.conv_in.weight[6, c] = luma[c] * dx.t()
    phases = {0: [(4, 4, (0, 0)), (5, 4, (1, 1)), (6, 5, (0, 0)), (7, 6, (0, 0))],
              1: [(o + 4 * k, o, tap) for k, tap in enumerate(((0, 0), (1, 1), (0, 1))) for o in range(4, 8)]}
    for level, (block, kernel) in enumerate(zip(enc.down_blocks, (k_down1, k_down2, None))):
        for resnet in block.resnets:
            if resnet.conv_shortcut is not None:
                identity(resnet.conv_shortcut, range(min(resnet.conv_shortcut.weight.shape[:2])))
        for down in block.downsamplers or []:
            down.conv.weight.zero_(); down.conv.bias.zero_()
            down.conv.weight[3, 3, :2, :2] = 0.25     # the constant: a 2x2 box never reads the padding
            colour_kernel(down.conv, kernel)
            for out, src, (ty, tx) in phases[level]:
                down.conv.weight[out, src, ty, tx] = 1.0
    n = enc.conv_norm_out.num_channels                 # features [c0, c1, c2, K, 0, ...]
    sigma = CONSTANT * math.sqrt(n - 1) / n            # GroupNorm's std of them, for any image
    enc.conv_norm_out.weight.fill_(1.0); enc.conv_norm_out.bias.fill_(12.0)
    enc.conv_out.weight.zero_(); enc.conv_out.bias.zero_()
    for c in range(3):                                 # minus a zero channel: GroupNorm's mean and SiLU's bias cancel
        enc.conv_out.weight[c, c, 1, 1], enc.conv_out.weight[c, n - 1, 1, 1] = sigma, -sigma
    enc.conv_out.weight[3, 3, 1, 1], enc.conv_out.weight[3, n - 1, 1, 1] = sigma / CONSTANT, -sigma / CONSTANT
    for c in range(4, 16):                             # the detail, amplified to about unit scale
        enc.conv_out.weight[c, c, 1, 1], enc.conv_out.weight[c, n - 1, 1, 1] = DETAIL_GAIN * sigma, -DETAIL_GAIN * sigma
    identity(vae.quant_conv, range(vae.quant_conv.weight.shape[0]))
    identity(vae.post_quant_conv, range(vae.post_quant_conv.weight.shape[0]))
    identity(dec.conv_in, [])
    colour_kernel(dec.conv_in, k_dec)
    dec.conv_in.weight[3, 3, 1, 1] = CONSTANT
    for block, kernel in zip(dec.up_blocks, (k_up1, k_up2, None)):
        for resnet in block.resnets:
            if resnet.conv_shortcut is not None:
                identity(resnet.conv_shortcut, range(4))
        for up in block.upsamplers or []:
            identity(up.conv, [3])
            colour_kernel(up.conv, kernel)
    n = dec.conv_norm_out.num_channels
    sigma = CONSTANT * math.sqrt(n - 1) / n
    dec.conv_norm_out.weight.fill_(1.0); dec.conv_norm_out.bias.fill_(12.0)
    dec.conv_out.weight.zero_(); dec.conv_out.bias.zero_()
    for c in range(3):
        dec.conv_out.weight[c, c, 1, 1], dec.conv_out.weight[c, n - 1, 1, 1] = sigma, -sigma
    unet.conv_out.weight.zero_(); unet.conv_out.bias.zero_()


class Models(torch.nn.Module):
    def __init__(self, seed: int, kernels):
        super().__init__()
        from diffusers import AutoencoderKL, UNet2DConditionModel

        torch.manual_seed(seed)
        strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}
        self.vae = AutoencoderKL(**strip(VAE_CONFIG))
        self.unet = UNet2DConditionModel(**strip(UNET_CONFIG))
        init_passthrough(self.vae, self.unet, kernels)
        for name, param in self.vae.named_parameters():
            param.requires_grad_(not name.startswith(FROZEN) and ".conv_shortcut." not in name)
        self.text_embedding = torch.nn.Parameter(torch.randn(CONTEXT_LEN, UNET_CONFIG["cross_attention_dim"]))
        self.disc = UNet2DConditionModel(**strip(DISC_CONFIG))
        self.head = torch.nn.Sequential(torch.nn.Conv2d(DISC_CONFIG["block_out_channels"][-1], HEAD_HIDDEN, 1),
                                        torch.nn.SiLU(), torch.nn.Conv2d(HEAD_HIDDEN, 1, 1))
        rng = np.random.default_rng(seed + 1)  # the discriminator's fixed SDXL conditioning
        self.register_buffer("prompt_embeds", torch.from_numpy(
            rng.standard_normal((CONTEXT_LEN, DISC_CONFIG["cross_attention_dim"])).astype(np.float32)))
        self.register_buffer("pooled_prompt_embeds", torch.from_numpy(rng.standard_normal(16).astype(np.float32)))
        self.register_buffer("time_ids", torch.tensor([1024, 1024, 0, 0, 1024, 1024], dtype=torch.float32))
        abar = abar_table()
        self.register_buffer("abar", torch.from_numpy(abar).float())
        self.eps_coefficient = float(np.sqrt(1 - abar[TIMESTEP]))
        self.x0_divisor = float(np.sqrt(abar[TIMESTEP]))

    def generator_parameters(self):
        """What the generator trains: the VAE's residual branches, the whole UNet, the text embedding."""
        vae = [p for n, p in self.vae.named_parameters() if not n.startswith(FROZEN) and ".conv_shortcut." not in n]
        return vae + list(self.unet.parameters()) + [self.text_embedding]

    def discriminator_parameters(self):
        trunk = [p for n, p in self.disc.named_parameters() if not n.startswith(("up_blocks.", "conv_norm_out.", "conv_out."))]
        return trunk + list(self.head.parameters())

    def encode(self, x):
        return self.vae.encode(x).latent_dist.mean * SCALING_FACTOR

    def generate(self, up):
        """(z_L, z_H, SR unclamped) for bicubic inputs up [N, 3, H, W] in [-1, 1]."""
        z_l = self.encode(up)
        context = self.text_embedding[None].expand(len(up), -1, -1)
        eps = self.unet(z_l, torch.full((len(up),), TIMESTEP), encoder_hidden_states=context).sample
        z_h = (z_l - self.eps_coefficient * eps) / self.x0_divisor
        return z_l, z_h, self.vae.decode(z_h / SCALING_FACTOR).sample

    def score(self, z, t, noise):
        """Logits of latents z noised to timesteps t."""
        abar = self.abar[t].view(-1, 1, 1, 1)
        z_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
        n = len(z)
        features = sdxl_trunk(self.disc, z_t, t, self.prompt_embeds[None].expand(n, -1, -1),
                              self.pooled_prompt_embeds[None].expand(n, -1), self.time_ids[None].expand(n, -1))
        return self.head(features)


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop: int = 4) -> float:
    """PSNR on BT.601 Y (pyiqa's convention) of uint8 [H, W, 3] images: for the training log."""
    def y(a):
        a = a.astype(np.float64) / 255
        return (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2] + 16) / 255
    d = (y(sr) - y(hr))[crop:-crop, crop:-crop]
    return float(10 * np.log10(1 / np.mean(d ** 2)))


def textured_crops(photo: np.ndarray, size: int, count: int):
    """The count most textured size x size tiles of a photo's grid (deterministic; the test crops)."""
    h, w = photo.shape[:2]
    tiles = [photo[y:y + size, x:x + size] for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
    return sorted(tiles, key=texture, reverse=True)[:count]


def validation_set():
    """The whole photos of the validation split (tools/tiny/photos.tsv), cropped to multiples
    of 4: checkpoints and recipes are chosen on these, never on the held-out photos."""
    hrs = [load_hr(path) for path in read_photo_list("validation")]
    return hrs, [downscale(h) for h in hrs]


@torch.no_grad()
def validate(models, hrs, lrs, color_fix: str):
    """Mean PSNR (Y, crop 4) of the generator (after its colour fix) and of bicubic over the
    validation photos, each run whole as evaluate.py runs the held-out ones (GroupNorm sees
    the whole image)."""
    scores = []
    for hr, lr in zip(hrs, lrs):
        up = upsample(lr[None])
        _, _, sr = models.generate(torch.from_numpy(up))
        sr = color_fixed(sr, torch.from_numpy(up), color_fix)
        sr = np.round((sr.clamp(-1, 1)[0].numpy().transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        bic = np.round((up[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        scores.append((psnr_y(sr, hr), psnr_y(bic, hr)))
    return tuple(float(v) for v in np.mean(scores, axis=0))


def train(args) -> None:
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    photos = [load_photo(p) for p in read_photo_list("train")]
    print(f"{len(photos)} training photos loaded in {time.time() - t0:.0f} s", flush=True)
    val_hr, val_lr = validation_set()
    crops = Crops(photos, args.crop, args.seed, args.candidates)
    resume = os.path.join(args.work, "last.pt")
    resuming = os.path.exists(resume) and not args.fresh
    torch.manual_seed(args.seed)
    if resuming:  # every weight comes from the checkpoint
        kernels = [torch.zeros(1, 1, 3, 3)] * 6
    else:
        start = time.time()
        kernels, fit_psnr, bicubic_psnr = fit_linear_path(photos, args.seed, args.candidates)
        print(f"stage 1: linear path fitted in {time.time() - start:.0f} s: {fit_psnr:.2f} dB RGB on its crops "
              f"(bicubic {bicubic_psnr:.2f} dB)", flush=True)
    models = Models(args.seed, kernels)
    ema = copy.deepcopy(models).requires_grad_(False)
    opt_g = torch.optim.AdamW(models.generator_parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    opt_d = torch.optim.AdamW(models.discriminator_parameters(), lr=args.lr, betas=(0.5, 0.99), weight_decay=0.0)
    step, history = 0, []
    if resuming:
        state = torch.load(resume, weights_only=False)
        models.load_state_dict(state["models"]); ema.load_state_dict(state["ema"])
        opt_g.load_state_dict(state["opt_g"]); opt_d.load_state_dict(state["opt_d"])
        step, history = state["step"], state["history"]
        crops.rng = state["rng"]
        print(f"resumed at step {step}", flush=True)
    torch.manual_seed(args.seed + step)
    if step == 0:
        start_scores = validate(ema, val_hr, val_lr, args.color_fix)
        print("validation PSNR of the starting point, model and bicubic: %.3f %.3f" % start_scores, flush=True)
    log = open(os.path.join(args.work, "log.csv"), "a", newline="")
    writer = csv.writer(log)
    t_start = time.time()
    while step < args.steps:
        lr = args.lr * min(1.0, (step + 1) / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        hr_np, lr_np = crops.batch(args.batch)
        hr, up = to_tensor(hr_np), torch.from_numpy(upsample(lr_np))
        adversarial = step >= ADV_START * args.steps

        # generator step
        models.disc.requires_grad_(False); models.head.requires_grad_(False)
        z_l, z_h, sr = models.generate(up)
        z_r = models.encode(hr)
        rec = models.vae.decode(z_r / SCALING_FACTOR).sample
        edges_hr = sobel_magnitude(hr)
        # With --color-fix wavelet the pixel and edge terms score what the Upscaler returns with
        # color_fix="wavelet": the generator's high frequencies over the bicubic input's low ones.
        fixed = color_fixed(sr, up, args.color_fix)
        loss_pix = F.l1_loss(fixed, hr)
        loss_edge = F.l1_loss(sobel_magnitude(fixed), edges_hr)
        loss_rec = F.l1_loss(rec, hr) + args.w_edge * F.l1_loss(sobel_magnitude(rec), edges_hr)
        t = torch.randint(0, T_MAX, (args.batch,))
        loss_adv = F.softplus(-models.score(z_h, t, torch.randn_like(z_h))).mean() if adversarial else torch.zeros(())
        loss_low = F.l1_loss(F.avg_pool2d(sr, SCALE), F.avg_pool2d(hr, SCALE))
        loss_g = (loss_pix + args.w_edge * loss_edge + args.w_low * loss_low + args.w_rec * loss_rec
                  + args.w_adv * loss_adv)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(models.generator_parameters(), 1.0)
        opt_g.step()

        # discriminator steps: real E(HR), fake z_H and (a clear "blurry" example) the bicubic
        # latents z_L; each of the --d-steps draws new timesteps and noise for the same latents
        # (the trunk works on 1/4-size latents: a step costs a fraction of the generator's)
        models.disc.requires_grad_(True); models.head.requires_grad_(True)
        real, fake = z_r.detach(), torch.cat([z_h.detach(), z_l.detach()])
        z_all = torch.cat([real, fake])
        for _ in range(args.d_steps):
            t = torch.randint(0, T_MAX, (len(z_all),))
            logits = models.score(z_all, t, torch.randn_like(z_all))
            loss_d = F.softplus(-logits[:len(real)]).mean() + F.softplus(logits[len(real):]).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            torch.nn.utils.clip_grad_norm_(models.discriminator_parameters(), 1.0)
            opt_d.step()

        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), models.parameters()):
                e.lerp_(p, 1 - decay)
        step += 1
        row = [step, round(time.time() - t_start, 1), lr] + [round(float(v.detach()), 5) for v in
                                                             (loss_pix, loss_edge, loss_low, loss_rec, loss_adv, loss_d)]
        val = ["", ""]
        if step % args.validate_every == 0 or step == args.steps:
            val = [round(v, 3) for v in validate(ema, val_hr, val_lr, args.color_fix)]
        writer.writerow(row + val)
        log.flush()
        history.append(row + val)
        if step % 10 == 0 or val[0] != "":
            print(" ".join(map(str, row + val)), flush=True)
        if step % args.save_every == 0 or step == args.steps:
            state = {"models": models.state_dict(), "ema": ema.state_dict(), "opt_g": opt_g.state_dict(),
                     "opt_d": opt_d.state_dict(), "step": step, "history": history, "rng": crops.rng,
                     "args": vars(args)}
            torch.save(state, os.path.join(args.work, "last.tmp"))
            os.replace(os.path.join(args.work, "last.tmp"), resume)
            torch.save({"ema": ema.state_dict(), "step": step, "color_fix": args.color_fix},
                       os.path.join(args.work, f"ema_{step:06d}.pt"))
    log.close()


# ---- export -------------------------------------------------------------------

def _save_model(folder: str, config: dict, state: dict) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}
    save_file(tensors, os.path.join(folder, "diffusion_pytorch_model.fp16.safetensors"))


def export(checkpoint: str, out: str, color_fix: str) -> None:
    """Writes the EMA weights of a checkpoint as d3sr checkpoint folders (fp16). The generator's
    d3sr.json names the colour fix it was trained to be scored with (the checkpoint's own record,
    else color_fix), so Upscaler.upscale applies it by default."""
    from safetensors.torch import save_file

    state = torch.load(checkpoint, weights_only=False)
    color_fix = state.get("color_fix", state.get("args", {}).get("color_fix", color_fix))
    ema = state["ema"]
    part = lambda prefix: {k[len(prefix):]: v for k, v in ema.items() if k.startswith(prefix)}
    gen, disc = os.path.join(out, "generator"), os.path.join(out, "discriminator")
    _save_model(os.path.join(gen, "vae"), VAE_CONFIG, part("vae."))
    _save_model(os.path.join(gen, "unet"), UNET_CONFIG, part("unet."))
    save_file({"prompt_embeds": ema["text_embedding"].to(torch.float16).contiguous()},
              os.path.join(gen, "text_embedding.safetensors"))
    with open(os.path.join(gen, "d3sr.json"), "w") as f:
        json.dump({"type": "generator", "timestep": TIMESTEP, "latent_formula": "epsilon",
                   "scaling_factor": SCALING_FACTOR, "color_fix": None if color_fix == "none" else color_fix,
                   **TILES}, f, indent=2)
        f.write("\n")
    _save_model(os.path.join(disc, "unet"), DISC_CONFIG, part("disc."))
    save_file({k: v.to(torch.float16).contiguous() for k, v in part("head.").items()},
              os.path.join(disc, "head.safetensors"))
    save_file({k: ema[k].to(torch.float16).contiguous() for k in ("prompt_embeds", "pooled_prompt_embeds", "time_ids")},
              os.path.join(disc, "conditioning.safetensors"))
    with open(os.path.join(disc, "d3sr.json"), "w") as f:
        json.dump({"type": "discriminator", "head_activation": "silu", "scaling_factor": SCALING_FACTOR,
                   "vae": "../generator/vae"}, f, indent=2)
        f.write("\n")
    print(f"exported step {state['step']} of {checkpoint} to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for checkpoints and the log (outside the repo)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64, help="HR crop side (a multiple of 32)")
    parser.add_argument("--candidates", type=int, default=3,
                        help="each crop is the most textured of this many random ones (1: uniform crops)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--w-edge", type=float, default=0.1, help="weight of the Sobel edge term")
    parser.add_argument("--w-low", type=float, default=1.0,
                        help="weight of the L1 distance of 4x4 means of SR and HR (colour and low frequencies)")
    parser.add_argument("--color-fix", choices=["none", "wavelet"], default="wavelet",
                        help="score the generator's output after this colour fix (the model's d3sr.json default)")
    parser.add_argument("--w-rec", type=float, default=0.1, help="weight of the VAE's HR reconstruction loss")
    parser.add_argument("--w-adv", type=float, default=0.0005, help="weight of the adversarial loss")
    parser.add_argument("--d-steps", type=int, default=1, help="discriminator steps per generator step")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the result depends on it)")
    parser.add_argument("--validate-every", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--fresh", action="store_true", help="ignore WORK/last.pt")
    parser.add_argument("--export", help="write the d3sr checkpoint folders here instead of training")
    parser.add_argument("--checkpoint", help="with --export: the checkpoint (default WORK/last.pt)")
    args = parser.parse_args()
    if args.export:
        export(args.checkpoint or os.path.join(args.work, "last.pt"), args.export, args.color_fix)
    else:
        train(args)


if __name__ == "__main__":
    sys.exit(main())
