"""Regenerates the reference tensors under tests/data from diffusers and PyTorch.

Needs torch and diffusers (a separate environment; CI and users never run
this). Run it from the repository root:

    python -m venv ~/d3sr-ref && ~/d3sr-ref/bin/pip install torch diffusers peft safetensors numpy
    ~/d3sr-ref/bin/python tools/make_references.py            # everything
    ~/d3sr-ref/bin/python tools/make_references.py --only vae

Weights come from d3sr/testing.py's seeded generator (imported by path, so d3sr
need not be built here). Small models are saved in the diffusers layout with
their inputs, block activations and outputs; real-size configs save only the
outputs, since the tests redraw the same weights from the seed.
"""
import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")


def load_testing():
    spec = importlib.util.spec_from_file_location("d3sr_testing", os.path.join(ROOT, "d3sr", "testing.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


testing = load_testing()


def set_weights(module: torch.nn.Module, seed: int, fp16: bool = False) -> dict:
    """Draws the module's weights from the shared generator; returns them as saved."""
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    weights = testing.random_weights(shapes, seed)
    if fp16:
        weights = {k: v.astype(np.float16) for k, v in weights.items()}
    module.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items()})
    return weights


def capture(modules: dict):
    """Forward hooks storing each named module's output; returns (store, remove)."""
    store, handles = {}, []
    for name, mod in modules.items():
        def hook(_m, _i, out, name=name):
            store[name] = (out[0] if isinstance(out, tuple) else out).detach().float().numpy().copy()
        handles.append(mod.register_forward_hook(hook))
    return store, lambda: [h.remove() for h in handles]


def save_tensors(tensors: dict, path: str) -> None:
    """safetensors writes an array's memory as it lies: make every array contiguous
    first (torch's chunk views, like latent_dist.mean of a batch, are not)."""
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)


