"""The CUDA backend.

Everywhere, GPU or not: how the backend reports itself where it cannot run
(cuda_status(), the RuntimeError of device="cuda"), and that libd3sr_cuda.so,
when built, exports its one entry point and checks the ABI and the driver.

On a GPU: every model against the same diffusers/PyTorch references as the
CPU tests (every kernel is checked on every backend in tests/test_ops.py):
fp32 to a relative L2 of 1e-4 block by block, fp16/bf16 end to end to
max(1e-2, twice PyTorch's own error at that precision on the same model and
input), the rule flash-attention uses for its own tolerances. PyTorch's bf16 misses 1e-2 on most of these
models by itself (0.9e-2 to 2.4e-2), so 1e-2 alone would fail a correct bf16
implementation; tools/half_precision_errors.py measured PYTORCH_ERRORS below.
Without a GPU these tests skip, naming the reason.
"""
import ctypes
import os
import threading

import numpy as np
import pytest

import d3sr
from d3sr._native import _core
from d3sr import Discriminator
from d3sr.testing import random_weights, real_config
from conftest import DATA, assert_close, load_reference

AVAILABLE, WHY = _core.cuda_status()
LIBRARY = os.path.join(os.path.dirname(_core.__file__), "libd3sr_cuda.so")
LOADS = os.path.exists(LIBRARY) and "failed to load" not in WHY  # it may miss its CUDA libraries elsewhere
needs_library = pytest.mark.skipif(not LOADS, reason=f"libd3sr_cuda.so is not there or does not load: {WHY}")
needs_gpu = pytest.mark.skipif(not AVAILABLE, reason=f"device 'cuda' is unavailable: {WHY}")
# D3SR_TEST_CUDA_DEVICE=cpu runs the model checks below in fp32 on the
# CPU backend: a check of these tests themselves on a machine without a GPU.
DEVICE = os.environ.get("D3SR_TEST_CUDA_DEVICE", "cuda")
on_device = needs_gpu if DEVICE == "cuda" else pytest.mark.skipif(False, reason="")
DTYPES = ("fp32", "fp16", "bf16") if DEVICE == "cuda" else ("fp32",)

# torch 2.15.0, CPU, eager, every parameter and activation in the half type;
# relative L2 against tests/data's fp32 references (tools/half_precision_errors.py).
PYTORCH_ERRORS = {
    "fp16": {
        "vae_a.encode": 1.12e-03, "vae_a.decode": 1.43e-03, "vae_b.encode": 2.10e-03, "vae_b.decode": 1.50e-03,
        "sd21_vae.encode": 2.57e-03, "sd21_vae.decode": 2.12e-03,
        "unet_sd2.case0": 1.51e-03, "unet_sd2.case1": 1.64e-03, "unet_sdxl.case0": 2.22e-03,
        "unet_sdxl.case0.trunk": 1.91e-03, "unet_sd1.case0": 2.30e-03,
        "generator": 2.59e-03,
        "discriminator.features": 2.15e-03, "discriminator.logits": 1.78e-03, "discriminator.image_logits": 1.88e-03,
    },
    "bf16": {
        "vae_a.encode": 9.30e-03, "vae_a.decode": 1.14e-02, "vae_b.encode": 1.78e-02, "vae_b.decode": 1.54e-02,
        "sd21_vae.encode": 1.93e-02, "sd21_vae.decode": 1.63e-02,
        "unet_sd2.case0": 1.24e-02, "unet_sd2.case1": 1.40e-02, "unet_sdxl.case0": 1.77e-02,
        "unet_sdxl.case0.trunk": 1.78e-02, "unet_sd1.case0": 2.09e-02,
        "generator": 2.42e-02,
        "discriminator.features": 1.84e-02, "discriminator.logits": 1.52e-02, "discriminator.image_logits": 1.95e-02,
    },
}


def tolerance(dtype: str, case: str) -> float:
    return 1e-4 if dtype == "fp32" else max(1e-2, 2 * PYTORCH_ERRORS[dtype][case])


