"""LoRA adapters merged into weights as they load: W += (alpha / rank) B A.

Reads the layouts researchers have: PEFT's (`<module>.lora_A.weight`,
`<module>.lora_B.weight`, adapter names such as `.default` allowed, alpha
from adapter_config.json, else PEFT's default lora_alpha = 8) and diffusers'
older ones (`<module>.lora.down.weight` / `.lora.up.weight`, attention
processors' `to_q_lora.down.weight`, alpha from `<module>.alpha` entries).
Keys may carry a `base_model.model.`, `unet.` or `vae.` prefix. A file may
also hold full weights (as OSEDiff's fully retrained conv_in), which replace
the base weights. Merging happens in NumPy, one weight at a time, while the
model loads; a LoRA key that matches no weight of the model is an error.
"""
from __future__ import annotations

import math
import os
import re
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from ._weights import WeightFile, bf16_to_float32, read_json

PEFT_DEFAULT_ALPHA = 8.0

_PREFIXES = ("base_model.model.", "unet.", "vae.", "transformer.")
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?:"
    r"lora_(?P<peft>[AB])(?:\.[A-Za-z0-9_]+)?\.weight"  # PEFT, optional adapter name
    r"|lora\.(?P<diffusers>down|up)\.weight"             # diffusers LoRACompatible layers
    r"|alpha)$")
_PROCESSOR_KEY = re.compile(
    r"^(?P<block>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?:(?P<which>down|up)\.weight|alpha)$")


class LoRA:
    """Low-rank updates by target weight name, plus full replacement weights."""

    def __init__(self, updates: Mapping[str, Tuple[np.ndarray, np.ndarray, float]],
                 replacements: Optional[Mapping[str, np.ndarray]] = None, source: str = "LoRA"):
        """updates: {weight name: (A [r, in, ...], B [out, r, ...], scale)}, the
        update being scale * B A; replacements: {weight name: array}."""
        self.updates = dict(updates)
        self.replacements = dict(replacements or {})
        self.source = source

    @classmethod
    def load(cls, path: str, *, alpha: Optional[float] = None, strip: Iterable[str] = _PREFIXES) -> "LoRA":
        """A .safetensors file, or a folder with adapter_model.safetensors (or
        pytorch_lora_weights.safetensors) and optionally adapter_config.json.
        alpha overrides every alpha found."""
        path = os.fspath(path)
        config = {}
        if os.path.isdir(path):
            config_path = os.path.join(path, "adapter_config.json")
            if os.path.isfile(config_path):
                config = read_json(config_path)
                for field in ("lora_alpha", "use_rslora", "alpha_pattern"):
                    if field in config:
                        _check_config_field(config, field, config_path)
            for name in ("adapter_model.safetensors", "pytorch_lora_weights.safetensors"):
                if os.path.isfile(os.path.join(path, name)):
                    path = os.path.join(path, name)
                    break
            else:
                raise FileNotFoundError(f"no adapter_model.safetensors or pytorch_lora_weights.safetensors in {path}")
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"LoRA file not found: {path}")
        with WeightFile(path) as f:
            tensors = {}
            for key in f.keys():
                array, bf16 = f.get(key)
                tensors[key] = bf16_to_float32(array) if bf16 else array.astype(np.float32, copy=False)
        return cls.from_state_dict(tensors, config=config, alpha=alpha, strip=strip, source=path)

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, np.ndarray], *, config: Optional[dict] = None,
                        alpha: Optional[float] = None, strip: Iterable[str] = _PREFIXES,
                        source: str = "LoRA") -> "LoRA":
        """Parses a LoRA state dict (see the module's docstring for the layouts)."""
        config = config or {}
        if not isinstance(config, dict):
            raise TypeError(f"{source}: the adapter config must be a dict, not {type(config).__name__}")
        for field in ("lora_alpha", "use_rslora", "alpha_pattern"):
            if field in config:
                _check_config_field(config, field, source)
        if alpha is not None:
            alpha = _alpha_value(alpha, "alpha", source)
        down, up, alphas, replacements = {}, {}, {}, {}
        for key, value in tensors.items():
            name = _strip(key, strip)
            m = _PROCESSOR_KEY.match(name)
            if m:
                proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
                module = f"{m['block']}.{proj}"
                if m["which"] is None:
                    alphas[module] = _alpha_tensor(value, key, source)
                else:
                    (down if m["which"] == "down" else up)[module] = value
                continue
            m = _LORA_KEY.match(name)
            if not m:
                replacements[name] = value
            elif m["peft"]:
                (down if m["peft"] == "A" else up)[m["module"]] = value
            elif m["diffusers"]:
                (down if m["diffusers"] == "down" else up)[m["module"]] = value
            else:
                alphas[m["module"]] = _alpha_tensor(value, key, source)
        for module in set(down) ^ set(up):
            half = "lora_A/down" if module in down else "lora_B/up"
            raise ValueError(f"{source}: module '{module}' has only its {half} weight")
        updates = {}
        for module in sorted(down):
            a, b = down[module], up[module]
            if a.ndim < 2 or a.shape[0] < 1:
                raise ValueError(f"{source}: '{module}' has lora_A of shape {a.shape}; [rank >= 1, in, ...] was expected")
            rank = a.shape[0]
            if b.ndim < 2 or b.shape[1] != rank:
                raise ValueError(f"{source}: '{module}' has lora_A of rank {rank} but lora_B of shape {b.shape}")
            module_alpha = _alpha_for(module, alpha, alphas, config, rank)
            scale = module_alpha / (np.sqrt(rank) if config.get("use_rslora") else rank)
            updates[f"{module}.weight"] = (a, b, float(scale))
        return cls(updates, replacements, source)

    def targets(self) -> set:
        return set(self.updates) | set(self.replacements)

    def check_targets(self, shapes: Mapping[str, Tuple[int, ...]], what: str,
                      ignore: Callable[[str], bool] = lambda name: False) -> None:
        """Every update and replacement must match a weight of the model, shape
        included, except those ignore() names (parts the model does not build)."""
        for name in sorted(self.targets()):
            if ignore(name):
                continue
            if name not in shapes:
                raise ValueError(f"{self.source}: LoRA key '{name}' matches no weight of the {what}")
            shape = tuple(shapes[name])
            if name in self.replacements:
                if tuple(self.replacements[name].shape) != shape:
                    raise ValueError(f"{self.source}: '{name}' has shape {self.replacements[name].shape}, "
                                     f"the {what}'s weight is {shape}")
                continue
            a, b, _ = self.updates[name]
            got = (b.shape[0], a.shape[1]) + tuple(a.shape[2:])
            if got != shape[:len(got)] or len(got) != len(shape):
                raise ValueError(f"{self.source}: the update of '{name}' (B {b.shape} @ A {a.shape}) "
                                 f"does not fit its shape {shape}")

    def apply(self, name: str, weight: np.ndarray) -> np.ndarray:
        """The weight to load for name: replaced, merged, or as it was."""
        if name in self.replacements:
            return self.replacements[name]
        if name not in self.updates:
            return weight
        a, b, scale = self.updates[name]
        delta = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)  # [out, in * k * k]
        return (weight.astype(np.float32) + np.float32(scale) * delta.reshape(weight.shape)).astype(np.float32)

    def __repr__(self) -> str:
        return f"LoRA({len(self.updates)} updates, {len(self.replacements)} replaced weights, from {self.source!r})"


