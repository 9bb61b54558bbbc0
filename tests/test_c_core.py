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


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_half_conversion_equals_the_cast_bit_for_bit(tmp_path):
    """csrc/core/half.c (F16C where the CPU has it; float16 parking uses it)
    converts as the C cast to _Float16 does, ties and range ends included."""
    exe = str(tmp_path / "half_check")
    build = subprocess.run(["cc", "-std=c11", "-O2", "-fno-trapping-math", os.path.join(ROOT, "tests", "c", "half_check.c"),
                            os.path.join(ROOT, "csrc", "core", "half.c"), "-lm", "-o", exe], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([exe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "half check: ok" in run.stdout
