"""d3sr: D3SR one-step diffusion super-resolution, computed in C (and CUDA),
called from Python on NumPy arrays.

    import d3sr
    upscaler = d3sr.Upscaler.load("checkpoints/d3sr")   # a folder with d3sr.json
    sr = upscaler.upscale(image)                         # H x W x 3 uint8 -> 4H x 4W x 3

The parts run on their own too: d3sr.VAE, d3sr.UNet, d3sr.LoRA. The
diffusion discriminator is d3sr.Discriminator, its losses d3sr.losses.
Image-quality metrics (PSNR, SSIM, LPIPS, DISTS, EA-DISTS) are in
d3sr.metrics. Modules whose names start with an underscore are internal.
"""
from . import losses, metrics
from ._discriminator import Discriminator
from ._lora import LoRA
from ._native import _core
from ._unet import UNet
from ._upscaler import Upscaler
from ._vae import VAE

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Threads for the CPU kernels, process-wide (0: all cores). At most
    max(64, 4 x the cores): OpenMP starts every thread asked for, and
    thousands end the process; more is a ValueError."""
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"n must be an integer, not {type(n).__name__}")
    _core.set_num_threads(n.__index__())


def get_num_threads() -> int:
    """Threads the CPU kernels use."""
    return _core.get_num_threads()


def cuda_available() -> bool:
    """Whether device='cuda' can run here (see `cuda_status` for why not)."""
    return _core.cuda_status()[0]


def cuda_status() -> str:
    """'' when device='cuda' can run, else the reason it cannot."""
    return _core.cuda_status()[1]


__all__ = ["metrics", "losses", "Upscaler", "Discriminator", "VAE", "UNet", "LoRA", "set_num_threads", "get_num_threads", "cuda_available", "cuda_status", "__version__"]
