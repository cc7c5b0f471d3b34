"""Layout of a trace file (format v1); ``docs/format.md`` is the specification."""
from __future__ import annotations

import functools
import hashlib

import numpy as np

FORMAT_NAME = "tracediff.trace"
FORMAT_VERSION = 1

KINDS = ("input", "forward", "backward", "param", "param_grad", "loss")

RECORDS = "records"   # compound dataset, one row per record, in execution order
DATA = "data"         # uint8 dataset: the raw bytes of every stored tensor, back to back
STATE = "state"       # int64[2]: records committed, clean close (written last, after each record)

DATA_CHUNK = 1 << 16
RECORDS_CHUNK = 128
SAMPLE_SIZE = 64      # elements kept by a stats-only record


def _str():
    import h5py
    return h5py.string_dtype("utf-8")


@functools.lru_cache(maxsize=None)  # built once: the writer and every open() ask for it
def record_dtype() -> np.dtype:
    s = _str()
    return np.dtype([
        ("name", s), ("kind", s), ("call", "<i4"), ("step", "<i8"),
        ("dtype", s), ("shape", s), ("stored", "u1"),
        ("offset", "<i8"), ("nbytes", "<i8"), ("sample_offset", "<i8"), ("sample_count", "<i8"),
        ("hash", s), ("numel", "<i8"),
        ("min", "<f8"), ("max", "<f8"), ("mean", "<f8"), ("std", "<f8"), ("l2", "<f8"),
        ("nan", "<i8"), ("inf", "<i8"), ("zero_frac", "<f8"),
        ("meta", s),
    ])


def sample_indices(numel: int) -> np.ndarray:
    """The flat indices a stats-only record keeps: seeded by the size alone, so two traces of
    tensors with the same shape sample the same elements and can be compared."""
    return _sample_indices(int(numel))


@functools.lru_cache(maxsize=4096)  # a model's tensors repeat a few sizes, step after step
def _sample_indices(numel: int) -> np.ndarray:
    if numel <= SAMPLE_SIZE:
        indices = np.arange(numel, dtype=np.int64)
    else:
        rng = np.random.default_rng(numel)
        indices = np.sort(rng.choice(numel, SAMPLE_SIZE, replace=False)).astype(np.int64)
    indices.flags.writeable = False  # shared by every caller
    return indices


def tensor_hash(array: np.ndarray) -> str:
    """The content hash stats-only records keep: first 128 bits of the SHA-256 of the C-order
    bytes (SHA-256 is hardware-accelerated on current CPUs: ~3x faster than BLAKE2b here)."""
    import xxhash
    return "xxh3:" + xxhash.xxh3_128_hexdigest(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