# ---- everywhere: reporting ------------------------------------------------

def test_status_is_consistent():
    assert d3sr.cuda_available() == AVAILABLE
    assert d3sr.cuda_status() == ("" if AVAILABLE else WHY)
    if not AVAILABLE:
        assert WHY, "an unavailable CUDA backend must say why"


@pytest.mark.skipif(AVAILABLE, reason="CUDA is available here")
def test_reason_names_the_cause():
    if not os.path.exists(LIBRARY):
        assert "built without its CUDA backend" in WHY
    else:
        assert any(word in WHY for word in ("driver", "device", "compute capability", "failed to load", "cuDNN")), WHY


@pytest.mark.skipif(AVAILABLE, reason="CUDA is available here")
@pytest.mark.parametrize("make", [
    lambda: d3sr.VAE.from_config({"block_out_channels": [8], "norm_num_groups": 4}, device="cuda", dtype="bf16"),
    lambda: d3sr.UNet.load(os.path.join(DATA, "unet_sd2"), device="cuda", dtype="fp16"),
    lambda: d3sr.Upscaler.load(os.path.join(DATA, "generator_tiny"), device="cuda"),
    lambda: Discriminator.load(os.path.join(DATA, "disc_tiny"), device="cuda", dtype="fp32"),
    lambda: _core.op("conv2d", np.zeros((1, 3, 3, 2), np.float32), np.zeros((1, 2, 1, 1), np.float32), device="cuda"),
], ids=["vae", "unet", "upscaler", "discriminator", "kernel"])
def test_asking_for_cuda_raises_the_reason(make):
    with pytest.raises(RuntimeError, match="device 'cuda' is unavailable") as error:
        make()
    assert WHY in str(error.value)


def test_default_dtype_is_fp32_on_the_cpu_and_bf16_on_cuda():
    from d3sr import _checks

    assert _checks.device_and_dtype("cpu", None) == "fp32"
    assert _checks.device_and_dtype("cuda", None) == "bf16"
    assert _checks.device_and_dtype("cuda", "fp16") == "fp16"
    assert d3sr.VAE.from_config({"block_out_channels": [8], "norm_num_groups": 4}).dtype == "fp32"


class CoreServices(ctypes.Structure):
    """ops/backend.h's d3sr_core_services."""
    _fields_ = [("abi", ctypes.c_int), ("fail", ctypes.c_void_p), ("workspace", ctypes.c_void_p),
                ("threads", ctypes.c_void_p)]


def backend_entry():
    lib = ctypes.CDLL(LIBRARY)
    entry = lib.d3sr_cuda_backend
    entry.restype = ctypes.c_void_p
    entry.argtypes = [ctypes.POINTER(CoreServices), ctypes.c_char_p, ctypes.c_size_t]
    return lib, entry


@needs_library
def test_library_exports_its_entry_point_only():
    """It loads (its RUNPATH finds cuBLAS and cuDNN) and shows nothing but
    d3sr_cuda_backend: neither its kernels nor the static CUDA runtime inside."""
    lib, _ = backend_entry()
    for hidden in ("cudaMalloc", "cudaGetDeviceCount", "cuda_core", "_Z11cuda_conv2dP8d3sr_ctxPK11d3sr_tensorPK9d3sr_convS3_PS1_"):
        with pytest.raises(AttributeError):
            getattr(lib, hidden)


@needs_library
def test_entry_refuses_another_abi():
    _, entry = backend_entry()
    why = ctypes.create_string_buffer(512)
    assert entry(ctypes.byref(CoreServices(abi=999)), why, len(why)) is None
    assert b"ABI" in why.value and b"reinstall" in why.value


@needs_library
@pytest.mark.skipif(AVAILABLE, reason="CUDA is available here (the entry would take these fake services)")
def test_entry_without_a_device_says_why():
    _, entry = backend_entry()
    why = ctypes.create_string_buffer(512)
    assert entry(ctypes.byref(CoreServices(abi=1)), why, len(why)) is None
    assert why.value.decode() == WHY


