"""Reference tensors for the tiled generator (tests/data/tiling/reference.safetensors).

Needs torch and diffusers, like tools/make_references.py (whose small models
it loads); run it from the repository root after that script:

    python tools/make_tiling_references.py

- latent tiling: OSEDiff's tiled UNet call (its grid: square tiles every
  tile - overlap, the last flush with the edge; its Gaussian weights, var 0.01
  of the tile, centred at (w - 1) / 2 across and h / 2 down), on the small
  SD 2.x-like UNet;
- GroupNorm: torch's GroupNorm of a whole tensor, which the tiled layer must
  reproduce from tile statistics;
- colour fix: StableSR's adain and wavelet corrections, written in PyTorch
  from their formulas (float32).
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_references as refs  # noqa: E402

OUT = os.path.join(refs.DATA, "tiling")
LATENT = dict(shape=(1, 4, 40, 56), tile=24, overlap=8, timestep=399)


def osediff_weights(tile: int) -> torch.Tensor:
    var = 0.01
    xs = torch.arange(tile, dtype=torch.float64)
    across = torch.exp(-(xs - (tile - 1) / 2) ** 2 / (tile * tile) / (2 * var)) / np.sqrt(2 * np.pi * var)
    down = torch.exp(-(xs - tile / 2) ** 2 / (tile * tile) / (2 * var)) / np.sqrt(2 * np.pi * var)
    return torch.outer(down, across).float()


def osediff_offsets(size: int, tile: int, overlap: int) -> list:
    count, end = 0, 0
    while end < size:
        end = max(count * tile - overlap * count, 0) + tile
        count += 1
    return [size - tile if i == count - 1 else max(i * tile - overlap * i, 0) for i in range(count)]


def osediff_tiled_unet(unet, z: torch.Tensor, t: int, context: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    _, _, h, w = z.shape
    tile = min(tile, h, w)
    weights = osediff_weights(tile)
    total, contributors = torch.zeros_like(z), torch.zeros_like(z)
    for y in osediff_offsets(h, tile, overlap):
        for x in osediff_offsets(w, tile, overlap):
            eps = unet(z[:, :, y:y + tile, x:x + tile], t, encoder_hidden_states=context).sample
            total[:, :, y:y + tile, x:x + tile] += eps * weights
            contributors[:, :, y:y + tile, x:x + tile] += weights
    return total / contributors


def adain(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per channel: (sr - mean) / std * std_ref + mean_ref, std = sqrt(unbiased var + 1e-5)."""
    def mean_std(x):
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat.mean(2)[..., None, None], (flat.var(2) + 1e-5).sqrt()[..., None, None]

    m, s = mean_std(sr)
    rm, rs = mean_std(ref)
    return ((sr - m) / s * rs + rm).clamp(0, 1)


def low_frequencies(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Five levels of the depthwise [[1,2,1],[2,4,2],[1,2,1]]/16 blur, dilation and replicate padding 2^i."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    kernel = kernel[None, None].repeat(x.shape[1], 1, 1, 1)
    for i in range(levels):
        r = 2 ** i
        x = F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), kernel, groups=x.shape[1], dilation=r)
    return x


def wavelet(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (sr - low_frequencies(sr) + low_frequencies(ref)).clamp(0, 1)


def main() -> None:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    ref = {}

    unet = refs.load_tiny(UNet2DConditionModel, "unet_sd2")
    rng = np.random.default_rng(61)
    z = rng.standard_normal(LATENT["shape"]).astype(np.float32)
    context = rng.standard_normal((1, refs.CONTEXT_LEN, 24)).astype(np.float32)
    with torch.no_grad():
        eps = osediff_tiled_unet(unet, torch.from_numpy(z), LATENT["timestep"], torch.from_numpy(context),
                                 LATENT["tile"], LATENT["overlap"])
    ref.update({"latent.z": z, "latent.context": context, "latent.eps": eps.numpy(),
                "latent.setting": np.array([LATENT["timestep"], LATENT["tile"], LATENT["overlap"]], np.int64)})

    x = (rng.standard_normal((2, 32, 20, 28)) * rng.uniform(0.5, 3, (1, 32, 1, 1))
         + np.linspace(-2, 2, 28)).astype(np.float32)
    norm = torch.nn.GroupNorm(8, 32, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, 32).astype(np.float32)))
        norm.bias.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, 32).astype(np.float32)))
        y = norm(torch.from_numpy(x)).numpy()
    ref.update({"group_norm.x": x, "group_norm.gamma": norm.weight.detach().numpy(),
                "group_norm.beta": norm.bias.detach().numpy(), "group_norm.y": y})

    sr = (refs.testing.random_images((2, 3, 45, 70), seed=62) + 1) / 2
    base = (refs.testing.random_images((2, 3, 45, 70), seed=63) + 1) / 2
    sr_t, base_t = torch.from_numpy(sr), torch.from_numpy(base * 0.7 + 0.2)
    ref.update({"color.sr": sr, "color.ref": base_t.numpy(), "color.adain": adain(sr_t, base_t).numpy(),
                "color.wavelet": wavelet(sr_t, base_t).numpy()})

    refs.save_tensors(ref, os.path.join(OUT, "reference.safetensors"))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