def load_tiny(cls, name: str):
    """A diffusers model (float32) from one of the small folders under tests/data."""
    from safetensors.torch import load_file as load_torch

    folder = os.path.join(DATA, name)
    config = json.load(open(os.path.join(folder, "config.json")))
    model = cls(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    weights = next(f for f in os.listdir(folder) if f.startswith("diffusion_pytorch_model"))
    model.load_state_dict({k: v.float() for k, v in load_torch(os.path.join(folder, weights)).items()})
    return model


def save_model_folder(folder: str, config: dict, weights: dict, fp16: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    name = "diffusion_pytorch_model.fp16.safetensors" if fp16 else "diffusion_pytorch_model.safetensors"
    save_tensors(weights, os.path.join(folder, name))


# ---- VAE ------------------------------------------------------------------

VAE_TINY = {
    # name: (config, image shape, seed, weights stored as fp16)
    "vae_a": ({"block_out_channels": [16, 40], "layers_per_block": 1, "norm_num_groups": 8,
               "latent_channels": 4}, (1, 3, 24, 32), 1, False),
    "vae_b": ({"block_out_channels": [8, 16, 24], "layers_per_block": 2, "norm_num_groups": 4,
               "latent_channels": 3}, (2, 3, 32, 24), 2, True),
}


def vae_reference(vae, images: np.ndarray, latents: np.ndarray) -> dict:
    enc, dec = vae.encoder, vae.decoder
    modules = {"encoder.conv_in": enc.conv_in, "encoder.mid_block": enc.mid_block,
               "decoder.conv_in": dec.conv_in, "decoder.mid_block": dec.mid_block}
    modules.update({f"encoder.down_blocks.{i}": b for i, b in enumerate(enc.down_blocks)})
    modules.update({f"decoder.up_blocks.{i}": b for i, b in enumerate(dec.up_blocks)})
    store, remove = capture(modules)
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(images)).latent_dist.mean.numpy()
        decoded = vae.decode(torch.from_numpy(latents)).sample.numpy()
    remove()
    ref = {"encode.input": images, "encode.mean": mean, "decode.input": latents, "decode.output": decoded}
    ref.update({f"block.{k}": v for k, v in store.items()})
    return ref


def make_vae() -> None:
    from diffusers import AutoencoderKL

    for name, (config, image_shape, seed, fp16) in VAE_TINY.items():
        full = dict(config, _class_name="AutoencoderKL", in_channels=3, out_channels=3,
                    down_block_types=["DownEncoderBlock2D"] * len(config["block_out_channels"]),
                    up_block_types=["UpDecoderBlock2D"] * len(config["block_out_channels"]))
        vae = AutoencoderKL(**{k: v for k, v in full.items() if not k.startswith("_")}).eval()
        weights = set_weights(vae, seed, fp16)
        images = testing.random_images(image_shape, seed)
        factor = 2 ** (len(config["block_out_channels"]) - 1)
        latents = np.random.default_rng(seed).standard_normal(
            (image_shape[0], config["latent_channels"], image_shape[2] // factor, image_shape[3] // factor)).astype(np.float32)
        folder = os.path.join(DATA, name)
        save_model_folder(folder, full, weights, fp16)
        save_tensors(vae_reference(vae, images, latents), os.path.join(folder, "reference.safetensors"))
        print(f"wrote {folder}")

    # The real SD 2.1 VAE config: outputs only; the test redraws the weights.
    config = testing.real_config("sd21-vae")
    vae = AutoencoderKL.from_config(config).eval()
    weights = set_weights(vae, seed=21)
    images = testing.random_images((1, 3, 32, 40), seed=21)
    latents = np.random.default_rng(21).standard_normal((1, 4, 4, 5)).astype(np.float32)
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(images)).latent_dist.mean.numpy()
        decoded = vae.decode(torch.from_numpy(latents)).sample.numpy()
    first = sorted(weights)[0]
    save_tensors({"encode.input": images, "encode.mean": mean, "decode.input": latents, "decode.output": decoded,
               "fingerprint": weights[first].reshape(-1)[:8].copy()},
              os.path.join(DATA, "sd21_vae_reference.safetensors"))
    print("wrote sd21_vae_reference.safetensors")


# ---- UNet -----------------------------------------------------------------

UNET_TINY = {
    # SD 2.x-like: linear projection, transformer depth 2, a plain level.
    "unet_sd2": ({"block_out_channels": [24, 40], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1,
                  "attention_head_dim": [2, 4], "transformer_layers_per_block": [2, 1], "cross_attention_dim": 24,
                  "norm_num_groups": 8, "use_linear_projection": True},
                 [((1, 4, 12, 10), [399.0]), ((2, 4, 9, 7), [999.0, 0.0])], 11, False),
    # SDXL-like: text_time embedding, per-level depths, three levels.
    "unet_sdxl": ({"block_out_channels": [16, 24, 32], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D",
                                                                         "CrossAttnDownBlock2D"],
                   "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 2,
                   "attention_head_dim": [2, 2, 4], "transformer_layers_per_block": [1, 2, 2],
                   "cross_attention_dim": 20, "norm_num_groups": 8, "use_linear_projection": True,
                   "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                   "projection_class_embeddings_input_dim": 12 + 6 * 8},
                  [((2, 4, 8, 12), [10.0, 731.0])], 12, True),
    # SD 1.x-like: 1x1 conv projections, one head count for all levels, other sinusoid settings.
    "unet_sd1": ({"block_out_channels": [16, 32], "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1,
                  "attention_head_dim": 4, "cross_attention_dim": 12, "norm_num_groups": 4,
                  "use_linear_projection": False, "flip_sin_to_cos": False, "freq_shift": 1},
                 [((1, 4, 7, 5), [123.5])], 13, False),
}
CONTEXT_LEN = 7


def unet_inputs(config: dict, shape, timesteps, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = shape[0]
    inputs = {"sample": rng.standard_normal(shape).astype(np.float32),
              "timesteps": np.asarray(timesteps, np.float32),
              "encoder_hidden_states": rng.standard_normal((n, CONTEXT_LEN, config["cross_attention_dim"])).astype(np.float32)}
    if config.get("addition_embed_type") == "text_time":
        text_dim = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        inputs["text_embeds"] = rng.standard_normal((n, text_dim)).astype(np.float32)
        inputs["time_ids"] = np.tile(np.asarray([[64, 48, 0, 0, 64, 48]], np.float32), (n, 1)) + np.arange(n)[:, None]
    return inputs


def unet_reference(unet, inputs: dict, prefix: str) -> dict:
    modules = {"conv_in": unet.conv_in, "mid_block": unet.mid_block}
    modules.update({f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)})
    modules.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)})
    store, remove = capture(modules)
    kwargs = {}
    if "text_embeds" in inputs:
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.from_numpy(inputs["text_embeds"]),
                                       "time_ids": torch.from_numpy(inputs["time_ids"])}
    with torch.no_grad():
        out = unet(torch.from_numpy(inputs["sample"]), torch.from_numpy(inputs["timesteps"]),
                   encoder_hidden_states=torch.from_numpy(inputs["encoder_hidden_states"]), **kwargs).sample.numpy()
    remove()
    ref = {f"{prefix}.input.{k}": v for k, v in inputs.items()}
    ref[f"{prefix}.output"] = out
    ref.update({f"{prefix}.block.{k}": v for k, v in store.items()})
    return ref