# ---- on a GPU: models -----------------------------------------------------

def check_blocks(actual: dict, reference: dict, prefix: str, what: str, strip: str = ""):
    """Every captured block against the reference's entries named prefix + block (less strip)."""
    strip = strip or prefix
    expected = {k[len(strip):]: v for k, v in reference.items() if k.startswith(prefix)}
    assert set(actual) == set(expected)
    for block, value in expected.items():
        assert_close(actual[block], value, 1e-4, f"{what} {block}")


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["vae_a", "vae_b"])
def test_vae(name, dtype):
    vae = d3sr.VAE.load(os.path.join(DATA, name), device=DEVICE, dtype=dtype)
    ref = load_reference(os.path.join(DATA, name, "reference.safetensors"))
    mean, enc_blocks = vae.encode(ref["encode.input"], return_intermediates=True)
    image, dec_blocks = vae.decode(ref["decode.input"], return_intermediates=True)
    if dtype == "fp32":
        check_blocks(enc_blocks, ref, "block.encoder.", name, strip="block.")
        check_blocks(dec_blocks, ref, "block.decoder.", name, strip="block.")
    assert_close(mean, ref["encode.mean"], tolerance(dtype, f"{name}.encode"), f"{name} {dtype} posterior mean")
    assert_close(image, ref["decode.output"], tolerance(dtype, f"{name}.decode"), f"{name} {dtype} decoded image")


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_sd21_vae(dtype):
    ref = load_reference(os.path.join(DATA, "sd21_vae_reference.safetensors"))
    vae = d3sr.VAE.from_config(real_config("sd21-vae"), device=DEVICE, dtype=dtype)
    vae.load_weights(random_weights(vae.weight_shapes(), seed=21))
    assert_close(vae.encode(ref["encode.input"]), ref["encode.mean"], tolerance(dtype, "sd21_vae.encode"),
                 f"SD 2.1 VAE encode {dtype}")
    assert_close(vae.decode(ref["decode.input"]), ref["decode.output"], tolerance(dtype, "sd21_vae.decode"),
                 f"SD 2.1 VAE decode {dtype}")


def unet_cases(ref):
    for case in sorted({k.split(".")[0] for k in ref}):
        inputs = {k[len(f"{case}.input."):]: v for k, v in ref.items() if k.startswith(f"{case}.input.")}
        extra = {k: inputs[k] for k in ("text_embeds", "time_ids") if k in inputs}
        yield case, (inputs["sample"], inputs["timesteps"], inputs["encoder_hidden_states"]), extra


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["unet_sd2", "unet_sdxl", "unet_sd1"])
def test_unet(name, dtype):
    unet = d3sr.UNet.load(os.path.join(DATA, name), device=DEVICE, dtype=dtype)
    ref = load_reference(os.path.join(DATA, name, "reference.safetensors"))
    for case, args, extra in unet_cases(ref):
        out, blocks = unet(*args, **extra, return_intermediates=True)
        if dtype == "fp32":
            check_blocks(blocks, ref, f"{case}.block.", f"{name} {case}")
        assert_close(out, ref[f"{case}.output"], tolerance(dtype, f"{name}.{case}"), f"{name} {case} {dtype} output")


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_unet_trunk(dtype):
    trunk = d3sr.UNet.load(os.path.join(DATA, "unet_sdxl"), trunk_only=True, device=DEVICE, dtype=dtype)
    ref = load_reference(os.path.join(DATA, "unet_sdxl", "reference.safetensors"))
    _, args, extra = next(unet_cases(ref))
    assert_close(trunk(*args, **extra), ref["case0.block.mid_block"], tolerance(dtype, "unet_sdxl.case0.trunk"),
                 f"trunk {dtype}")


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_generator(dtype):
    folder = os.path.join(DATA, "generator_tiny")
    ref = load_reference(os.path.join(folder, "reference.safetensors"))
    upscaler = d3sr.Upscaler.load(folder, device=DEVICE, dtype=dtype)
    out = upscaler.upscale(ref["image"], scale=int(ref["scale"][0]))
    assert out.dtype == np.float32 and out.shape == ref["output"].shape
    assert_close(out, ref["output"], tolerance(dtype, "generator"), f"generator {dtype}")


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_discriminator(dtype):
    folder = os.path.join(DATA, "disc_tiny")
    ref = load_reference(os.path.join(folder, "reference.safetensors"))
    disc = Discriminator.load(folder, device=DEVICE, dtype=dtype)
    logits, features = disc.score_latents(ref["z"], ref["t"], noise=ref["noise"], return_features=True)
    assert_close(features, ref["features"], tolerance(dtype, "discriminator.features"), f"features {dtype}")
    assert_close(logits, ref["logits"], tolerance(dtype, "discriminator.logits"), f"logits {dtype}")
    image_logits = disc.score_images(ref["images"], 500, noise=ref["image_noise"])
    assert_close(image_logits, ref["image_logits"], tolerance(dtype, "discriminator.image_logits"), f"image logits {dtype}")


