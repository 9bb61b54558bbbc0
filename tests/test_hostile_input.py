"""Hostile and careless input (issue 13): every case is a clear exception
naming what is wrong, never a crash, a hang or a silently wrong answer.

Cases that could crash the interpreter run in a child process, so a
regression fails one test instead of ending the suite."""
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import d3sr
from d3sr import torch_pickle
from d3sr.tools import convert_osediff

import torch_zip

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_child(code: str, env=None, timeout=120) -> subprocess.CompletedProcess:
    """code in a fresh interpreter with this checkout importable."""
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join([ROOT, HERE] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=timeout)


# ---- 1. the torch pickle reader ----------------------------------------------

def _write(tmp_path, data: bytes, name="model.pkl") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_pickle_tensor_larger_than_its_storage_is_refused(tmp_path):
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    t.size, t.stride = (4096,), (1,)
    path = _write(tmp_path, torch_zip.dumps({"w": t}))
    with pytest.raises(ValueError, match="model.pkl: a tensor of size \\(4096,\\).*storage of 4"):
        torch_pickle.load(path)


@pytest.mark.parametrize("offset, size, stride", [
    (0, (2, 2), (1 << 40, 1)),  # a stride far past the end
    (5, (1,), (1,)),            # an offset past the end
    (0, (3, 3), (3, 1)),        # one row too many
    (-1, (2,), (1,)),           # a negative offset
    (0, (2,), (-1,)),           # a negative stride
    (0, (2.5,), (1,)),          # a fractional size
    (0, (2, 2), (1,)),          # size and stride disagree
    (0, "ab", "ab"),            # not tuples
])
def test_pickle_tensor_outside_its_storage_is_refused(tmp_path, offset, size, stride):
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    t.offset, t.size, t.stride = offset, size, stride
    path = _write(tmp_path, torch_zip.dumps({"w": t}))
    with pytest.raises(ValueError, match="model.pkl"):
        torch_pickle.load(path)


def test_pickle_storage_entry_must_match_its_declared_size(tmp_path):
    # A storage record declaring 4 floats over an entry of 256 MiB of zeros
    # (a few hundred KB compressed) is refused before the entry is read.
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(torch_zip.dumps({"w": t}, storages={"0": b""}))
    with pytest.raises(ValueError, match="storage '0' holds 0 bytes, its record declares 4 elements"):
        torch_pickle.load(str(raw))
    # The size check uses the entry's header, so the 256 MiB entry is never inflated.
    big = tmp_path / "big.pkl"
    payload = torch_zip.dumps({"w": t})
    with zipfile.ZipFile(io.BytesIO(payload)) as src, zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", src.read("archive/data.pkl"))
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(16):
                f.write(chunk)
    assert big.stat().st_size < 20 << 20
    with pytest.raises(ValueError, match="storage '0' holds 268435456 bytes, its record declares 4 elements"):
        torch_pickle.load(str(big))


def test_pickle_missing_storage_and_bad_records_are_value_errors(tmp_path):
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    payload = torch_zip.dumps({"w": t})
    with zipfile.ZipFile(io.BytesIO(payload)) as src:
        pkl = src.read("archive/data.pkl")
    only_pickle = tmp_path / "only.pkl"
    with zipfile.ZipFile(only_pickle, "w") as z:
        z.writestr("archive/data.pkl", pkl)
    with pytest.raises(ValueError, match="only.pkl: storage '0' is missing"):
        torch_pickle.load(str(only_pickle))


@pytest.mark.parametrize("payload", [
    b"",                          # EOFError inside pickle
    b"\x80\x02}q\x00(",          # truncated
    b"garbage that is not a pickle",
    b"\x80\x02cbuiltins\nlen\nq\x00.",  # a global outside the allow-list
    b"\x80\x02ctorch\nFloatStorage\nq\x00)R.",  # calling a storage type
    b"\x80\x02ccollections\nOrderedDict\nq\x00K\x01\x85R.",  # OrderedDict(1): TypeError
])
def test_malformed_pickles_are_value_errors(tmp_path, payload):
    path = tmp_path / "bad.pkl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
    with pytest.raises(ValueError, match="bad.pkl"):
        torch_pickle.load(str(path))


def test_corrupt_zip_is_a_value_error(tmp_path):
    t = torch_zip.tensor(np.arange(4, dtype=np.float32), "0")
    data = bytearray(torch_zip.dumps({"w": t}))
    data[len(data) // 2] ^= 0xFF  # inside the central directory or an entry: CRC or header damage
    for cut in (bytes(data), bytes(data[: len(data) // 3]), b"PK\x03\x04" + bytes(40)):
        path = _write(tmp_path, cut, "cut.pkl")
        with pytest.raises(ValueError, match="cut.pkl"):
            torch_pickle.load(path)


def test_convert_osediff_cli_reports_a_bad_pickle(tmp_path, capsys):
    from d3sr.cli import main

    path = tmp_path / "bad.pkl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00(")
    assert main(["convert-osediff", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "bad.pkl" in capsys.readouterr().err
