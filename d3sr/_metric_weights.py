"""d3sr's metric weight file: where it is looked for, what it holds, and the
converter that makes it from the original PyTorch files.

LPIPS and DISTS need weights that d3sr cannot ship or download: torchvision's
ImageNet AlexNet and VGG16, the lpips package's linear layers (v0.1) and
DISTS_pytorch's alpha and beta. `d3sr convert-metric-weights` reads the
user's local .pth files (this needs torch) and writes one safetensors file;
d3sr.metrics reads that file with no torch. It is looked for at

    1. the weights= argument of d3sr.metrics.lpips / dists / ea_dists,
    2. the environment variable D3SR_METRICS_WEIGHTS,
    3. ~/.cache/d3sr/metrics.safetensors ($XDG_CACHE_HOME/d3sr/... when set),
       where the converter writes by default.

Names in the file: alexnet.features.<i>.{weight,bias} and vgg16.features.<i>.*
(torchvision's state_dict names), lpips.{alex,vgg}.lin<k>.model.1.weight (the
lpips package's), dists.alpha and dists.beta (DISTS_pytorch's).
"""
from __future__ import annotations

import glob
import os
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

ENV = "D3SR_METRICS_WEIGHTS"
FILE_NAME = "metrics.safetensors"

# torchvision's file names for the ImageNet weights (torch.hub's cache keeps these).
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
VGG16_FILE = "vgg16-397923af.pth"

# network -> (prefixes of its weights in the file, what provides each, the converter flags)
NETWORKS = {
    "lpips_alex": (("alexnet.", "lpips.alex."), f"torchvision's AlexNet ({ALEXNET_FILE}) and lpips' weights/v0.1/alex.pth",
                   "--alexnet, --lpips-dir"),
    "lpips_vgg": (("vgg16.", "lpips.vgg."), f"torchvision's VGG16 ({VGG16_FILE}) and lpips' weights/v0.1/vgg.pth",
                  "--vgg16, --lpips-dir"),
    "dists": (("vgg16.", "dists."), f"torchvision's VGG16 ({VGG16_FILE}) and DISTS_pytorch's weights.pt (alpha, beta)",
              "--vgg16, --dists"),
}
LABELS = {"lpips_alex": "LPIPS (alex)", "lpips_vgg": "LPIPS (vgg)", "dists": "DISTS"}

COMMAND = ("d3sr convert-metric-weights --alexnet PATH/{alex} --vgg16 PATH/{vgg} "
           "--lpips-dir PATH/lpips/weights/v0.1 --dists PATH/DISTS_pytorch/weights.pt").format(
               alex=ALEXNET_FILE, vgg=VGG16_FILE)


def default_path() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "d3sr", FILE_NAME)


def resolve(weights: Optional[str] = None) -> Tuple[str, str]:
    """(path, where it came from) of the metric weight file, existing or not."""
    if weights is not None:
        return os.fspath(weights), "the weights= argument"
    if os.environ.get(ENV):
        return os.environ[ENV], f"${ENV}"
    return default_path(), "the default location"


def missing_message(network: str, path: str, source: str, missing: Optional[str] = None) -> str:
    """The error text when the file, or the network's part of it, is missing."""
    _, needs, flags = NETWORKS[network]
    what = LABELS[network]
    if missing is None:
        head = f"{what} needs d3sr's metric weight file, and there is none at {path} ({source})."
    else:
        head = f"{what} needs weights that {path} lacks (the first missing is '{missing}')."
    return (f"{head}\nIt is made once from {needs}, with torch installed:\n    {COMMAND}\n"
            f"({flags} are the ones {what} needs; -o sets where the file goes, by default {default_path()}; "
            f"d3sr.metrics looks at weights=, then ${ENV}, then that default.)")


# ---- converting ------------------------------------------------------------------

def expected_shapes() -> Dict[str, Tuple[int, ...]]:
    """{name: shape} of every weight the three networks take, from the C core."""
    from ._native import _core

    shapes = {}
    for network in NETWORKS:
        for name, shape, _ in _core.perceptual_create(network).weights():
            shapes[name] = tuple(shape)
    return shapes


