"""Reads files written by torch.save (the zip format of PyTorch >= 1.6) without torch.

Only plain data comes back: dicts, lists, tuples, numbers, strings and
tensors as NumPy arrays (bfloat16 as float32). Unpickling is restricted to an
allow-list of classes, so a file cannot run code on load: anything else is a
ValueError naming the class. Used by the checkpoint converters (d3sr._tools).
"""
from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "bfloat16", "DoubleStorage": "<f8",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied."""
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset].copy()
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *_ignored):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise ValueError(f"{self._path}: refusing to unpickle {module}.{name} (only tensors and plain data are read)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ValueError(f"{self._path}: unknown persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            dtype = _STORAGE_DTYPES[storage_type.name]
            if dtype == "bfloat16":
                bits = np.frombuffer(raw, "<u2")
                self._storages[key] = (bits.astype(np.uint32) << 16).view(np.float32)
            else:
                self._storages[key] = np.frombuffer(raw, dtype)
        return self._storages[key]


def load(path: str):
    """The object torch.save wrote to path, with tensors as NumPy arrays."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a zip-format torch file (saved by PyTorch < 1.6?); "
                         f"re-save it with a current torch.save") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            return _Unpickler(f, archive, prefix, path).load()
