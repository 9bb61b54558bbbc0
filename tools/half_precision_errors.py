"""How far PyTorch's own fp16 and bf16 land from the fp32 references in tests/data.

tests/test_cuda.py holds d3sr's fp16/bf16 results to max(1e-2, twice the
error of the same-precision PyTorch model on the same weights and inputs), the
rule flash-attention uses for its own tolerances: bf16 keeps 8 significant
bits, and PyTorch's bf16 already misses 1e-2 on several of these models. This script
measures those errors (on the CPU, eager, every parameter and activation in
the half type) and prints the table test_cuda.py keeps as PYTORCH_ERRORS.

Needs torch, diffusers and peft, like tools/make_references.py:

    ~/d3sr-ref/bin/python tools/half_precision_errors.py
"""
import json
import os

import numpy as np
import torch

from make_references import (DATA, DISCRIMINATOR, GENERATOR, UNET_LORA_TARGETS, VAE_LORA_TARGETS,
                             bicubic, load_numpy, testing)


def rel(actual, expected) -> float:
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


def load(cls, name, dtype):
    from safetensors.torch import load_file

    config = json.load(open(os.path.join(DATA, name, "config.json")))
    model = cls(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    weights = next(f for f in os.listdir(os.path.join(DATA, name)) if f.startswith("diffusion_pytorch_model"))
    model.load_state_dict({k: v.float() for k, v in load_file(os.path.join(DATA, name, weights)).items()})
    return model.to(dtype)


def merge_lora(model, config, path, dtype):
    """PEFT's adapter from a file, merged into the weights (as d3sr merges), in float32, then cast."""
    from peft import set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    model.float().add_adapter(config)
    set_peft_model_state_dict(model, {k: v for k, v in load_file(path).items() if not k.endswith(".alpha")})
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    return model.to(dtype)


def vae_errors(dtype):
    from diffusers import AutoencoderKL

    out = {}
    for name in ("vae_a", "vae_b"):
        ref = load_numpy(os.path.join(DATA, name, "reference.safetensors"))
        vae = load(AutoencoderKL, name, dtype)
        with torch.no_grad():
            mean = vae.encode(torch.from_numpy(ref["encode.input"]).to(dtype)).latent_dist.mean
            image = vae.decode(torch.from_numpy(ref["decode.input"]).to(dtype)).sample
        out[f"{name}.encode"] = rel(mean.float().numpy(), ref["encode.mean"])
        out[f"{name}.decode"] = rel(image.float().numpy(), ref["decode.output"])
    ref = load_numpy(os.path.join(DATA, "sd21_vae_reference.safetensors"))
    vae = AutoencoderKL.from_config(testing.real_config("sd21-vae")).eval()
    shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    vae.load_state_dict({k: torch.from_numpy(v) for k, v in testing.random_weights(shapes, seed=21).items()})
    vae = vae.to(dtype)
    with torch.no_grad():
        out["sd21_vae.encode"] = rel(vae.encode(torch.from_numpy(ref["encode.input"]).to(dtype)).latent_dist.mean.float().numpy(),
                                     ref["encode.mean"])
        out["sd21_vae.decode"] = rel(vae.decode(torch.from_numpy(ref["decode.input"]).to(dtype)).sample.float().numpy(),
                                     ref["decode.output"])
    return out


def unet_errors(dtype):
    from diffusers import UNet2DConditionModel

    out = {}
    for name in ("unet_sd2", "unet_sdxl", "unet_sd1"):
        ref = load_numpy(os.path.join(DATA, name, "reference.safetensors"))
        unet = load(UNet2DConditionModel, name, dtype)
        for case in sorted({k.split(".")[0] for k in ref}):
            inp = {k[len(f"{case}.input."):]: v for k, v in ref.items() if k.startswith(f"{case}.input.")}
            kwargs = {}
            if "text_embeds" in inp:
                kwargs["added_cond_kwargs"] = {"text_embeds": torch.from_numpy(inp["text_embeds"]).to(dtype),
                                               "time_ids": torch.from_numpy(inp["time_ids"]).to(dtype)}
            store = {}
            hook = unet.mid_block.register_forward_hook(lambda _m, _i, o: store.update(mid=o))
            with torch.no_grad():
                sample = unet(torch.from_numpy(inp["sample"]).to(dtype), torch.from_numpy(inp["timesteps"]),
                              encoder_hidden_states=torch.from_numpy(inp["encoder_hidden_states"]).to(dtype),
                              **kwargs).sample
            hook.remove()
            out[f"{name}.{case}"] = rel(sample.float().numpy(), ref[f"{case}.output"])
            if name == "unet_sdxl":
                out[f"{name}.{case}.trunk"] = rel(store["mid"].float().numpy(), ref[f"{case}.block.mid_block"])
    return out


def generator_error(dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig

    folder = os.path.join(DATA, "generator_tiny")
    ref = load_numpy(os.path.join(folder, "reference.safetensors"))
    vae = merge_lora(load(AutoencoderKL, "vae_a", torch.float32), LoraConfig(r=2, target_modules=VAE_LORA_TARGETS),
                     os.path.join(DATA, "lora_unet", "vae_encoder_lora.safetensors"), dtype)
    unet = merge_lora(load(UNet2DConditionModel, "unet_sd2", torch.float32),
                      LoraConfig(r=4, lora_alpha=16, target_modules=UNET_LORA_TARGETS),
                      os.path.join(DATA, "lora_unet", "adapter_model.safetensors"), dtype)
    embedding = load_numpy(os.path.join(folder, "text_embedding.safetensors"))["prompt_embeds"]
    images, scale, sf, t = ref["image"], int(ref["scale"][0]), 0.18215, GENERATOR["timestep"]
    up = bicubic(images, scale) * 2 - 1
    h, w = up.shape[1:3]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    x = np.pad(up, ((0, 0), (0, -h % factor), (0, -w % factor), (0, 0)), mode="reflect").transpose(0, 3, 1, 2)
    abar = np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2)[t]
    with torch.no_grad():
        z = vae.encode(torch.from_numpy(np.ascontiguousarray(x)).to(dtype)).latent_dist.mean.float() * sf
        context = torch.from_numpy(embedding)[None].expand(len(images), -1, -1).to(dtype)
        eps = unet(z.to(dtype), torch.tensor([t] * len(images)), encoder_hidden_states=context).sample.float()
        z_h = ((z.double() - np.sqrt(1 - abar) * eps.double()) / np.sqrt(abar)).float()
        image = vae.decode((z_h / sf).to(dtype)).sample.float().clamp(-1, 1).numpy()
    image = ((image + 1) / 2)[:, :, :h, :w].transpose(0, 2, 3, 1)
    return {"generator": rel(image, ref["output"])}


def discriminator_errors(dtype):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from make_references import sdxl_trunk
    from peft import LoraConfig

    folder = os.path.join(DATA, "disc_tiny")
    ref = load_numpy(os.path.join(folder, "reference.safetensors"))
    cond = load_numpy(os.path.join(folder, "conditioning.safetensors"))
    unet = merge_lora(load(UNet2DConditionModel, "unet_sdxl", torch.float32),
                      LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "conv1"]),
                      os.path.join(folder, "unet_lora.safetensors"), dtype)
    head = torch.nn.Sequential(torch.nn.Conv2d(32, 16, 1), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(16, 1, 1))
    head.load_state_dict({k: torch.from_numpy(v) for k, v in load_numpy(os.path.join(folder, "head.safetensors")).items()})
    head = head.to(dtype)

    def score(z_t, t):
        n = len(z_t)
        with torch.no_grad():
            features = sdxl_trunk(unet, torch.from_numpy(z_t).to(dtype), torch.from_numpy(t),
                                  torch.from_numpy(cond["prompt_embeds"])[None].expand(n, -1, -1).to(dtype),
                                  torch.from_numpy(cond["pooled_prompt_embeds"])[None].expand(n, -1).to(dtype),
                                  torch.from_numpy(cond["time_ids"])[None].expand(n, -1).to(dtype))
            return features, head(features)

    features, logits = score(ref["z_t"], ref["t"])
    vae = load(AutoencoderKL, "vae_a", dtype)  # DISCRIMINATOR["vae"]: the VAE without a LoRA
    assert DISCRIMINATOR["vae"] == "../vae_a"
    images = np.ascontiguousarray(ref["images"].transpose(0, 3, 1, 2) * 2 - 1, dtype=np.float32)
    with torch.no_grad():
        z = (vae.encode(torch.from_numpy(images).to(dtype)).latent_dist.mean.float() * 0.18215)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    t = np.array([500] * len(z), np.int64)
    z_t = scheduler.add_noise(z, torch.from_numpy(ref["image_noise"]), torch.from_numpy(t)).numpy()
    _, image_logits = score(z_t, t)
    return {"discriminator.features": rel(features.float().numpy(), ref["features"]),
            "discriminator.logits": rel(logits.float().numpy(), ref["logits"]),
            "discriminator.image_logits": rel(image_logits.float().numpy(), ref["image_logits"])}


def main() -> None:
    table = {}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        errors = {}
        for part in (vae_errors, unet_errors, generator_error, discriminator_errors):
            errors.update(part(dtype))
        table[name] = errors
    print(f"# torch {torch.__version__}, CPU, eager; relative L2 against tests/data's fp32 references")
    print("PYTORCH_ERRORS = {")
    for name, errors in table.items():
        print(f"    {name!r}: {{")
        for case, err in errors.items():
            print(f"        {case!r}: {err:.2e},")
        print("    },")
    print("}")


if __name__ == "__main__":
    main()
