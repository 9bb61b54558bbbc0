"""Executes notebooks/*.ipynb in place from a clean kernel, as the test suite does, and
keeps their outputs (so they read on a code host without running). Run it after editing a
notebook or changing what it shows; needs `pip install ".[notebook]"`.

    python tools/run_notebooks.py [notebooks/01-upscale.ipynb ...]

Each notebook runs in an empty temporary folder, so nothing it writes lands in the repo;
execution timestamps are not recorded, and a notebook whose outputs name a path of this
machine (a home or temporary folder) is refused rather than saved.
"""
import argparse
import glob
import os
import re
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_PATH = re.compile(r"(/home/|/root/|/tmp/|/Users/|/work/|[A-Z]:\\\\Users)")


def local_paths(nb) -> list:
    """Output text that names a folder of the machine the notebook ran on."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") + "".join(str(v) for k, v in output.get("data", {}).items()
                                                    if k.startswith("text/"))
            text += "".join(output.get("traceback", []))
            found += [m.group(0) for m in LOCAL_PATH.finditer(text)]
    return found


def run(path: str, timeout: int = 600):
    """The notebook at path, executed from a clean kernel in an empty folder."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as folder:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": folder}}).execute()
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    args = parser.parse_args()
    paths = args.notebooks or sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
    total = time.perf_counter()
    for path in paths:
        start = time.perf_counter()
        nb = run(path)
        leaks = local_paths(nb)
        if leaks:
            print(f"{path}: outputs name local paths {sorted(set(leaks))}; not saved", file=sys.stderr)
            return 1
        nbformat.write(nb, path)
        print(f"{os.path.relpath(path, ROOT)}: {time.perf_counter() - start:.1f} s")
    print(f"all: {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
