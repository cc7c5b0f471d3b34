"""Layout of a trace file (format v3; v2 and v1 still read); ``docs/format.md`` is the specification."""
from __future__ import annotations

import functools
import hashlib

import numpy as np

FORMAT_NAME = "tracediff.trace"
FORMAT_VERSION = 3

KINDS = ("input", "forward", "backward", "param", "param_grad", "loss")  # v2 stores the position

RECORDS = "records"   # compound dataset, one row per record, in execution order
DATA = "data"         # uint8 dataset: the raw bytes of every stored tensor, back to back
STRINGS = "strings"   # uint8 dataset (v2): each record's text fields, UTF-8, back to back
STATE = "state"       # int64[2]: records committed, clean close (written last, after each record)

# A record's text fields lie back to back in STRINGS from its `strings_offset`, in this order,
# each as long as its `<field>_len` (bytes).
TEXT_FIELDS = ("name", "dtype", "shape", "hash", "meta")

DATA_CHUNK = 1 << 16
# A trace expected to hold LARGE_TRACE bytes or more (the adapter's estimate) gets data chunks
# of LARGE_DATA_CHUNK: a sixteenth of the chunks to allocate and index, ~40% faster writes;
# small traces keep small chunks, since HDF5 stores the last one whole.
LARGE_DATA_CHUNK = 1 << 20
LARGE_TRACE = 64 << 20
STRINGS_CHUNK = 1 << 14   # a record's text is ~50 bytes: a smaller chunk keeps small traces small
RECORDS_CHUNK = 128
SAMPLE_SIZE = 64      # elements kept by a stats-only record

# v3 adds the decode step of a generation and the batch of an evaluation set beside the
# training step: three distinct positions of a record, each -1 where it does not apply.
POSITION_FIELDS = ("step", "decode_step", "batch_index")

_NUMBERS = [
    ("call", "<i4"), ("step", "<i8"), ("decode_step", "<i8"), ("batch_index", "<i8"), ("stored", "u1"),
    ("offset", "<i8"), ("nbytes", "<i8"), ("sample_offset", "<i8"), ("sample_count", "<i8"),
    ("numel", "<i8"),
    ("min", "<f8"), ("max", "<f8"), ("mean", "<f8"), ("std", "<f8"), ("l2", "<f8"),
    ("nan", "<i8"), ("inf", "<i8"), ("zero_frac", "<f8"),
]


@functools.lru_cache(maxsize=None)  # built once: the writer and every open() ask for it
def record_dtype() -> np.dtype:
    """The v3 index row: fixed-size numbers only, so a file holds no variable-length data
    (HDF5 keeps that in global heaps, where one flipped bit can hang libhdf5 forever)."""
    return np.dtype([("kind", "u1")] + _NUMBERS + [("strings_offset", "<i8")]
                    + [(f"{name}_len", "<i4") for name in TEXT_FIELDS])


@functools.lru_cache(maxsize=None)
def record_dtype_v2() -> np.dtype:
    """The v2 index row, read only: v3's without ``decode_step`` and ``batch_index``."""
    v3 = record_dtype()
    return np.dtype([(name, v3[name]) for name in v3.names
                     if name not in ("decode_step", "batch_index")])


@functools.lru_cache(maxsize=None)
def record_dtype_v1() -> np.dtype:
    """The v1 index row, read only: its text fields are HDF5 variable-length strings."""
    import h5py

    s = h5py.string_dtype("utf-8")
    numbers = dict(_NUMBERS)
    return np.dtype([
        ("name", s), ("kind", s), ("call", numbers["call"]), ("step", numbers["step"]),
        ("dtype", s), ("shape", s), ("stored", "u1"),
        ("offset", "<i8"), ("nbytes", "<i8"), ("sample_offset", "<i8"), ("sample_count", "<i8"),
        ("hash", s), ("numel", "<i8"),
        ("min", "<f8"), ("max", "<f8"), ("mean", "<f8"), ("std", "<f8"), ("l2", "<f8"),
        ("nan", "<i8"), ("inf", "<i8"), ("zero_frac", "<f8"),
        ("meta", s),
    ])


def text_attribute(value: str):
    """A root attribute holding ``value`` as a fixed-length UTF-8 string (h5py writes a Python
    str as a variable-length one, which lives in a global heap)."""
    import h5py

    raw = value.encode("utf-8")
    return np.array(raw, dtype=h5py.string_dtype("utf-8", max(1, len(raw))))


@functools.lru_cache(maxsize=4096)  # a model's tensors repeat a few sizes, step after step
def sample_indices(numel: int) -> np.ndarray:
    """The flat indices a stats-only record keeps: seeded by the size alone, so two traces of
    tensors with the same shape sample the same elements and can be compared. Read-only: the
    array is shared by every caller."""
    if numel <= SAMPLE_SIZE:
        indices = np.arange(numel, dtype=np.int64)
    else:
        rng = np.random.default_rng(numel)
        indices = np.sort(rng.choice(numel, SAMPLE_SIZE, replace=False)).astype(np.int64)
    indices.flags.writeable = False
    return indices


def tensor_hash(array: np.ndarray, algorithm: str = "xxh3") -> str:
    """A record's content hash: ``xxh3:`` and the 128-bit XXH3 of the C-order bytes (v2; ~0.08
    ms/MiB, so every record gets one). ``algorithm="sha256"`` gives what v1 kept for
    stats-only records: the first 32 hex digits of the SHA-256."""
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()[:32]
    import xxhash
    return "xxh3:" + xxhash.xxh3_128_hexdigest(data)


def hash_algorithm(digest: str) -> str:
    """Which ``tensor_hash`` algorithm made ``digest``."""
    return "xxh3" if digest.startswith("xxh3:") else "sha256"