def make_unet() -> None:
    from diffusers import UNet2DConditionModel

    for name, (config, cases, seed, fp16) in UNET_TINY.items():
        full = dict(config, _class_name="UNet2DConditionModel", in_channels=4, out_channels=4)
        unet = UNet2DConditionModel(**{k: v for k, v in full.items() if not k.startswith("_")}).eval()
        weights = set_weights(unet, seed, fp16)
        folder = os.path.join(DATA, name)
        save_model_folder(folder, full, weights, fp16)
        ref = {}
        for i, (shape, timesteps) in enumerate(cases):
            ref.update(unet_reference(unet, unet_inputs(config, shape, timesteps, seed + i), f"case{i}"))
        save_tensors(ref, os.path.join(folder, "reference.safetensors"))
        print(f"wrote {folder}")


# ---- LoRA -------------------------------------------------------------------

UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                     "conv1", "conv2", "conv_shortcut"]
VAE_LORA_TARGETS = r"encoder\..*(conv1|conv2|conv_shortcut|to_q|to_k|to_v|to_out\.0)$"
MERGED_SAMPLES = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                  "down_blocks.0.resnets.0.conv1.weight", "up_blocks.1.resnets.1.conv_shortcut.weight",
                  "encoder.down_blocks.0.resnets.0.conv1.weight", "encoder.mid_block.attentions.0.to_v.weight"]


def add_random_lora(model, config, seed: int) -> dict:
    """Adds a PEFT adapter with random A and B (PEFT starts B at zero, which
    would make the test vacuous); returns the adapter's state dict as saved."""
    from peft import get_peft_model_state_dict

    model.add_adapter(config)
    rng = np.random.default_rng(seed)
    for name, param in sorted(model.named_parameters()):
        if "lora_" in name:
            param.data = torch.from_numpy((rng.standard_normal(tuple(param.shape)) * 0.1).astype(np.float32))
    return {k: v.detach().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def merged_samples(model) -> dict:
    """PEFT's own merge (W + scale B A) of a few layers, by their base names."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items()}
    return {f"merged.{k}": state[k].numpy().copy() for k in MERGED_SAMPLES if k in state}


def make_lora() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig

    # UNet: rank 4 with lora_alpha 16 in adapter_config.json.
    unet = load_tiny(UNet2DConditionModel, "unet_sd2")
    lora_config = LoraConfig(r=4, lora_alpha=16, target_modules=UNET_LORA_TARGETS)
    adapter = add_random_lora(unet, lora_config, seed=31)
    out = os.path.join(DATA, "lora_unet")
    os.makedirs(out, exist_ok=True)
    save_tensors(adapter, os.path.join(out, "adapter_model.safetensors"))
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump({"r": 4, "lora_alpha": 16, "target_modules": UNET_LORA_TARGETS, "peft_type": "LORA"}, f, indent=2)
    inputs = unet_inputs(UNET_TINY["unet_sd2"][0], *UNET_TINY["unet_sd2"][1][0], seed=11)
    ref = unet_reference(unet, inputs, "unet")  # PEFT's unmerged forward: base + scale * B A
    ref.update(merged_samples(unet))

    # VAE encoder: rank 2, no alpha anywhere (PEFT's default 8, as OSEDiff trains).
    vae = load_tiny(AutoencoderKL, "vae_a")
    adapter = add_random_lora(vae, LoraConfig(r=2, target_modules=VAE_LORA_TARGETS), seed=32)
    save_tensors(adapter, os.path.join(out, "vae_encoder_lora.safetensors"))
    images = load_numpy(os.path.join(DATA, "vae_a", "reference.safetensors"))["encode.input"]
    with torch.no_grad():
        ref["vae.mean"] = vae.encode(torch.from_numpy(images)).latent_dist.mean.numpy()
    ref.update(merged_samples(vae))
    save_tensors(ref, os.path.join(out, "reference.safetensors"))
    print(f"wrote {out}")


def load_numpy(path: str) -> dict:
    from safetensors.numpy import load_file

    return load_file(path)


# ---- the generator, end to end -----------------------------------------------

GENERATOR = {"type": "generator", "unet": "../unet_sd2", "vae": "../vae_a", "unet_lora": "../lora_unet",
             "vae_lora": "../lora_unet/vae_encoder_lora.safetensors", "text_embedding": "text_embedding.safetensors",
             "timestep": 399}


def bicubic(images: np.ndarray, scale: int) -> np.ndarray:
    """PIL's bicubic per channel in float32 ('F' mode), clipped to [0, 1]."""
    from PIL import Image

    n, h, w, c = images.shape
    out = np.stack([np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(images[i, :, :, ch]), mode="F")
                                         .resize((w * scale, h * scale), Image.BICUBIC)) for ch in range(c)], -1)
                    for i in range(n)])
    return np.clip(out, 0, 1).astype(np.float32)


