"""Refactors of the core must not change a single bit of the CPU's output.

tests/data/bit_identity.safetensors holds what the CPU backend computed, on
the machine kind this project is developed and tested on, before the forwards
lost their hand-written frees (activation lifetimes now come from the planning
pass): every model on its reference inputs, at 2 threads. This test recomputes
them and asks for equality, bit for bit. Results may legitimately differ in
the last bits on another processor or OpenBLAS kernel (other vector paths,
another summation order), so there it compares to 1e-6 and says why.

Written by running this file as a script with the build under test:

    python tests/test_bit_identity.py --write
"""
import os
import sys

import numpy as np
import pytest
import scipy_openblas32

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
FIXTURE = os.path.join(DATA, "bit_identity.safetensors")


def blas_kernel() -> str:
    """The OpenBLAS kernel in use (it decides the matrix products' summation order)."""
    config = scipy_openblas32.get_openblas_config()
    return config.split("NO_AFFINITY")[-1].split("MAX_THREADS")[0].strip() or config


def compute() -> dict:
    import d3sr
    from safetensors.numpy import load_file

    d3sr.set_num_threads(2)
    try:
        out = {}
        for name in ("vae_a", "vae_b"):
            ref = load_file(os.path.join(DATA, name, "reference.safetensors"))
            vae = d3sr.VAE.load(os.path.join(DATA, name))
            out[f"{name}.encode"] = vae.encode(ref["encode.input"])
            out[f"{name}.decode"] = vae.decode(ref["decode.input"])
        for name in ("unet_sd1", "unet_sd2", "unet_sdxl"):
            ref = load_file(os.path.join(DATA, name, "reference.safetensors"))
            unet = d3sr.UNet.load(os.path.join(DATA, name))
            inputs = {k[len("case0.input."):]: v for k, v in ref.items() if k.startswith("case0.input.")}
            extra = {k: inputs[k] for k in ("text_embeds", "time_ids") if k in inputs}
            out[name] = unet(inputs["sample"], inputs["timesteps"], inputs["encoder_hidden_states"], **extra)
        gen = os.path.join(DATA, "generator_tiny")
        ref = load_file(os.path.join(gen, "reference.safetensors"))
        out["generator"] = d3sr.Upscaler.load(gen).upscale(ref["image"], scale=int(ref["scale"][0]))
        disc_dir = os.path.join(DATA, "disc_tiny")
        ref = load_file(os.path.join(disc_dir, "reference.safetensors"))
        out["discriminator"] = d3sr.Discriminator.load(disc_dir).score_latents(ref["z"], ref["t"], noise=ref["noise"])
        return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
    finally:
        d3sr.set_num_threads(0)


def test_cpu_outputs_are_bit_identical_to_before():
    from safetensors import safe_open

    with safe_open(FIXTURE, "numpy") as f:
        recorded_on = f.metadata()["blas_kernel"]
        stored = {k: f.get_tensor(k) for k in f.keys()}
    now = compute()
    assert set(now) == set(stored)
    same_kernels = blas_kernel() == recorded_on
    for name, expected in stored.items():
        if same_kernels:
            np.testing.assert_array_equal(now[name], expected, err_msg=name)
        else:
            err = np.linalg.norm(now[name] - expected) / np.linalg.norm(expected)
            assert err < 1e-6, f"{name}: relative L2 {err:.2e} (OpenBLAS kernel {blas_kernel()}, recorded {recorded_on})"
    if not same_kernels:
        pytest.skip(f"equal to 1e-6 only: OpenBLAS runs {blas_kernel()} here, the fixture was recorded on {recorded_on}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    from safetensors.numpy import save_file

    save_file(compute(), FIXTURE, metadata={"blas_kernel": blas_kernel()})
    print("wrote", FIXTURE)
