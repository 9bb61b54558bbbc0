"""The public surface: what `import d3sr` gives and which modules are public.

Modules whose names start with an underscore are internal and may change;
the rest are the API the README documents. A new public module is a
decision, so it must be added here.
"""
import os
import pkgutil
import subprocess
import sys

import d3sr

PUBLIC_MODULES = {"cli", "distributed", "images", "losses", "metrics", "testing", "viz"}


def test_the_top_level_names_exist():
    for name in d3sr.__all__:
        assert hasattr(d3sr, name), name
    assert {"Upscaler", "Discriminator", "VAE", "UNet", "LoRA", "metrics", "losses"} <= set(d3sr.__all__)


def test_only_the_documented_modules_are_public():
    # libd3sr_cuda.so, the CUDA backend, is a shared object beside the modules, not one of them
    names = {m.name for m in pkgutil.iter_modules(d3sr.__path__) if not m.name.startswith("lib")}
    public = {name for name in names if not name.startswith("_")}
    assert public == PUBLIC_MODULES, f"public modules {sorted(public)}; declared {sorted(PUBLIC_MODULES)}"


def _modules_after(statement: str) -> str:
    code = statement + "; import sys; print(sorted(m for m in sys.modules if m.startswith('d3sr')))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(d3sr.__file__))).stdout


def test_import_d3sr_loads_neither_the_cli_nor_the_tools():
    out = _modules_after("import d3sr")
    assert "d3sr.cli" not in out and "d3sr._tools" not in out, out


def test_the_cli_is_a_layer_on_top_nothing_imports():
    """The command line calls the library; the library (its tools and demo too) never calls it back."""
    out = _modules_after("import d3sr._tools, d3sr._demo, d3sr.images, d3sr.viz, d3sr.distributed, d3sr._evaluation")
    assert "d3sr.cli" not in out, out
    package = os.path.dirname(d3sr.__file__)
    for name in os.listdir(package):
        # d3sr eval and d3sr.distributed share their scoring through d3sr/_evaluation.py.
        if name.endswith(".py") and name != "cli.py":
            with open(os.path.join(package, name), encoding="utf-8") as f:
                assert "from .cli" not in f.read(), f"{name} imports d3sr.cli"