def make_generator() -> None:
    """A PyTorch reference of D3SR's generator from diffusers modules and eq. 1."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file as load_torch

    folder = os.path.join(DATA, "generator_tiny")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "d3sr.json"), "w") as f:
        json.dump(GENERATOR, f, indent=2)
    embedding = np.random.default_rng(41).standard_normal((CONTEXT_LEN, 24)).astype(np.float32)
    save_tensors({"prompt_embeds": embedding}, os.path.join(folder, "text_embedding.safetensors"))

    vae, unet = load_tiny(AutoencoderKL, "vae_a"), load_tiny(UNet2DConditionModel, "unet_sd2")
    vae.add_adapter(LoraConfig(r=2, target_modules=VAE_LORA_TARGETS))
    set_peft_model_state_dict(vae, load_torch(os.path.join(DATA, "lora_unet", "vae_encoder_lora.safetensors")))
    unet.add_adapter(LoraConfig(r=4, lora_alpha=16, target_modules=UNET_LORA_TARGETS))
    set_peft_model_state_dict(unet, load_torch(os.path.join(DATA, "lora_unet", "adapter_model.safetensors")))

    scale, sf, t = 2, 0.18215, GENERATOR["timestep"]
    images = (testing.random_images((2, 3, 11, 13), seed=42).transpose(0, 2, 3, 1) + 1) / 2  # [N, H, W, 3] in [0, 1]
    up = bicubic(images, scale) * 2 - 1
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = up.shape[1:3]
    x = np.pad(up, ((0, 0), (0, -h % factor), (0, -w % factor), (0, 0)), mode="reflect").transpose(0, 3, 1, 2)
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)[t]
    with torch.no_grad():
        z = vae.encode(torch.from_numpy(np.ascontiguousarray(x))).latent_dist.mean * sf
        context = torch.from_numpy(embedding)[None].expand(len(images), -1, -1)
        eps = unet(z, torch.tensor([t] * len(images)), encoder_hidden_states=context).sample
        z_h = ((z.double() - np.sqrt(1 - abar) * eps.double()) / np.sqrt(abar)).float()
        out = vae.decode(z_h / sf).sample.clamp(-1, 1).numpy()
    out = ((out + 1) / 2)[:, :, :h, :w].transpose(0, 2, 3, 1)
    save_tensors({"image": images.astype(np.float32), "output": out.astype(np.float32), "scale": np.array([scale])},
                 os.path.join(folder, "reference.safetensors"))
    print(f"wrote {folder}")


# ---- OSEDiff's LoRA pickle ---------------------------------------------------

def make_osediff() -> None:
    """A small model saved the way OSEDiff saves its LoRA (torch.save of a dict
    with three UNet adapters, one VAE encoder adapter, conv_in fully trained,
    no alpha), and the output of the UNet and VAE encoder with those adapters
    loaded as OSEDiff's inference code loads them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig

    unet, vae = load_tiny(UNet2DConditionModel, "unet_sd2"), load_tiny(AutoencoderKL, "vae_a")
    modules = {"default_encoder": ["to_q", "to_k", "conv1"], "default_decoder": ["to_v", "conv2"],
               "default_others": ["to_out.0", "proj_in", "proj_out", "ff.net.2"]}
    for adapter, targets in modules.items():
        unet.add_adapter(LoraConfig(r=2, init_lora_weights="gaussian", target_modules=targets), adapter_name=adapter)
    unet.set_adapter(list(modules))
    vae.add_adapter(LoraConfig(r=2, init_lora_weights="gaussian", target_modules=VAE_LORA_TARGETS),
                    adapter_name="default_encoder")
    rng = np.random.default_rng(51)
    for model in (unet, vae):
        for name, param in sorted(model.named_parameters()):
            if "lora" in name or name.startswith("conv_in") and model is unet:
                param.data = torch.from_numpy((rng.standard_normal(tuple(param.shape)) * 0.1).astype(np.float32))
    pkl = {"unet_lora_encoder_modules": modules["default_encoder"], "unet_lora_decoder_modules": modules["default_decoder"],
           "unet_lora_others_modules": modules["default_others"], "rank_unet": 2, "rank_vae": 2,
           "vae_lora_encoder_modules": ["conv1", "conv2", "conv_shortcut", "to_q", "to_k", "to_v", "to_out.0"],
           "state_dict_unet": {k: v.detach().clone() for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
           "state_dict_vae": {k: v.detach().clone() for k, v in vae.state_dict().items() if "lora" in k}}
    folder = os.path.join(DATA, "osediff_tiny")
    os.makedirs(folder, exist_ok=True)
    torch.save(pkl, os.path.join(folder, "model.pkl"))
    inputs = unet_inputs(UNET_TINY["unet_sd2"][0], *UNET_TINY["unet_sd2"][1][0], seed=11)
    ref = unet_reference(unet, inputs, "unet")
    images = load_numpy(os.path.join(DATA, "vae_a", "reference.safetensors"))["encode.input"]
    with torch.no_grad():
        ref["vae.mean"] = vae.encode(torch.from_numpy(images)).latent_dist.mean.numpy()
    save_tensors({k: v for k, v in ref.items() if not k.startswith("unet.block.")},
                 os.path.join(folder, "reference.safetensors"))
    print(f"wrote {folder}")


# ---- the discriminator ------------------------------------------------------

DISCRIMINATOR = {"type": "discriminator", "unet": "../unet_sdxl", "unet_lora": "unet_lora.safetensors",
                 "head": "head.safetensors", "head_activation": "leaky_relu", "head_negative_slope": 0.2,
                 "conditioning": "conditioning.safetensors", "vae": "../vae_a"}


def sdxl_trunk(unet, sample, t, context, text_embeds, time_ids):
    """conv_in, the time and text_time embeddings, the down blocks and the mid
    block, as UNet2DConditionModel.forward runs them."""
    t_emb = unet.get_time_embed(sample=sample, timestep=t)
    emb = unet.time_embedding(t_emb)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=context,
                             added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids})
    emb = emb + aug
    h = unet.conv_in(sample)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
        else:
            h, _ = block(hidden_states=h, temb=emb)
    return unet.mid_block(h, emb, encoder_hidden_states=context)