def convert_state_dicts(
    alexnet: Optional[Mapping[str, np.ndarray]] = None,
    vgg16: Optional[Mapping[str, np.ndarray]] = None,
    lpips: Optional[Mapping[str, Mapping[str, np.ndarray]]] = None,
    dists: Optional[Mapping[str, np.ndarray]] = None,
) -> Dict[str, np.ndarray]:
    """The metric weight file's tensors from the original state dicts (as NumPy):
    torchvision's alexnet / vgg16 (only `features.*` is kept), lpips' per-net
    {'alex': ..., 'vgg': ...} and DISTS' {'alpha', 'beta'} (pyiqa's DISTS file,
    which also holds the VGG16, works: only alpha and beta are read). Every
    tensor is checked against the shape the C core expects."""
    out, sources = {}, []
    for prefix, state in (("alexnet", alexnet), ("vgg16", vgg16)):
        if state is None:
            continue
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        if not features:
            raise ValueError(f"the {prefix} file has no 'features.*' tensors: expected torchvision's state_dict")
        out.update({f"{prefix}.{k}": v for k, v in features.items()})
        sources.append((f"{prefix}.", f"--{prefix}"))
    for net, state in (lpips or {}).items():
        lins = {k: v for k, v in state.items() if k.startswith("lin")}
        if not lins:
            raise ValueError(f"lpips' {net}.pth has no 'lin<k>.model.1.weight' tensors")
        out.update({f"lpips.{net}.{k}": v for k, v in lins.items()})
        sources.append((f"lpips.{net}.", f"--lpips-dir ({net}.pth)"))
    if dists is not None:
        state = dists["params"] if isinstance(dists.get("params"), Mapping) else dists
        for key in ("alpha", "beta"):
            if key not in state:
                raise ValueError(f"the DISTS file has no '{key}': expected DISTS_pytorch's weights.pt")
            out[f"dists.{key}"] = state[key]
        sources.append(("dists.", "--dists"))
    if not out:
        raise ValueError("nothing to convert: give at least one of --alexnet, --vgg16, --lpips-dir, --dists")
    expected = expected_shapes()
    for name, array in out.items():
        if name not in expected:
            raise ValueError(f"unexpected tensor '{name}': none of LPIPS (alex, vgg) or DISTS has it")
        if tuple(array.shape) != expected[name]:
            raise ValueError(f"'{name}' has shape {tuple(array.shape)}, expected {expected[name]}")
        out[name] = np.ascontiguousarray(array, dtype=np.float32)
    for prefix, flag in sources:
        lacking = sorted(n for n in expected if n.startswith(prefix) and n not in out)
        if lacking:
            raise ValueError(f"{flag}: the file lacks '{lacking[0]}' ({len(lacking)} tensors missing)")
    return out


def _torch_load(path: str) -> Dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError("converting the metric weights reads PyTorch .pth files and needs torch "
                          "(pip install torch); d3sr.metrics itself never needs it") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state_dict")
    flat = {}
    for key, value in state.items():
        if isinstance(value, Mapping):  # e.g. pyiqa's {'params': state_dict}
            flat[key] = {k: v.detach().float().numpy() for k, v in value.items() if hasattr(v, "detach")}
        elif hasattr(value, "detach"):
            flat[key] = value.detach().float().numpy()
    return flat


def find_defaults() -> Dict[str, Optional[str]]:
    """Where the original files usually are: torch.hub's checkpoint cache for
    torchvision, the installed lpips and DISTS_pytorch packages for the heads.
    Values are None where nothing was found."""
    found = {"alexnet": None, "vgg16": None, "lpips_dir": None, "dists": None}
    try:
        import torch

        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        for key, name in (("alexnet", ALEXNET_FILE), ("vgg16", VGG16_FILE)):
            if os.path.isfile(os.path.join(hub, name)):
                found[key] = os.path.join(hub, name)
    except ImportError:
        pass
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec and spec.origin:
        folder = os.path.join(os.path.dirname(spec.origin), "weights", "v0.1")
        if os.path.isdir(folder):
            found["lpips_dir"] = folder
    spec = importlib.util.find_spec("DISTS_pytorch")
    if spec and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "weights.pt")
        if os.path.isfile(path):
            found["dists"] = path
    return found


def convert(
    output: Optional[str] = None,
    *,
    alexnet: Optional[str] = None,
    vgg16: Optional[str] = None,
    lpips_dir: Optional[str] = None,
    dists: Optional[str] = None,
) -> Tuple[str, Dict[str, np.ndarray]]:
    """Reads the given .pth files (needs torch) and writes the metric weight
    file to output (default: default_path()). Returns (path, tensors)."""
    from safetensors.numpy import save_file

    lpips = None
    if lpips_dir is not None:
        lpips = {}
        for net in ("alex", "vgg"):
            path = os.path.join(lpips_dir, f"{net}.pth")
            if os.path.isfile(path):
                lpips[net] = _torch_load(path)
        if not lpips:
            found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(lpips_dir, "*.pth")))
            raise FileNotFoundError(f"--lpips-dir {lpips_dir} has neither alex.pth nor vgg.pth (found: {found}); "
                                    f"use the lpips package's weights/v0.1 folder")
    tensors = convert_state_dicts(
        alexnet=_torch_load(alexnet) if alexnet else None,
        vgg16=_torch_load(vgg16) if vgg16 else None,
        lpips=lpips,
        dists=_torch_load(dists) if dists else None,
    )
    output = output or default_path()
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, output, metadata={"format": "d3sr-metrics-1"})
    return output, tensors


def networks_in(tensors) -> list:
    """The networks (LABELS keys) whose weights are all among the names given."""
    names = set(tensors)
    expected = expected_shapes()
    return [net for net, (prefixes, _, _) in NETWORKS.items()
            if all(n in names for n in expected if n.startswith(prefixes))]
