"""Builds d3sr._core (the C core and its NumPy binding) and, where CUDA is
found, d3sr/libd3sr_cuda.so (the CUDA backend, which the core loads only when
a model asks for device="cuda").

The CPU core always builds; its matrix products link scipy-openblas32, the
OpenBLAS that NumPy and SciPy ship on PyPI. The CUDA backend needs nvcc and
the cuBLAS and cuDNN 9 headers and libraries. Environment:

    D3SR_CUDA=1       build the CUDA backend, or fail saying what is missing
    D3SR_CUDA=0       do not build it
    (unset)           build it when nvcc and cudnn.h are found; if that build
                      fails, warn and install without it (a CPU-only install
                      is a normal, supported one)
    D3SR_CUDA_ARCHS   compute capabilities to compile for, default "80;90"
                      (A100; H100 and H200); PTX of the last is embedded too,
                      so newer GPUs run it after a one-time JIT compile
    CUDA_HOME, CUDA_PATH, CUDNN_HOME
                      where a toolkit or cuDNN lives, if not in the usual
                      places; pip's nvidia-* wheels (nvidia/cu13, nvidia/cudnn,
                      ...) on sys.path are searched too
    D3SR_BUILD_JOBS   parallel nvcc processes (default: every core)
"""
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy
import scipy_openblas32
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_LIBRARY = "libd3sr_cuda.so"


def sources(*patterns):
    found = []
    for pattern in patterns:
        found += sorted(glob.glob(os.path.join("csrc", pattern)))
    return found