def make_discriminator() -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig

    folder = os.path.join(DATA, "disc_tiny")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "d3sr.json"), "w") as f:
        json.dump(DISCRIMINATOR, f, indent=2)
    unet, vae = load_tiny(UNet2DConditionModel, "unet_sdxl"), load_tiny(AutoencoderKL, "vae_a")
    # a LoRA over the whole UNet: its up-block updates must be ignored by the trunk
    adapter = add_random_lora(unet, LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "conv1"]), seed=61)
    save_tensors({**adapter, **{k.replace(".lora_A.weight", ".alpha"): np.array(4.0, np.float32)
                                for k in adapter if ".lora_A." in k}}, os.path.join(folder, "unet_lora.safetensors"))
    rng = np.random.default_rng(62)
    cond = {"prompt_embeds": rng.standard_normal((CONTEXT_LEN, 20)).astype(np.float32),
            "pooled_prompt_embeds": rng.standard_normal(12).astype(np.float32),
            "time_ids": np.array([64, 96, 0, 0, 64, 96], np.float32)}
    save_tensors(cond, os.path.join(folder, "conditioning.safetensors"))
    head = torch.nn.Sequential(torch.nn.Conv2d(32, 16, 1), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(16, 1, 1))
    save_tensors({k: v.detach().numpy() for k, v in head.state_dict().items()}, os.path.join(folder, "head.safetensors"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

    def score(z, t, noise):
        n = len(z)
        z_t = scheduler.add_noise(torch.from_numpy(z), torch.from_numpy(noise), torch.from_numpy(t))
        context = torch.from_numpy(cond["prompt_embeds"])[None].expand(n, -1, -1)
        text = torch.from_numpy(cond["pooled_prompt_embeds"])[None].expand(n, -1)
        ids = torch.from_numpy(cond["time_ids"])[None].expand(n, -1)
        with torch.no_grad():
            features = sdxl_trunk(unet, z_t, torch.from_numpy(t), context, text, ids)
            store, remove = capture({"mid_block": unet.mid_block})  # the trunk agrees with the full forward
            unet(z_t, torch.from_numpy(t), encoder_hidden_states=context,
                 added_cond_kwargs={"text_embeds": text, "time_ids": ids})
            remove()
            assert np.allclose(store["mid_block"], features.numpy(), atol=1e-5)
            logits = head(features)
        return z_t.numpy(), features.numpy(), logits.numpy()

    z = rng.standard_normal((3, 4, 8, 12)).astype(np.float32)
    t = np.array([10, 731, 999], np.int64)
    noise = rng.standard_normal(z.shape).astype(np.float32)
    z_t, features, logits = score(z, t, noise)
    images = ((testing.random_images((2, 3, 16, 24), seed=63) + 1) / 2).transpose(0, 2, 3, 1)
    with torch.no_grad():
        z_img = (vae.encode(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2) * 2 - 1))).latent_dist.mean
                 * 0.18215).numpy()
    image_noise = rng.standard_normal(z_img.shape).astype(np.float32)
    _, _, image_logits = score(z_img, np.array([500, 500], np.int64), image_noise)
    save_tensors({"z": z, "t": t, "noise": noise, "z_t": z_t, "features": features, "logits": logits,
                  "images": images.astype(np.float32), "image_noise": image_noise, "image_logits": image_logits},
                 os.path.join(folder, "reference.safetensors"))
    print(f"wrote {folder}")


