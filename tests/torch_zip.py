"""Writes files in torch.save's zip layout without torch, with any tensor
metadata, true or not: the hostile-input tests and the fuzz seeds build
pickles whose sizes, strides, offsets and storages disagree."""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np

STORAGES = {"<f4": "FloatStorage", "<f2": "HalfStorage", "<f8": "DoubleStorage", "<i8": "LongStorage"}


class _Global:
    """Pickled as the global module.name, which need not be importable here."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable
        raise TypeError("a stand-in for pickling only")


@dataclass
class Storage:
    key: str
    data: bytes
    kind: str = "FloatStorage"
    numel: int = -1  # -1: what data holds


@dataclass
class Tensor:
    storage: Storage
    offset: int
    size: Sequence
    stride: Sequence


class _Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            numel = obj.numel if obj.numel >= 0 else len(obj.data) // 4
            return ("storage", _Global("torch", obj.kind), obj.key, "cpu", numel)
        return None

    def _save_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def _save_tensor(self, obj):
        self.save_reduce(_Global("torch._utils", "_rebuild_tensor_v2"),
                         (obj.storage, obj.offset, tuple(obj.size), tuple(obj.stride), False,
                          collections.OrderedDict()), obj=obj)

    dispatch[_Global] = _save_global
    dispatch[Tensor] = _save_tensor


def tensor(array: np.ndarray, key: str) -> Tensor:
    """A contiguous tensor over its own storage."""
    array = np.ascontiguousarray(array)
    kind = STORAGES[array.dtype.str]
    strides = tuple(s // array.itemsize for s in array.strides)
    return Tensor(Storage(key, array.tobytes(), kind, array.size), 0, array.shape, strides)


def dumps(obj, storages: Dict[str, bytes] = None) -> bytes:
    """obj pickled as torch.save's archive/data.pkl, with every Storage it
    reaches written as archive/data/<key> (storages: extra or replaced entries)."""
    found = {}

    def collect(value):
        if isinstance(value, Tensor):
            found[value.storage.key] = value.storage.data
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)

    collect(obj)
    found.update(storages or {})
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for key, data in found.items():
            z.writestr(f"archive/data/{key}", data)
    return out.getvalue()
