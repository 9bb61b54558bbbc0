"""Checkpoint tools behind the `d3sr` command: assemble a generator checkpoint,
convert OSEDiff's LoRA pickle, and a demo on random weights."""
from __future__ import annotations

import os
import re
import shutil
import time
from typing import List, Optional

import numpy as np

from ._checkpoint import GENERATOR_DEFAULTS, LATENT_FORMULAS, write_config
from ._lora import PEFT_DEFAULT_ALPHA


def make_generator_checkpoint(output: str, *, sd: str, text_embedding: str, unet_lora: Optional[str] = None,
                              vae_lora: Optional[str] = None, timestep: int = 399,
                              latent_formula: str = "epsilon", link: bool = False) -> str:
    """Assembles a generator checkpoint folder from an SD 2.1-base diffusers
    folder (its unet/ and vae/ are copied, or symlinked with link), optional
    LoRA files and the fixed text embedding (.safetensors or .npy, [77, 1024]).
    Returns the path of the d3sr.json written."""
    from safetensors.numpy import save_file

    from ._checkpoint import read_text_embedding

    for part in ("unet", "vae"):
        if not os.path.isfile(os.path.join(sd, part, "config.json")):
            raise FileNotFoundError(f"{sd} has no {part}/config.json: expected a diffusers Stable Diffusion folder")
    if latent_formula not in LATENT_FORMULAS:
        raise ValueError(f"latent_formula must be one of {LATENT_FORMULAS}, not {latent_formula!r}")
    if not 0 <= timestep <= 999:
        raise ValueError(f"timestep must be in [0, 999], not {timestep}")
    if text_embedding.endswith(".npy"):
        embedding = np.load(text_embedding).astype(np.float32)
        embedding = embedding[0] if embedding.ndim == 3 and embedding.shape[0] == 1 else embedding
        if embedding.ndim != 2:
            raise ValueError(f"{text_embedding}: the text embedding must be [L, width], not {embedding.shape}")
    else:
        embedding = read_text_embedding(text_embedding, width=_config_width(sd))
    os.makedirs(output, exist_ok=True)
    for part in ("unet", "vae"):
        _copy_or_link(os.path.join(sd, part), os.path.join(output, part), link)
    save_file({"prompt_embeds": np.ascontiguousarray(embedding)}, os.path.join(output, "text_embedding.safetensors"))
    config = dict(GENERATOR_DEFAULTS, timestep=timestep, latent_formula=latent_formula)
    for field, source in (("unet_lora", unet_lora), ("vae_lora", vae_lora)):
        if source:  # a PEFT folder stays a folder, a file becomes <field>.safetensors
            name = field if os.path.isdir(source) else f"{field}.safetensors"
            (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, os.path.join(output, name))
            config[field] = name
    return write_config(output, config)


def make_discriminator_checkpoint(output: str, *, sdxl: str, conditioning: Optional[str] = None,
                                  lora: Optional[str] = None, head: Optional[str] = None, head_hidden: int = 256,
                                  head_activation: str = "silu", seed: int = 0, vae: Optional[str] = None,
                                  link: bool = False) -> str:
    """Assembles a discriminator checkpoint folder from an SDXL-base diffusers
    folder (its unet/ is copied, or symlinked with link; only its trunk is ever
    read), an optional LoRA, a head (a .safetensors file, or a fresh one of
    head_hidden units drawn from seed as PyTorch initialises Conv2d), the fixed
    conditioning (.safetensors with prompt_embeds [77, 2048],
    pooled_prompt_embeds [1280], time_ids [6]; zeros and 512x512 time_ids when
    not given) and optionally an SD 2.1 vae/ folder for scoring images.
    Returns the path of the d3sr.json written."""
    from safetensors.numpy import save_file

    from ._checkpoint import DISCRIMINATOR_DEFAULTS, HEAD_ACTIVATIONS
    from ._discriminator import init_head
    from ._weights import read_json

    unet_config = read_json(os.path.join(sdxl, "unet", "config.json"))
    if not head and (isinstance(head_hidden, bool) or not isinstance(head_hidden, int) or not 1 <= head_hidden <= 65536):
        raise ValueError(f"head_hidden must be an integer in [1, 65536], not {head_hidden!r}")
    if head_activation not in HEAD_ACTIVATIONS:
        raise ValueError(f"head_activation must be one of {HEAD_ACTIVATIONS}, not {head_activation!r}")
    os.makedirs(output, exist_ok=True)
    _copy_or_link(os.path.join(sdxl, "unet"), os.path.join(output, "unet"), link)
    config = dict(DISCRIMINATOR_DEFAULTS, head_activation=head_activation)
    if head:
        shutil.copy(head, os.path.join(output, "head.safetensors"))
    else:
        save_file(init_head(unet_config["block_out_channels"][-1], head_hidden, seed),
                  os.path.join(output, "head.safetensors"))
    if conditioning:
        shutil.copy(conditioning, os.path.join(output, "conditioning.safetensors"))
    else:
        text_dim = (unet_config.get("projection_class_embeddings_input_dim") or 0) - \
            6 * (unet_config.get("addition_time_embed_dim") or 0)
        zeros = {"prompt_embeds": np.zeros((77, unet_config["cross_attention_dim"]), np.float32)}
        if unet_config.get("addition_embed_type") == "text_time":
            zeros.update(pooled_prompt_embeds=np.zeros(text_dim, np.float32),
                         time_ids=np.array([512, 512, 0, 0, 512, 512], np.float32))
        save_file(zeros, os.path.join(output, "conditioning.safetensors"))
    if lora:
        name = "unet_lora" if os.path.isdir(lora) else "unet_lora.safetensors"
        (shutil.copytree if os.path.isdir(lora) else shutil.copy)(lora, os.path.join(output, name))
        config["unet_lora"] = name
    if vae:
        _copy_or_link(vae, os.path.join(output, "vae"), link)
        config["vae"] = "vae"
    return write_config(output, config)


