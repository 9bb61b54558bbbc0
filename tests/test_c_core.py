"""The C core builds and runs without Python.h or NumPy (csrc/python/ left out)."""
import glob
import os
import shutil
import subprocess

import pytest
import scipy_openblas32

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_core_builds_and_runs_from_c_alone(tmp_path):
    sources = [f for part in ("core", "ops", "cpu", "models", "metrics")
               for f in sorted(glob.glob(os.path.join(ROOT, "csrc", part, "*.c")))]
    assert not any("python" in f for f in sources)
    exe = str(tmp_path / "core_smoke")
    lib = scipy_openblas32.get_lib_dir()
    cmd = ["cc", "-std=c11", "-O1", "-fopenmp", "-fno-trapping-math", "-Werror=implicit-function-declaration",
           "-I", scipy_openblas32.get_include_dir(), os.path.join(ROOT, "tests", "c", "core_smoke.c"), *sources,
           "-L", lib, f"-l{scipy_openblas32.get_library()}", f"-Wl,-rpath,{lib}", "-ldl", "-lpthread", "-lm", "-o", exe]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([exe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "core smoke: ok" in run.stdout
