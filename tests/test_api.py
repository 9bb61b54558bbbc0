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

PUBLIC_MODULES = {"cli", "images", "losses", "metrics", "testing", "viz"}


def test_the_top_level_names_exist():
    for name in d3sr.__all__:
        assert hasattr(d3sr, name), name
    assert {"Upscaler", "Discriminator", "VAE", "UNet", "LoRA", "metrics", "losses"} <= set(d3sr.__all__)


def test_only_the_documented_modules_are_public():
    # libd3sr_cuda.so, the CUDA backend, is a shared object beside the modules, not one of them
    names = {m.name for m in pkgutil.iter_modules(d3sr.__path__) if not m.name.startswith("lib")}
    public = {name for name in names if not name.startswith("_")}
    assert public == PUBLIC_MODULES, f"public modules {sorted(public)}; declared {sorted(PUBLIC_MODULES)}"


def test_import_d3sr_loads_neither_the_cli_nor_the_tools():
    code = "import sys, d3sr; print(sorted(m for m in sys.modules if m.startswith('d3sr')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(d3sr.__file__))).stdout
    assert "d3sr.cli" not in out and "d3sr._tools" not in out, out