def _strip(key: str, prefixes: Iterable[str]) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _alpha_value(value, what: str, source: str) -> float:
    """A finite alpha: a NaN or infinite one would merge NaN into every weight it touches."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not math.isfinite(value):
        raise ValueError(f"{source}: {what} = {value!r} must be a finite number")
    return float(value)


def _alpha_tensor(value, key: str, source: str) -> float:
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"{source}: '{key}' must hold one alpha value, not shape {array.shape}")
    return _alpha_value(float(array.reshape(-1)[0]), f"'{key}'", source)


def _check_config_field(config: dict, field: str, source: str) -> None:
    value = config[field]
    if field == "lora_alpha":
        _alpha_value(value, "lora_alpha", source)
    elif field == "use_rslora":
        if not isinstance(value, bool):
            raise ValueError(f"{source}: use_rslora = {value!r} must be true or false")
    elif value is not None:  # alpha_pattern
        if not isinstance(value, dict):
            raise ValueError(f"{source}: alpha_pattern must map module patterns to alphas, not {value!r}")
        for pattern, alpha in value.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{source}: alpha_pattern {pattern!r} is not a regular expression ({e})") from None
            _alpha_value(alpha, f"alpha_pattern[{pattern!r}]", source)


def _alpha_for(module: str, override, alphas: Dict[str, float], config: dict, rank: int) -> float:
    if override is not None:
        return float(override)
    if module in alphas:
        return alphas[module]
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(pattern, module):
            return float(value)
    return float(config.get("lora_alpha", PEFT_DEFAULT_ALPHA))


def as_lora(value) -> Optional["LoRA"]:
    """A LoRA from a LoRA, a path, or None."""
    if value is None or isinstance(value, LoRA):
        return value
    return LoRA.load(value)