def _copy_or_link(source: str, target: str, link: bool) -> None:
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise FileNotFoundError(f"{source} has no config.json: expected a diffusers model folder")
    if os.path.lexists(target):
        raise FileExistsError(f"{target} exists; choose an empty output folder")
    if link:
        os.symlink(os.path.abspath(source), target)
    else:
        shutil.copytree(source, target)


def _config_width(sd: str) -> int:
    from ._weights import read_json

    return int(read_json(os.path.join(sd, "unet", "config.json")).get("cross_attention_dim", 1024))


_ADAPTER_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.[^.]+\.weight$")


def osediff_state_to_lora(state: dict, alpha: float = PEFT_DEFAULT_ALPHA) -> dict:
    """One of OSEDiff's state dicts (PEFT parameter names with adapter names,
    e.g. 'to_q.lora_A.default_encoder.weight', plus fully trained weights such
    as conv_in) as a d3sr LoRA state dict: 'to_q.lora_A.weight' with an explicit
    '<module>.alpha' (OSEDiff sets none: PEFT's default 8) and the full weights."""
    out = {}
    for key, value in state.items():
        value = np.ascontiguousarray(np.asarray(value, np.float32))
        m = _ADAPTER_KEY.match(key)
        if m:
            name = f"{m['module']}.lora_{m['ab']}.weight"
            if name in out:
                raise ValueError(f"two adapters train '{m['module']}'; d3sr merges one LoRA per weight")
            out[name] = value
            out[f"{m['module']}.alpha"] = np.array(alpha, np.float32)
        else:
            out[key.replace(".base_layer.", ".")] = value
    return out


def convert_osediff(pkl: str, output: str) -> List[str]:
    """Converts OSEDiff's saved model (a torch pickle with state_dict_unet,
    state_dict_vae, ranks and module lists) into unet_lora.safetensors and
    vae_lora.safetensors in output. Needs no torch."""
    from safetensors.numpy import save_file

    from . import _torch_pickle as torch_pickle

    if not os.path.isfile(pkl):
        raise FileNotFoundError(f"OSEDiff model not found: {pkl}")
    model = torch_pickle.load(pkl)
    if not isinstance(model, dict) or "state_dict_unet" not in model:
        raise ValueError(f"{pkl} is not an OSEDiff model: it lacks state_dict_unet")
    os.makedirs(output, exist_ok=True)
    written = []
    for part, key in (("unet", "state_dict_unet"), ("vae", "state_dict_vae")):
        if key in model:
            path = os.path.join(output, f"{part}_lora.safetensors")
            save_file(osediff_state_to_lora(model[key]), path)
            written.append(path)
    return written


def demo(size: Optional[int] = None, tiny: bool = False, output: str = "d3sr_demo.png", threads: int = 0) -> np.ndarray:
    """Runs the whole generator on random weights (SD 2.1-base's architecture,
    or a tiny one) and a synthetic image, printing timings. The output shows
    that the pipeline runs, not a super-resolved image: the weights are noise."""
    import d3sr
    from d3sr._checkpoint import GENERATOR_DEFAULTS as config
    from d3sr.testing import iter_random_weights, random_images, real_config

    size = 128 if size is None else size
    if threads:
        d3sr.set_num_threads(threads)
    if tiny:
        vae_config = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1, "norm_num_groups": 8}
        unet_config = {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
                       "cross_attention_dim": 64, "attention_head_dim": [2, 4], "use_linear_projection": True,
                       "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                       "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
    else:
        vae_config, unet_config = real_config("sd21-vae"), real_config("sd21-base-unet")
    start = time.perf_counter()
    vae = d3sr.VAE.from_config(vae_config)
    vae.load_weights(iter_random_weights(vae.weight_shapes(), seed=0))
    unet = d3sr.UNet.from_config(unet_config)
    unet.load_weights(iter_random_weights(unet.weight_shapes(), seed=1))
    embedding = np.random.default_rng(2).standard_normal((77, unet.config["cross_attention_dim"])).astype(np.float32)
    upscaler = d3sr.Upscaler(vae, unet, embedding, dict(config))
    print(f"built {'a tiny' if tiny else 'the SD 2.1-base'} generator with random weights in "
          f"{time.perf_counter() - start:.1f} s ({d3sr.get_num_threads()} threads)")
    image = ((random_images((1, 3, size, size), seed=3)[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    start = time.perf_counter()
    out = upscaler.upscale(image, scale=4)
    print(f"upscaled {size}x{size} -> {out.shape[1]}x{out.shape[0]} in {time.perf_counter() - start:.2f} s")
    from .images import write_image

    write_image(output, out)
    print(f"wrote {output} (random weights: the picture is noise, the pipeline is real)")
    return out
