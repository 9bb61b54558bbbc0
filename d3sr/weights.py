"""Reading weight files and handing them to a model of the C core, one tensor at a time.

Weights are read from .safetensors files with the safetensors package (NumPy
arrays, memory-mapped) and copied into the core by their state_dict names, so
loading holds the model's weights plus one tensor, never two copies of a model.
bfloat16 tensors, which NumPy cannot represent, travel as their raw 16 bits.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

WEIGHTS_NAME = "diffusion_pytorch_model"


def find_weight_file(folder: str, variant: Optional[str] = None, stem: str = WEIGHTS_NAME) -> str:
    """The .safetensors file of a diffusers model folder.

    Looks for `<stem>.safetensors`, then `<stem>.fp16.safetensors` (or only
    `<stem>.<variant>.safetensors` when variant is given).
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    names = [f"{stem}.{variant}.safetensors"] if variant else [f"{stem}.safetensors", f"{stem}.fp16.safetensors"]
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no weight file in {folder}: expected {' or '.join(names)}")


def read_json(path: str) -> dict:
    """A JSON file as a dict; FileNotFoundError or ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return value


class WeightFile:
    """An open .safetensors file: names, shapes and one tensor at a time.

    Errors name the file: a missing file is FileNotFoundError, a truncated or
    corrupt one ValueError.
    """

    def __init__(self, path: str):
        from safetensors import SafetensorError, safe_open

        if not os.path.isfile(path):
            raise FileNotFoundError(f"weight file not found: {path}")
        self.path = path
        self._errors = (SafetensorError, OSError)
        try:
            self._file = safe_open(path, framework="np")
            self._keys = list(self._file.keys())
        except self._errors as e:
            raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
        self._header = None

    def keys(self) -> list:
        return list(self._keys)

    def dtype(self, key: str) -> str:
        """The safetensors dtype name: F32, F16, BF16, ..."""
        return self._file.get_slice(key).get_dtype()

    def shape(self, key: str) -> Tuple[int, ...]:
        return tuple(self._file.get_slice(key).get_shape())

    def get(self, key: str) -> Tuple[np.ndarray, bool]:
        """(array, is_bfloat16): bfloat16 tensors come as uint16 bits."""
        try:
            if self.dtype(key) == "BF16":
                return self._read_bf16_bits(key), True
            return self._file.get_tensor(key), False
        except self._errors as e:
            raise ValueError(f"{self.path}: cannot read tensor '{key}' (truncated or corrupt?): {e}") from None

    def _read_bf16_bits(self, key: str) -> np.ndarray:
        if self._header is None:
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                self._header = (8 + length, json.loads(f.read(length)))
        data_start, header = self._header
        begin, end = header[key]["data_offsets"]
        shape = tuple(header[key]["shape"])
        with open(self.path, "rb") as f:
            f.seek(data_start + begin)
            raw = f.read(end - begin)
        if len(raw) != end - begin:
            raise OSError(f"tensor '{key}' is cut short")
        return np.frombuffer(raw, dtype=np.uint16).reshape(shape)

    def close(self) -> None:
        self._file = None

    def __enter__(self) -> "WeightFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_into(
    model,
    path: str,
    *,
    rename: Callable[[str], str] = lambda name: name,
    skip: Callable[[str], bool] = lambda name: False,
    what: str = "model",
) -> None:
    """Copies every tensor of a .safetensors file into a core model.

    rename maps a file's key to the model's name (old checkpoint layouts);
    skip drops keys of parts the model does not build (never read). A key
    the model does not expect is an error naming it, as is a missing one.
    """
    expected = {name: shape for name, shape, _ in model.weights()}
    with WeightFile(path) as f:
        for key in f.keys():
            name = rename(key)
            if skip(name):
                continue
            if name not in expected:
                raise ValueError(f"{path}: unexpected weight '{key}': the {what} built from its config has no such parameter")
            array, bf16 = f.get(key)
            try:
                model.set_weight(name, array, bfloat16=bf16)
            except (ValueError, TypeError) as e:
                raise type(e)(f"{path}: {e}") from None
    try:
        model.check_complete()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_arrays(model, arrays: Iterable[Tuple[str, np.ndarray]]) -> None:
    """Copies (name, array) pairs into a core model, then checks none is missing."""
    for name, array in arrays:
        model.set_weight(name, array)
    model.check_complete()

