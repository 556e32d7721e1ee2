"""Zero-copy readers for the two array containers the package writes: uncompressed ``.npz`` (datasets) and
``.safetensors`` (teacher artifacts).

Why: N processes on one node (DDP ranks, teacher workers) should share one page-cache copy of a dataset or of an
[N, D] teacher matrix instead of N private copies. ``SeqDataset.load(..., mmap=True)`` and
``TeacherArtifacts.load(..., mmap=True)`` use these; each returns None when a file cannot be mapped (a compressed
member, an object dtype, bf16), and the caller then falls back to its normal, precisely-erroring reader.
Both formats are read from their documented headers only (the npy header via numpy's own parser; the safetensors
header is an 8-byte little-endian length followed by a JSON table of dtype/shape/offsets) — no code runs.
"""
from __future__ import annotations

import json
import mmap as _mmap
import struct
import zipfile
from pathlib import Path

import numpy as np


def memmap(path: Path, dtype: np.dtype, offset: int, shape: tuple, fortran: bool = False) -> np.ndarray:
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.empty(shape, dtype=dtype)
    # mode "c": MAP_PRIVATE — pages stay shared with the page cache (and other processes) unless written
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape, order="F" if fortran else "C")


def mmap_npz(path: str | Path) -> dict[str, np.ndarray] | None:
    """Memory-map every array of an *uncompressed* .npz (what ``np.savez`` writes); None if it can't be mapped."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    with open(path, "rb") as f:
        for zi in infos:
            if zi.compress_type != zipfile.ZIP_STORED or not zi.filename.endswith(".npy"):
                return None
            f.seek(zi.header_offset)
            hdr = f.read(30)
            if hdr[:4] != b"PK\x03\x04":
                return None
            n_name, n_extra = struct.unpack("<HH", hdr[26:30])
            f.seek(zi.header_offset + 30 + n_name + n_extra)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
            if dtype.hasobject:
                return None
            out[zi.filename[:-4]] = memmap(path, dtype, f.tell(), shape, fortran)
    return out


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def mmap_safetensors(path: str | Path) -> dict[str, np.ndarray] | None:
    """Memory-map every tensor of a .safetensors file (None for dtypes numpy can't map, e.g. bf16)."""
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_DTYPES.get(info["dtype"])
        if dt is None:
            return None
        begin, _ = info["data_offsets"]
        out[name] = memmap(path, np.dtype(dt).newbyteorder("<"), base + begin, tuple(info["shape"]))
    return out


MMAP_ERRORS = (OSError, ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile)


def is_mapped(a) -> bool:
    """True if ``a`` (an array, or a view of one) is backed by a memory-mapped file."""
    while a is not None:
        if isinstance(a, (np.memmap, _mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False
