"""Builds d3sr._core (the C core and its NumPy binding).

The CPU core always builds; its matrix products link scipy-openblas32, the
OpenBLAS that NumPy and SciPy ship on PyPI. The build has no other
dependency than a C compiler with OpenMP.
"""
import glob
import os

import numpy
import scipy_openblas32
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def sources(*patterns):
    found = []
    for pattern in patterns:
        found += sorted(glob.glob(os.path.join("csrc", pattern)))
    return found


core = Extension(
    "d3sr._core",
    sources=sources("core/*.c", "ops/*.c", "cpu/*.c", "models/*.c", "metrics/*.c", "python/*.c"),
    include_dirs=[numpy.get_include(), scipy_openblas32.get_include_dir()],
    library_dirs=[scipy_openblas32.get_lib_dir()],
    libraries=[scipy_openblas32.get_library(), "dl", "pthread"],
    # -fno-trapping-math -fno-math-errno let clamps and exp vectorise; neither
    # reorders arithmetic, so results stay IEEE float32.
    extra_compile_args=["-std=c11", "-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-fvisibility=hidden", "-Wall", "-Wextra",
                        "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                        "-Wno-format-truncation"],
    # The installed d3sr/ sits beside scipy_openblas32/ in site-packages; d3sr
    # also preloads the library by path before importing _core (d3sr/_native.py).
    extra_link_args=["-fopenmp", "-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib"],
)

setup(ext_modules=[core])
