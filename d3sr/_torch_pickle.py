"""Reads files written by torch.save (the zip format of PyTorch >= 1.6) without torch.

Only plain data comes back: dicts, lists, tuples, numbers, strings and
tensors as NumPy arrays (bfloat16 as float32). Unpickling is restricted to an
allow-list of classes, so a file cannot run code on load: anything else is a
ValueError naming the class. Files come from strangers, so nothing in them is
trusted: a storage entry must hold exactly the elements its record declares,
and a tensor's size, stride and offset must stay inside its storage; any
malformed archive or pickle is a ValueError naming the file. Used by the
checkpoint converters (d3sr._tools).
"""
from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "bfloat16", "DoubleStorage": "<f8",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied.

    The view is checked against the storage first: as_strided trusts its
    arguments, so a size or stride past the end would copy (or fault on)
    whatever memory follows the storage."""
    if not isinstance(storage, np.ndarray):
        raise ValueError(f"a tensor's storage is a {type(storage).__name__}, not a storage record")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
        raise ValueError(f"a tensor has size {size!r} and stride {stride!r}: two tuples of one length were expected")
    if not _is_count(offset) or not all(_is_count(v) for v in size) or not all(_is_count(v) for v in stride):
        raise ValueError(f"a tensor has offset {offset!r}, size {size!r}, stride {stride!r}: "
                         f"non-negative integers were expected")
    numel = 1
    for v in size:
        numel *= v
    if numel == 0:
        return np.zeros(tuple(size), storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))  # the farthest element the view reads
    if last >= storage.size:
        raise ValueError(f"a tensor of size {tuple(size)}, stride {tuple(stride)} and offset {offset} reads "
                         f"element {last} of a storage of {storage.size}")
    if numel > storage.size:
        raise ValueError(f"a tensor of size {tuple(size)} repeats the {storage.size} elements of its storage "
                         f"(an expanded view); save it with .contiguous()")
    if not size:
        return storage[offset].copy()
    itemsize = storage.dtype.itemsize
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


# data.pkl holds the structure only (tensors live in their own entries): a
# LoRA's is a few kilobytes, a full model's a few megabytes.
_MAX_PICKLE_BYTES = 256 << 20


# The pure-Python unpickler: the C one sizes its memo table by the largest
# index a file names, so LONG_BINPUT 2^32 - 1 in a few bytes of input
# allocated gigabytes (found by fuzz/targets.py); here the memo is a dict.
class _Unpickler(pickle._Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages = {}

    # BYTEARRAY8 (protocol 5) allocates the length it names before reading:
    # eight bytes claiming 2^60 were a MemoryError (found by fuzz/targets.py).
    # torch.save pickles with protocol 2, which has no such opcode.
    dispatch = dict(pickle._Unpickler.dispatch)

    def _refuse_bytearray8(self):
        raise pickle.UnpicklingError("BYTEARRAY8 (pickle protocol 5) is not in files torch.save writes")

    dispatch[pickle.BYTEARRAY8[0]] = _refuse_bytearray8

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise ValueError(f"{self._path}: refusing to unpickle {module}.{name} (only tensors and plain data are read)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not _is_count(numel):
            raise ValueError(f"malformed storage record {pid!r}")
        if key not in self._storages:
            dtype = _STORAGE_DTYPES[storage_type.name]
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            name = f"{self._prefix}data/{key}"
            try:
                info = self._archive.getinfo(name)
            except KeyError:
                raise ValueError(f"storage {key!r} is missing from the archive") from None
            # Checked before reading: a small compressed entry can claim gigabytes.
            if info.file_size != numel * itemsize:
                raise ValueError(f"storage {key!r} holds {info.file_size} bytes, its record declares "
                                 f"{numel} elements of {itemsize} bytes")
            raw = self._archive.read(name)
            if dtype == "bfloat16":
                bits = np.frombuffer(raw, "<u2")
                self._storages[key] = (bits.astype(np.uint32) << 16).view(np.float32)
            else:
                self._storages[key] = np.frombuffer(raw, dtype)
        return self._storages[key]


def load(path: str):
    """The object torch.save wrote to path, with tensors as NumPy arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torch file not found: {path}")
    # An OSError past this point is the archive's, not the file system's: a
    # corrupt offset makes zipfile seek before the start (EINVAL).
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error, OSError):
        raise ValueError(f"{path} is not a zip-format torch file (saved by PyTorch < 1.6?); "
                         f"re-save it with a current torch.save") from None
    except NotImplementedError as e:  # a zip feature torch.save never writes, e.g. "zip file version 23.5"
        raise ValueError(f"{path} is not a readable torch file: {e}") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            size = archive.getinfo(pickles[0]).file_size
            if size > _MAX_PICKLE_BYTES:
                raise ValueError(f"{pickles[0]} is {size} bytes; more than {_MAX_PICKLE_BYTES} is not a checkpoint's")
            with archive.open(pickles[0]) as f:
                return _Unpickler(f, archive, prefix, path).load()
        except ValueError as e:
            message = str(e)
            raise ValueError(message if message.startswith(path) else f"{path}: {message}") from None
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, AttributeError,
                TypeError, KeyError, IndexError, RecursionError, UnicodeDecodeError, OverflowError,
                NotImplementedError, OSError) as e:
            raise ValueError(f"{path} is not a readable torch file (corrupt or not saved by torch.save): "
                             f"{type(e).__name__}: {e}") from None