core = Extension(
    "d3sr._core",
    sources=sources("core/*.c", "ops/*.c", "cpu/*.c", "models/*.c", "metrics/*.c", "images/*.c", "python/*.c"),
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


# ---- the CUDA backend -------------------------------------------------------

class CudaNotFound(Exception):
    """What the CUDA build lacks, in words."""


def _pip_nvidia_roots():
    """Package folders of pip's nvidia-* wheels (nvidia/cu13, nvidia/cudnn, ...)."""
    roots = []
    paths = sysconfig.get_paths()
    for entry in sys.path + [paths["purelib"], paths["platlib"]]:
        base = os.path.join(entry or ".", "nvidia")
        if os.path.isdir(base):
            roots += [d for d in sorted(glob.glob(os.path.join(base, "*"))) if os.path.isdir(d) and d not in roots]
    return roots


def find_cuda():
    """The nvcc, include dirs, libraries (full paths) and run-time search path
    of the CUDA build; raises CudaNotFound naming what is missing."""
    homes = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")]
    nvcc = next((os.path.join(h, "bin", "nvcc") for h in homes if h and os.path.isfile(os.path.join(h, "bin", "nvcc"))),
                None) or shutil.which("nvcc")
    if not nvcc and os.path.isfile("/usr/local/cuda/bin/nvcc"):
        nvcc = "/usr/local/cuda/bin/nvcc"
    if not nvcc:
        raise CudaNotFound("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    toolkit = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    roots = [h for h in homes if h] + [toolkit, os.path.dirname(os.path.dirname(nvcc))]
    roots += [os.environ["CUDNN_HOME"]] if os.environ.get("CUDNN_HOME") else []
    roots += ["/usr/local/cuda", "/usr"] + _pip_nvidia_roots()
    include_dirs, lib_dirs = [], []
    for root in roots:
        for sub in ("include", "targets/x86_64-linux/include"):
            d = os.path.join(root, sub)
            if os.path.isdir(d) and d not in include_dirs:
                include_dirs.append(d)
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "lib/x86_64-linux-gnu"):
            d = os.path.join(root, sub)
            if os.path.isdir(d) and d not in lib_dirs:
                lib_dirs.append(d)

    def header(name):
        for d in include_dirs:
            if os.path.isfile(os.path.join(d, name)):
                return d
        raise CudaNotFound(f"{name} was not found in {include_dirs}")

    def library(name):
        for d in lib_dirs:
            found = sorted(glob.glob(os.path.join(d, name + "*")), key=len)
            found = [f for f in found if f.endswith(".a") == name.endswith(".a")]
            if found:
                return found[0]
        raise CudaNotFound(f"{name} was not found in {lib_dirs}")

    needed = [header(h) for h in ("cuda_runtime.h", "cublasLt.h", "cudnn.h")]
    version = open(os.path.join(header("cudnn_version.h"), "cudnn_version.h")).read()
    major = next((int(line.split()[2]) for line in version.splitlines() if line.startswith("#define CUDNN_MAJOR")), 0)
    if major < 9:
        raise CudaNotFound(f"cuDNN {major} was found; the CUDA backend needs cuDNN 9")
    libs = [library(n) for n in ("libcublasLt.so", "libcublas.so", "libcudnn.so")]
    cudart = library("libcudart_static.a")
    includes = []
    for d in needed:
        if d not in includes:
            includes.append(d)
    # Where the libraries are now, and where pip's wheels put them beside an
    # installed d3sr/ in site-packages.
    rpath = ["$ORIGIN/../nvidia/cu13/lib", "$ORIGIN/../nvidia/cudnn/lib", "$ORIGIN/../nvidia/cublas/lib"]
    for lib in libs:
        d = os.path.dirname(os.path.realpath(lib))
        if d not in rpath:
            rpath.append(d)
    return nvcc, includes, libs, cudart, rpath


def cuda_archs():
    raw = os.environ.get("D3SR_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
    archs = [a.strip().replace(".", "") for a in raw if a.strip()]
    for a in archs:
        if not a.isdigit() or int(a) < 80:
            raise CudaNotFound(f"D3SR_CUDA_ARCHS has {a!r}: the CUDA backend needs compute capability 8.0 or newer (e.g. 80;90)")
    return archs


class BuildExt(build_ext):
    """build_ext that also builds the CUDA backend (see the module docstring)."""

    def run(self):
        super().run()
        self.build_cuda()

    def cuda_output(self):
        return os.path.join(os.path.dirname(self.get_ext_fullpath("d3sr._core")), CUDA_LIBRARY)

    def get_outputs(self):
        outputs = super().get_outputs()
        if os.path.exists(self.cuda_output()):
            outputs.append(self.cuda_output())
        return outputs

    def build_cuda(self):
        mode = os.environ.get("D3SR_CUDA", "").strip()
        output = self.cuda_output()
        if mode == "0":
            self.remove_stale(output, "D3SR_CUDA=0")
            return
        try:
            found = find_cuda()
            archs = cuda_archs()
        except CudaNotFound as e:
            if mode == "1":
                raise SystemExit(f"D3SR_CUDA=1, but the CUDA backend cannot be built: {e}")
            self.remove_stale(output, str(e))
            return
        try:
            self.compile_cuda(found, archs, output)
        except (subprocess.CalledProcessError, OSError) as e:
            if mode == "1":
                raise SystemExit(f"building the CUDA backend failed: {e}")
            print(f"WARNING: building the CUDA backend failed ({e}); d3sr is installed without it "
                  "(device='cuda' will say so). Set D3SR_CUDA=0 to skip it, D3SR_CUDA=1 to make this an error.",
                  file=sys.stderr)
            self.remove_stale(output, "its build failed")

    @staticmethod
    def remove_stale(output, why):
        print(f"d3sr: not building the CUDA backend: {why}", file=sys.stderr)
        if os.path.exists(output):
            os.remove(output)

    def compile_cuda(self, found, archs, output):
        nvcc, includes, libs, cudart, rpath = found
        gencode = []
        for a in archs:
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
        flags = ["-std=c++20", "-O3", "-lineinfo", "-Xcompiler", "-fPIC,-fvisibility=hidden,-Wall,-Wno-unused-parameter",
                 "-I" + os.path.join(HERE, "csrc")] + ["-I" + d for d in includes] + gencode
        srcs = sorted(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
        headers = [f for pattern in ("cuda/*.cuh", "core/*.h", "ops/*.h", "d3sr.h")
                   for f in glob.glob(os.path.join(HERE, "csrc", pattern))]
        newest_header = max(os.path.getmtime(f) for f in headers)
        obj_dir = os.path.join(os.path.abspath(self.build_temp), "cuda")
        os.makedirs(obj_dir, exist_ok=True)
        stamp = " ".join([nvcc] + flags)

        def compile_one(src):
            obj = os.path.join(obj_dir, os.path.basename(src)[:-3] + ".o")
            stamp_file = obj + ".flags"
            fresh = (os.path.exists(obj) and os.path.exists(stamp_file) and open(stamp_file).read() == stamp
                     and os.path.getmtime(obj) >= max(os.path.getmtime(src), newest_header))
            if not fresh:
                print(f"nvcc {os.path.relpath(src, HERE)} (sm {', '.join(archs)})", file=sys.stderr)
                subprocess.run([nvcc] + flags + ["-c", src, "-o", obj], check=True)
                with open(stamp_file, "w") as f:
                    f.write(stamp)
            return obj

        jobs = int(os.environ.get("D3SR_BUILD_JOBS", "0") or 0) or os.cpu_count() or 1
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            objs = list(pool.map(compile_one, srcs))
        os.makedirs(os.path.dirname(output), exist_ok=True)
        # Linked by the host compiler, not nvcc: no shell sees $ORIGIN. cudart is
        # static and its symbols stay inside (--exclude-libs), so a process that
        # also loads PyTorch's libcudart cannot mix the two up.
        cxx = os.environ.get("CXX", "g++")
        link = [cxx, "-shared", "-o", output] + objs + libs + [cudart, "-lrt", "-lpthread", "-ldl",
                                                                 "-Wl,--no-undefined", "-Wl,--exclude-libs,ALL",
                                                                 "-Wl,-rpath," + ":".join(rpath)]
        print(f"linking {os.path.relpath(output, HERE)}", file=sys.stderr)
        subprocess.run(link, check=True)


setup(ext_modules=[core], cmdclass={"build_ext": BuildExt})