# ---- image-quality metrics ------------------------------------------------------
#
# PSNR/SSIM against pyiqa; LPIPS against the lpips package (and pyiqa's copy);
# DISTS against DISTS_pytorch (and pyiqa's copy); EA-DISTS as DISTS_pytorch on
# the images and on their Sobel maps. torchvision's ImageNet weights cannot be
# fetched here, so the backbones get seeded random weights (d3sr/testing.py,
# redrawn by the tests); the LPIPS lin layers and DISTS' alpha/beta are the
# real ones the lpips and DISTS_pytorch wheels ship, saved in heads.safetensors.

METRICS = os.path.join(DATA, "metrics")
# name: (shape [N, H, W] of the pair, seed, dtype): see metric_pair
PIXEL_CASES = {
    "odd": ((1, 37, 41), 1, "uint8"),
    "batch": ((3, 64, 48), 2, "uint8"),
    "float": ((2, 33, 35), 3, "float32"),
    "large": ((1, 530, 397), 4, "uint8"),   # min side 397: round(1.55) = 2, MATLAB downsampling by 2
    "tie": ((1, 640, 643), 5, "uint8"),     # min side 640: round(2.5) = 2 (half to even)
}
PIXEL_OPTIONS = [  # (y_channel, crop_border, downsample)
    (True, 0, False), (False, 0, False), (True, 4, False), (False, 3, False), (True, 0, True), (False, 4, True),
]
PERCEPTUAL_CASES = {"odd": ((1, 47, 53), 6, "uint8"), "batch": ((2, 64, 64), 7, "float32")}
BACKBONE_SEEDS = {"alexnet": 101, "vgg16": 102}


def metric_pair(shape, seed: int, dtype: str):
    """A reference image and a distorted version (blur, noise, a colour shift),
    [N, H, W, 3] in [0, 1], uint8 or float32. The tests make the same pair from
    the same numbers with d3sr.testing.metric_pair (this is that function)."""
    return testing.metric_pair(shape, seed, dtype)


def pixel_score_name(case, metric, y, crop, down):
    return f"{case}.{metric}.{'y' if y else 'rgb'}.crop{crop}{'.down' if down else ''}"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 or float32 -> [N, 3, H, W] float32 in [0, 1], as torchvision's ToTensor."""
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return t.float().div(255) if images.dtype == np.uint8 else t


def luma_numpy(rgb: np.ndarray) -> np.ndarray:
    """pyiqa's float32 Y (no FMA: NumPy evaluates each operation on its own)."""
    x = rgb.astype(np.float32) / np.float32(255) if rgb.dtype == np.uint8 else rgb
    s = x[..., 0] * np.float32(65.481) + x[..., 1] * np.float32(128.553)
    s = s + x[..., 2] * np.float32(24.966)
    return (s + np.float32(16)) / np.float32(255)


