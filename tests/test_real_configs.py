"""The published architectures at full size with random weights: they load from
a file without a second copy in memory, and run at a small latent.

Each model runs in its own process so its peak RSS (ru_maxrss) is its own.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

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
    proc = subprocess.run([sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code)], capture_output=True, text=True)
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
        for name, array in iter_random_weights(unet.weight_shapes(), seed=1):
            unet._model.set_weight(name, array)
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
