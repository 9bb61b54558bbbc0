"""The test data of d3sr-tiny (tests/data/tiny) and the demo photo shipped in the package.

    python tools/tiny/make_reference.py --photos    # cut the held-out crops and the demo photo (needs the photos)
    python tools/tiny/make_reference.py             # the PyTorch reference of d3sr/models/tiny (torch + diffusers)

The crops come from held-out photos of tools/tiny/photos.tsv (never trained on),
at the training scale (longer side 1280). The reference runs the shipped fp16
weights in float32 with diffusers exactly as d3sr.Upscaler runs the generator
(tools/train_tiny.py's Models.generate, eq. 1 in float64) and as
d3sr.Discriminator runs the trunk and head, on one small input each.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data", "tiny")
MODEL = os.path.join(ROOT, "d3sr", "models", "tiny")
DEMO = os.path.join(MODEL, "demo")

# the test crops, 128x128, of three held-out photos at the training scale: at (left, top), or
# None: the photo's most textured tile (EveningGlow's is gravel, noise no model can restore: a boat instead)
TEST_CROPS = {"evening_glow": ("EveningGlow", (440, 430)), "ladybird": ("LadyBird", None),
              "kleiber": ("Kleiber", None)}
TEST_SIDE = 128
DEMO_PHOTO = ("EveningGlow", (300, 300), 512, 384)  # photo, (left, top), width, height


def _train_module():
    spec = importlib.util.spec_from_file_location("train_tiny", os.path.join(ROOT, "tools", "train_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def held_out_photo(train, name: str) -> np.ndarray:
    path = next(p for p in train.read_photo_list("held_out") if name in p)
    return train.load_photo(path)


def make_photos(train) -> None:
    os.makedirs(DATA, exist_ok=True)
    os.makedirs(DEMO, exist_ok=True)
    for out, (name, corner) in TEST_CROPS.items():
        photo = held_out_photo(train, name)
        if corner is None:
            crop = train.textured_crops(photo, TEST_SIDE, 1)[0]
        else:
            crop = photo[corner[1]:corner[1] + TEST_SIDE, corner[0]:corner[0] + TEST_SIDE]
        Image.fromarray(crop).save(os.path.join(DATA, f"{out}.png"))
    name, (left, top), width, height = DEMO_PHOTO
    photo = held_out_photo(train, name)
    Image.fromarray(photo[top:top + height, left:left + width]).save(os.path.join(DEMO, "evening_glow.png"),
                                                                       optimize=True)
    print(f"wrote the crops to {DATA} and the demo photo to {DEMO}")


def _load(cls, folder: str):
    import torch
    from safetensors.torch import load_file

    config = json.load(open(os.path.join(folder, "config.json")))
    model = cls(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    model.load_state_dict({k: v.float() for k, v in
                           load_file(os.path.join(folder, "diffusion_pytorch_model.fp16.safetensors")).items()})
    return model.requires_grad_(False).to(torch.float32)


def make_reference(train) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.numpy import load_file, save_file

    torch.set_num_threads(2)
    gen, disc = os.path.join(MODEL, "generator"), os.path.join(MODEL, "discriminator")
    config = json.load(open(os.path.join(gen, "d3sr.json")))
    vae = _load(AutoencoderKL, os.path.join(gen, "vae"))
    unet = _load(UNet2DConditionModel, os.path.join(gen, "unet"))
    embedding = load_file(os.path.join(gen, "text_embedding.safetensors"))["prompt_embeds"].astype(np.float32)
    sf, t_l = float(config["scaling_factor"]), int(config["timestep"])
    abar = train.abar_table()

    hr = np.asarray(Image.open(os.path.join(DATA, "kleiber.png")))[:80, :96]
    lr = train.downscale(np.ascontiguousarray(hr))[None]                    # [1, 20, 24, 3] uint8
    up = torch.from_numpy(train.upsample(lr))                              # the Upscaler's own bicubic
    with torch.no_grad():
        z = vae.encode(up).latent_dist.mean * sf
        eps = unet(z, torch.tensor([t_l]), encoder_hidden_states=torch.from_numpy(embedding)[None]).sample
        z_h = ((z.double() - np.sqrt(1 - abar[t_l]) * eps.double()) / np.sqrt(abar[t_l])).float()
        out = ((vae.decode(z_h / sf).sample.clamp(-1, 1) + 1) / 2).numpy().transpose(0, 2, 3, 1)

    trunk = _load(UNet2DConditionModel, os.path.join(disc, "unet"))
    head_weights = {k: torch.from_numpy(v.astype(np.float32)) for k, v in
                    load_file(os.path.join(disc, "head.safetensors")).items()}
    head = torch.nn.Sequential(torch.nn.Conv2d(head_weights["0.weight"].shape[1], head_weights["0.weight"].shape[0], 1),
                               torch.nn.SiLU(), torch.nn.Conv2d(head_weights["0.weight"].shape[0], 1, 1))
    head.load_state_dict(head_weights)
    cond = {k: torch.from_numpy(v.astype(np.float32)) for k, v in
            load_file(os.path.join(disc, "conditioning.safetensors")).items()}
    rng = np.random.default_rng(7)
    hr_disc = np.asarray(Image.open(os.path.join(DATA, "ladybird.png")))[:64, :48]
    with torch.no_grad():
        z_disc = vae.encode(torch.from_numpy(np.ascontiguousarray(
            hr_disc[None].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1))).latent_dist.mean * sf
        z_disc = torch.cat([z_disc, z[:, :, :16, :12]])
        noise = torch.from_numpy(rng.standard_normal(tuple(z_disc.shape)).astype(np.float32))
        t = torch.tensor([250, 600])
        a = torch.from_numpy(abar[t.numpy()]).view(-1, 1, 1, 1)
        z_t = (a.sqrt() * z_disc.double() + (1 - a).sqrt() * noise.double()).float()
        n = len(z_t)
        features = train.sdxl_trunk(trunk, z_t, t, cond["prompt_embeds"][None].expand(n, -1, -1),
                                    cond["pooled_prompt_embeds"][None].expand(n, -1), cond["time_ids"][None].expand(n, -1))
        logits = head(features)
    save_file({"lr": np.ascontiguousarray(lr[0]), "output": np.ascontiguousarray(out[0], np.float32),
               "z": np.ascontiguousarray(z_disc.numpy()), "t": t.numpy(), "noise": noise.numpy(),
               "logits": np.ascontiguousarray(logits.numpy())},
              os.path.join(DATA, "reference.safetensors"))
    print(f"wrote {os.path.join(DATA, 'reference.safetensors')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", action="store_true", help="cut the test crops and the demo photo")
    args = parser.parse_args()
    train = _train_module()
    if args.photos:
        make_photos(train)
    else:
        make_reference(train)


if __name__ == "__main__":
    main()