@on_device
@pytest.mark.parametrize("dtype", [d for d in ("fp32", "bf16") if d in DTYPES])
def test_repeated_calls_are_identical_and_allocate_nothing(dtype):
    vae = d3sr.VAE.load(os.path.join(DATA, "vae_b"), device=DEVICE, dtype=dtype)
    z = load_reference(os.path.join(DATA, "vae_b", "reference.safetensors"))["decode.input"]
    first = vae.decode(z)
    held = vae.memory()["activations"]
    for _ in range(5):
        np.testing.assert_array_equal(vae.decode(z), first)
    assert vae.memory()["activations"] == held


@needs_gpu
def test_weights_are_stored_in_the_models_dtype():
    folder = os.path.join(DATA, "vae_a")
    cpu = d3sr.VAE.load(folder).memory()["weights"]
    assert d3sr.VAE.load(folder, device="cuda", dtype="fp32").memory()["weights"] == cpu
    assert d3sr.VAE.load(folder, device="cuda", dtype="bf16").memory()["weights"] == cpu // 2
    default = d3sr.VAE.load(folder, device="cuda")  # bf16 unless asked otherwise
    assert default.dtype == "bf16" and default.memory()["weights"] == cpu // 2


@needs_gpu
def test_models_on_two_threads_keep_their_own_streams():
    """Each model has its own stream and handles: two decoding at once give what each gives alone."""
    folder = os.path.join(DATA, "vae_a")
    z = load_reference(os.path.join(folder, "reference.safetensors"))["decode.input"]
    models = [d3sr.VAE.load(folder, device="cuda", dtype=dtype) for dtype in ("fp16", "bf16")]
    alone = [m.decode(z) for m in models]
    together = [None, None]

    def run(i):
        for _ in range(3):
            together[i] = models[i].decode(z)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


@needs_gpu
def test_cuda_fp32_agrees_with_cpu_block_by_block():
    """The two backends run the same model code: fp32 on the GPU equals the CPU's to float32 rounding."""
    folder = os.path.join(DATA, "unet_sdxl")
    ref = load_reference(os.path.join(folder, "reference.safetensors"))
    _, args, extra = next(unet_cases(ref))
    cpu_out, cpu_blocks = d3sr.UNet.load(folder)(*args, **extra, return_intermediates=True)
    gpu_out, gpu_blocks = d3sr.UNet.load(folder, device="cuda", dtype="fp32")(*args, **extra, return_intermediates=True)
    for block, value in cpu_blocks.items():
        assert_close(gpu_blocks[block], value, 1e-5, f"GPU vs CPU {block}")
    assert_close(gpu_out, cpu_out, 1e-5, "GPU vs CPU output")
