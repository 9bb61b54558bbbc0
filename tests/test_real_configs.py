"""The published architectures at full size with random weights: they load from
a file without a second copy in memory, and run at a small latent.

Each model runs in its own process so its peak RSS (ru_maxrss) is its own.
"""
import json
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

import d3sr
from d3sr.testing import iter_random_weights, real_config, write_safetensors

CHILD_PRELUDE = """
import json, resource, sys, numpy as np
import d3sr
from d3sr.testing import iter_random_weights, real_config
def peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""


def run_child(code: str) -> dict:
    # From a neutral folder: `python -c` puts the working directory first on sys.path, and a
    # source checkout there would shadow the installed d3sr.
    proc = subprocess.run([sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sd21_unet_loads_from_a_file_within_1_3x_its_weights_and_runs(tmp_path):
    """865.9 M parameters (3.46 GB in float32); the SD 2.1-base UNet's real config."""
    folder = tmp_path / "unet"
    folder.mkdir()
    config = real_config("sd21-base-unet")
    (folder / "config.json").write_text(json.dumps(config))
    shapes = d3sr.UNet.from_config(config).weight_shapes()
    path = folder / "diffusion_pytorch_model.safetensors"
    write_safetensors(str(path), shapes, iter_random_weights(shapes, seed=0))
    try:
        result = run_child(f"""
            before = peak_bytes()
            unet = d3sr.UNet.load({str(folder)!r})
            loading = peak_bytes() - before
            rng = np.random.default_rng(0)
            out = unet(rng.standard_normal((1, 4, 8, 8)).astype(np.float32), 399,
                       rng.standard_normal((1, 77, 1024)).astype(np.float32))
            print(json.dumps({{"loading": loading, "weights": unet.memory()["weights"],
                              "shape": list(out.shape), "finite": bool(np.isfinite(out).all()),
                              "std": float(out.std())}}))
        """)
    finally:
        path.unlink()
    params = sum(int(np.prod(s)) for s in shapes.values())
    assert params == 865_910_724
    assert result["weights"] == 4 * params
    assert result["shape"] == [1, 4, 8, 8] and result["finite"] and result["std"] > 0
    assert result["loading"] <= 1.3 * result["weights"], (
        f"loading raised the peak RSS by {result['loading'] / 2**30:.2f} GiB for {result['weights'] / 2**30:.2f} GiB of weights")


def test_sdxl_unet_runs_with_text_time_conditioning():
    """2.57 B parameters: SDXL-base's UNet with its pooled-text and time_ids embedding."""
    result = run_child("""
        unet = d3sr.UNet.from_config(real_config("sdxl-base-unet"))
        before = peak_bytes()
        unet.load_weights(iter_random_weights(unet.weight_shapes(), seed=1))
        loading = peak_bytes() - before
        rng = np.random.default_rng(1)
        out = unet(rng.standard_normal((1, 4, 8, 8)).astype(np.float32), 999,
                   rng.standard_normal((1, 77, 2048)).astype(np.float32),
                   text_embeds=rng.standard_normal((1, 1280)).astype(np.float32),
                   time_ids=np.array([[1024, 1024, 0, 0, 1024, 1024]], np.float32))
        print(json.dumps({"loading": loading, "weights": unet.memory()["weights"], "shape": list(out.shape),
                          "finite": bool(np.isfinite(out).all())}))
    """)
    assert result["weights"] == 4 * 2_567_463_684
    assert result["shape"] == [1, 4, 8, 8] and result["finite"]
    assert result["loading"] <= 1.3 * result["weights"]


def test_sdxl_discriminator_reads_only_the_trunk_and_scores_a_64x64_latent(tmp_path):
    """A full SDXL-base UNet file (10.3 GB of float32 as the header says, written
    sparse: the up blocks are holes) loads as a trunk of 1.24 B parameters."""
    from safetensors.numpy import save_file

    from d3sr._checkpoint import DISCRIMINATOR_DEFAULTS, write_config
    from d3sr._discriminator import init_head

    config = real_config("sdxl-base-unet")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    full = d3sr.UNet.from_config(config).weight_shapes()
    trunk = d3sr.UNet.from_config(config, trunk_only=True).weight_shapes()
    path = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    write_safetensors(str(path), full, iter_random_weights(trunk, seed=3))
    save_file(init_head(1280, 256, seed=0), str(tmp_path / "head.safetensors"))
    save_file({"prompt_embeds": np.zeros((77, 2048), np.float32), "pooled_prompt_embeds": np.zeros(1280, np.float32),
               "time_ids": np.array([512, 512, 0, 0, 512, 512], np.float32)}, str(tmp_path / "conditioning.safetensors"))
    write_config(str(tmp_path), DISCRIMINATOR_DEFAULTS)
    try:
        result = run_child(f"""
            from d3sr import Discriminator
            before = peak_bytes()
            disc = Discriminator.load({str(tmp_path)!r})
            loading = peak_bytes() - before
            z = np.random.default_rng(0).standard_normal((1, 4, 64, 64)).astype(np.float32)
            logits = disc.score_latents(z, 500, seed=0)
            print(json.dumps({{"loading": loading, "weights": disc.trunk.memory()["weights"],
                              "shape": list(logits.shape), "finite": bool(np.isfinite(logits).all())}}))
        """)
    finally:
        path.unlink()
    assert result["weights"] == 4 * sum(int(np.prod(s)) for s in trunk.values())
    assert result["weights"] < 0.5 * 4 * sum(int(np.prod(s)) for s in full.values())
    assert result["shape"] == [1, 1, 16, 16] and result["finite"]
    assert result["loading"] <= 1.3 * result["weights"]
