"""What the CPU and GPU benchmarks share: the tasks' inputs and timesteps, and
reference code loaded by path (the benchmarks run without d3sr's source tree
on sys.path: `python -P`, or against an installed d3sr).

    common = load_module("benchmarks/common.py")   # from either benchmark
"""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMESTEP = 399       # the generator's T_L
DISC_TIMESTEP = 500  # the discriminator trunk's t


def load_module(relative_path: str):
    """A module of this repository by its path, without importing d3sr."""
    name = os.path.splitext(os.path.basename(relative_path))[0]
    spec = importlib.util.spec_from_file_location(f"d3sr_bench_{name}", os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_testing():
    """d3sr/testing.py: seeded weights and the published configs (NumPy only)."""
    return load_module(os.path.join("d3sr", "testing.py"))


def sdxl_trunk(*args):
    """tools/make_references.py's sdxl_trunk: diffusers' UNet run to its mid block."""
    return load_module(os.path.join("tools", "make_references.py")).sdxl_trunk(*args)


def task_inputs(task: str, size: int) -> dict:
    """The input arrays of a task, the same in every engine."""
    import numpy as np

    testing = load_testing()
    rng = np.random.default_rng(1)
    if task == "vae_encode":
        return {"x": testing.random_images((1, 3, size, size), seed=1)}
    if task == "vae_decode":
        return {"z": rng.standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)}
    if task == "disc_trunk":
        return {"z": rng.standard_normal((2, 4, size // 8, size // 8)).astype(np.float32),
                "context": rng.standard_normal((2, 77, 2048)).astype(np.float32),
                "text_embeds": rng.standard_normal((2, 1280)).astype(np.float32),
                "time_ids": np.tile(np.array([[size, size, 0, 0, size, size]], np.float32), (2, 1))}
    context = rng.standard_normal((1, 77, 1024)).astype(np.float32)
    if task == "unet":
        return {"z": rng.standard_normal((1, 4, size // 8, size // 8)).astype(np.float32), "context": context}
    image = (testing.random_images((1, 3, size // 4, size // 4), seed=1)[0].transpose(1, 2, 0) + 1) / 2
    return {"image": image.astype(np.float32), "context": context}
