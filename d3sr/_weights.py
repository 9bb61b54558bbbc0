"""Reading weight files and handing them to a model of the C core, one tensor at a time.

Weights are read from .safetensors files (the format of the safetensors
package, which d3sr's tools write with) into NumPy and copied into the core by
their state_dict names, so loading holds the model's weights plus one tensor,
never two copies of a model. bfloat16 tensors, which NumPy cannot represent,
travel as their raw 16 bits.
"""
from __future__ import annotations

import json
import math
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


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} does not fit a float64")
    return value


def _unique_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice")
        seen[key] = value
    return seen


def parse_json(text, what: str):
    """Strict JSON for files from strangers: no NaN or Infinity (Python's json
    takes them; the JSON standard does not), no number beyond float64, no key
    twice, no nesting deep enough to exhaust the stack. ValueError naming what."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{what} is not valid JSON: nested too deeply") from None


def read_json(path: str) -> dict:
    """A JSON file as a dict; FileNotFoundError or ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, "rb") as f:
        value = parse_json(f.read(), path)
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return value


# safetensors dtype names -> little-endian NumPy dtypes (bfloat16 as its raw bits).
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
_MAX_HEADER_BYTES = 100 << 20


class WeightFile:
    """An open .safetensors file: names, shapes and one tensor at a time.

    Tensors are read with plain file reads, not memory-mapped: a mapped file
    stays resident while it is open, which would double the peak memory of
    loading a model. Errors name the file: a missing file is
    FileNotFoundError, a truncated or corrupt one ValueError.
    """

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weight file not found: {path}")
        self.path = path
        self._file = open(path, "rb")
        try:
            self._entries, self._data_start = self._read_header(os.fstat(self._file.fileno()).st_size)
        except Exception:
            self._file.close()
            raise

    def _corrupt(self, why: str) -> ValueError:
        return ValueError(f"{self.path} is not a readable safetensors file (truncated or corrupt?): {why}")

    def _read_header(self, size: int):
        head = self._file.read(8)
        if len(head) < 8:
            raise self._corrupt("shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        # The length is not printed: for a file of another kind it is just its
        # first 8 bytes read as a number (a text file's first characters).
        if length > min(size - 8, _MAX_HEADER_BYTES):
            raise self._corrupt(f"its first 8 bytes are not a header length that fits the {size}-byte file")
        header = parse_json(self._file.read(length), f"{self.path}: the safetensors header")
        if not isinstance(header, dict):
            raise self._corrupt("header is not a JSON object")
        data_bytes = size - 8 - length
        entries = {}
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._corrupt("__metadata__ must map names to strings")
        for key, info in header.items():
            # As strict as the safetensors library: integer dimensions and
            # offsets (not 2.5 or "3"), a known dtype, nothing else.
            if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info) or \
                    not isinstance(info["dtype"], str) or info["dtype"] not in _DTYPES or not _int_list(info["shape"]) or \
                    not _int_list(info["data_offsets"]) or len(info["data_offsets"]) != 2:
                raise self._corrupt(f"tensor '{key}' has a malformed or unsupported entry {info!r}")
            dtype, shape = np.dtype(_DTYPES[info["dtype"]]), tuple(info["shape"])
            begin, end = info["data_offsets"]
            if not 0 <= begin <= end <= data_bytes or end - begin != math.prod(shape) * dtype.itemsize:
                raise self._corrupt(f"tensor '{key}' lies outside the file or has the wrong byte count")
            entries[key] = (dtype, shape, begin, info["dtype"] == "BF16")
        # Tensors may not share bytes: one write would then change two weights.
        spans = sorted((begin, begin + math.prod(shape) * dtype.itemsize, key)
                       for key, (dtype, shape, begin, _) in entries.items())
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
            if begin < end:
                raise self._corrupt(f"tensors '{first}' and '{second}' overlap")
        return entries, 8 + length

    def keys(self) -> list:
        return list(self._entries)

    def shape(self, key: str) -> Tuple[int, ...]:
        return self._entries[key][1]

    def get(self, key: str) -> Tuple[np.ndarray, bool]:
        """(array, is_bfloat16): bfloat16 tensors come as their uint16 bits."""
        dtype, shape, begin, bf16 = self._entries[key]
        array = np.empty(shape, dtype)
        self._file.seek(self._data_start + begin)
        if self._file.readinto(memoryview(array.reshape(-1)).cast("B")) != array.nbytes:
            raise self._corrupt(f"tensor '{key}' is cut short")
        return array, bf16

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "WeightFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _int_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def load_into(
    model,
    path: str,
    *,
    rename: Callable[[str], str] = lambda name: name,
    skip: Callable[[str], bool] = lambda name: False,
    lora=None,
    what: str = "model",
) -> None:
    """Copies every tensor of a .safetensors file into a core model.

    rename maps a file's key to the model's name (old checkpoint layouts;
    PEFT's `.base_layer` is always mapped back); skip drops keys of parts the
    model does not build (never read, and a LoRA's updates of them are
    ignored); lora (a d3sr.LoRA) is merged into the weights it targets as
    they pass. A key the model does not expect is an
    error naming it, as is a missing one.
    """
    expected = {name: shape for name, shape, _ in model.weights()}
    targets = set()
    if lora is not None:
        lora.check_targets(expected, what, ignore=skip)
        targets = lora.targets()
    with WeightFile(path) as f:
        for key in f.keys():
            name = rename(key.replace(".base_layer.", "."))
            if skip(name):
                continue
            if name not in expected:
                raise ValueError(f"{path}: unexpected weight '{key}': the {what} built from its config has no such parameter")
            array, bf16 = f.get(key)
            if name in targets:
                base = bf16_to_float32(array) if bf16 else array
                if not np.isfinite(base).all():
                    raise ValueError(f"{path}: weight '{key}' contains NaN or Inf")
                array, bf16 = lora.apply(name, base), False
                if not np.isfinite(array).all():
                    raise ValueError(f"{lora.source}: merging the LoRA into '{name}' gives NaN or Inf "
                                     f"(its alpha, lora_A or lora_B is NaN, Inf or too large)")
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


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) to float32 values."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