def check_luma_against_pyiqa() -> dict:
    """pyiqa's rounded Y of every 8-bit colour against luma_numpy (the formula the
    C core uses and the tests check it against); returns colours where the exact
    rounding of BT.601 differs from pyiqa's float32 one, with pyiqa's values."""
    from pyiqa.utils.color_util import to_y_channel

    g = np.arange(256)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1)                      # [256, 256, 2] (G, B)
    mismatched, odd = 0, []
    for r in range(256):
        rgb = np.concatenate([np.full((256, 256, 1), r), grid], -1).astype(np.uint8)[None]
        theirs = to_y_channel(to_tensor(rgb), 255, "ycbcr")[0, 0].numpy()
        ours = np.rint(luma_numpy(rgb)[0] * np.float32(255))
        mismatched += int((theirs != ours).sum())
        c = rgb[0].astype(np.int64)
        n = 65481 * c[..., 0] + 128553 * c[..., 1] + 24966 * c[..., 2]
        q, rem = np.divmod(n, 255000)
        exact = q + 16 + ((rem > 127500) | ((rem == 127500) & (q % 2 == 1)))
        odd += [rgb[0][i, j] for i, j in zip(*np.nonzero(exact != theirs))]
    assert mismatched == 0, f"the float32 luma formula differs from pyiqa on {mismatched} colours"
    colours = np.stack(odd).astype(np.uint8)[None, None]                        # [1, 1, M, 3]
    print(f"luma: pyiqa's rounded Y equals the float32 formula on all 2^24 colours; "
          f"{len(odd)} colours round differently from exact BT.601")
    return {"luma.colours": colours,
            "luma.pyiqa_rounded": to_y_channel(to_tensor(colours), 255, "ycbcr")[:, 0].numpy(),
            "luma.pyiqa": to_y_channel(to_tensor(colours), 1.0, "ycbcr")[:, 0].numpy()}


def torchvision_stub(name: str):
    """torchvision's constructor without its weights download (the weights
    argument is ignored; the tests' seeded weights are loaded afterwards)."""
    import torchvision

    build = getattr(torchvision.models, name)
    return lambda *args, **kwargs: build()


def backbone_weights(name: str) -> dict:
    """Seeded weights of torchvision's `features` of alexnet or vgg16, by state_dict name."""
    import torchvision

    features = getattr(torchvision.models, name)().features
    shapes = {f"features.{k}": tuple(v.shape) for k, v in features.state_dict().items()}
    return testing.random_weights(shapes, BACKBONE_SEEDS[name])


def load_backbone(module: torch.nn.Module, weights: dict) -> None:
    """Loads features.<i>.* into a module whose parameters are named <slice>.<i>.* (lpips' slices, DISTS' stages)."""
    state = module.state_dict()
    loaded = 0
    for key in state:
        parts = key.split(".")
        if len(parts) >= 3 and parts[-2].isdigit() and f"features.{parts[-2]}.{parts[-1]}" in weights:
            state[key] = torch.from_numpy(weights[f"features.{parts[-2]}.{parts[-1]}"])
            loaded += 1
    assert loaded == len(weights), (loaded, len(weights))
    module.load_state_dict(state)


def sobel(x: torch.Tensor) -> torch.Tensor:
    """EA-DISTS' edge map: Sobel magnitude of the channel mean, padding 1, to 3 channels."""
    gray = x.mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    ex = torch.nn.functional.conv2d(gray, kx, padding=1)
    ey = torch.nn.functional.conv2d(gray, kx.transpose(2, 3), padding=1)
    return torch.sqrt(ex ** 2 + ey ** 2 + 1e-6).repeat(1, 3, 1, 1)


def make_metrics() -> None:
    import lpips as lpips_package
    import pyiqa.archs.dists_arch as pyiqa_dists
    import pyiqa.archs.lpips_arch as pyiqa_lpips
    from DISTS_pytorch import DISTS_pt
    from pyiqa.archs.psnr_arch import PSNR
    from pyiqa.archs.ssim_arch import SSIM

    os.makedirs(METRICS, exist_ok=True)
    ref = check_luma_against_pyiqa()

    # PSNR and SSIM: pyiqa with color_space='ycbcr' (SR papers' Y), or RGB.
    for case, (shape, seed, dtype) in PIXEL_CASES.items():
        sr, hr = metric_pair(shape, seed, dtype)
        ref[f"{case}.fingerprint"] = np.concatenate([sr.reshape(-1)[:16], hr.reshape(-1)[-16:]]).astype(np.float32)
        if case in ("odd", "float"):  # small enough to store, for looking at
            ref[f"{case}.sr"], ref[f"{case}.hr"] = sr, hr
        x, y = to_tensor(sr), to_tensor(hr)
        for y_channel, crop, down in PIXEL_OPTIONS:
            psnr = PSNR(test_y_channel=y_channel, crop_border=crop, color_space="ycbcr")(x, y)
            ssim = SSIM(test_y_channel=y_channel, crop_border=crop, color_space="ycbcr", downsample=down)(x, y)
            ref[pixel_score_name(case, "ssim", y_channel, crop, down)] = ssim.double().numpy()
            if not down:
                ref[pixel_score_name(case, "psnr", y_channel, crop, down)] = psnr.double().numpy()

    # The heads: real weights from the lpips and DISTS_pytorch wheels.
    heads = {}
    for net in ("alex", "vgg"):
        path = os.path.join(os.path.dirname(lpips_package.__file__), "weights", "v0.1", f"{net}.pth")
        for key, value in torch.load(path, map_location="cpu", weights_only=True).items():
            heads[f"lpips.{net}.{key}"] = value.float().numpy()
    dists_path = os.path.join(os.path.dirname(DISTS_pt.__file__), "weights.pt")
    for key, value in torch.load(dists_path, map_location="cpu", weights_only=True).items():
        heads[f"dists.{key}"] = value.float().numpy()
    save_tensors(heads, os.path.join(METRICS, "heads.safetensors"))

    alex, vgg = backbone_weights("alexnet"), backbone_weights("vgg16")
    for name, weights in (("alexnet", alex), ("vgg16", vgg)):
        first = sorted(weights)[0]
        ref[f"{name}.fingerprint"] = weights[first].reshape(-1)[:8].copy()

    # LPIPS: the lpips package (normalize=True: [0, 1] inputs) and pyiqa's copy.
    pyiqa_lpips.models.alexnet = torchvision_stub("alexnet")
    pyiqa_lpips.models.vgg16 = torchvision_stub("vgg16")
    lp = {}
    for net, weights in (("alex", alex), ("vgg", vgg)):
        model = lpips_package.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
        load_backbone(model.net, weights)
        theirs = pyiqa_lpips.LPIPS(net=net, pretrained=False).eval()
        load_backbone(theirs.net, weights)
        lins = {k: v for k, v in model.state_dict().items() if k.startswith("lin")}
        missing, unexpected = theirs.load_state_dict(lins, strict=False)
        assert not unexpected and not any(k.startswith("lin") for k in missing), (missing, unexpected)
        lp[net] = (model, theirs)
    DISTS_pt.models.vgg16 = torchvision_stub("vgg16")
    pyiqa_dists.models.vgg16 = torchvision_stub("vgg16")
    dists = DISTS_pt.DISTS(load_weights=False).eval()
    load_backbone(dists, vgg)
    dists.alpha.data = torch.from_numpy(heads["dists.alpha"])
    dists.beta.data = torch.from_numpy(heads["dists.beta"])
    dists_iqa = pyiqa_dists.DISTS(pretrained=False).eval()
    dists_iqa.load_state_dict(dists.state_dict())

    for case, (shape, seed, dtype) in PERCEPTUAL_CASES.items():
        sr, hr = metric_pair(shape, seed, dtype)
        ref[f"perceptual.{case}.fingerprint"] = np.concatenate([sr.reshape(-1)[:16], hr.reshape(-1)[-16:]]).astype(np.float32)
        x, y = to_tensor(sr), to_tensor(hr)
        with torch.no_grad():
            for net, (model, theirs) in lp.items():
                total, layers = model(x, y, retPerLayer=True, normalize=True)
                ref[f"perceptual.{case}.lpips_{net}"] = total.reshape(-1).double().numpy()
                ref[f"perceptual.{case}.lpips_{net}.layers"] = torch.cat([l.reshape(-1, 1) for l in layers], 1).numpy()
                ref[f"perceptual.{case}.lpips_{net}.pyiqa"] = theirs(x, y).reshape(-1).double().numpy()
            ref[f"perceptual.{case}.dists"] = dists(x, y).reshape(-1).double().numpy()
            ref[f"perceptual.{case}.dists.pyiqa"] = dists_iqa(x, y).reshape(-1).double().numpy()
            ea = dists(x, y).reshape(-1) + dists(sobel(x), sobel(y)).reshape(-1)
            ref[f"perceptual.{case}.ea_dists"] = ea.double().numpy()
    save_tensors(ref, os.path.join(METRICS, "reference.safetensors"))
    for key in sorted(k for k in ref if ".lpips" in k or ".dists" in k or ".ea_dists" in k):
        print(f"  {key}: {np.round(ref[key], 6).tolist()}")
    print(f"wrote {METRICS}")


# In dependency order: later sections load the tiny models earlier ones write.
SECTIONS = {"vae": make_vae, "unet": make_unet, "lora": make_lora, "generator": make_generator,
            "osediff": make_osediff, "discriminator": make_discriminator, "metrics": make_metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="regenerate only these")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    for name in args.only or SECTIONS:
        SECTIONS[name]()


if __name__ == "__main__":
    sys.exit(main())
