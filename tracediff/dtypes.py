"""Logical dtypes of recorded tensors and their bit-exact storage.

Every tensor is stored as its raw bytes plus a logical dtype name. NumPy's own dtypes map to
their names (``float32``, ``int64``, ``bool``, ``complex64``); the extended float types that
NumPy lacks (``bfloat16``, ``float8_e4m3fn``, ...) come from ``ml_dtypes``, imported only when
such a tensor is written or read.
"""
from __future__ import annotations

import functools

import numpy as np

from .errors import TraceDiffError

NUMPY_NAMES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
}
EXTENDED_NAMES = {
    "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
    "float8_e4m3b11fnuz", "float8_e3m4", "float8_e4m3", "float8_e8m0fnu", "float4_e2m1fn",
    "float6_e2m3fn", "float6_e3m2fn",
}
# Relative precision of each floating type: the unit roundoff used by the tolerance table.
EPSILON = {
    "float64": 2.0 ** -52, "complex128": 2.0 ** -52,
    "float32": 2.0 ** -23, "complex64": 2.0 ** -23,
    "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7,
}


@functools.lru_cache(maxsize=256)
def _name(dtype: np.dtype) -> str:
    return dtype.name  # NumPy builds the name anew on each access (~6 us)


def logical_name(dtype) -> str:
    """The logical name of a NumPy (or ml_dtypes) dtype, refusing what cannot be stored."""
    dtype = np.dtype(dtype)
    name = _name(dtype)
    if name in NUMPY_NAMES or name in EXTENDED_NAMES:
        return name
    if dtype.kind == "O":
        raise TraceDiffError(
            "object arrays cannot be recorded: convert the value to a numeric array first "
            "(ragged lists become object arrays; pad them or record each part separately)")
    if dtype.kind in "USV":
        raise TraceDiffError(f"dtype {dtype} cannot be recorded: only numeric and bool tensors are traced")
    raise TraceDiffError(f"dtype {dtype} is not supported by the trace format")


@functools.lru_cache(maxsize=64)   # a read's cost: np.dtype(name) parses the name each time
def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a logical name, importing ml_dtypes for the extended floats."""
    if name in NUMPY_NAMES:
        return np.dtype(name)
    if name in EXTENDED_NAMES:
        try:
            import ml_dtypes
        except ImportError as exc:  # pragma: no cover - ml_dtypes is a dependency
            raise TraceDiffError(
                f"reading a {name} tensor needs ml_dtypes: pip install ml_dtypes") from exc
        try:
            return np.dtype(getattr(ml_dtypes, name))
        except AttributeError as exc:
            raise TraceDiffError(
                f"dtype {name} needs a newer ml_dtypes than the one installed") from exc
    raise TraceDiffError(f"unknown dtype {name!r} in trace: it was written by a newer tracediff or is damaged")


def is_float(name: str) -> bool:
    return name.startswith(("float", "bfloat"))


def as_float(array: np.ndarray) -> np.ndarray:
    """A view or copy of ``array`` that NumPy arithmetic handles (extended floats -> float32)."""
    name = _name(array.dtype)
    if name in EXTENDED_NAMES or array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind in "biu":
        return array.astype(np.float64)
    return array


def to_array(value) -> tuple[np.ndarray, str]:
    """Anything with ``__array__`` as a NumPy array and its logical dtype name; ragged and
    object input are refused."""
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except ValueError as exc:
            raise TraceDiffError(
                f"value cannot be recorded: it is ragged ({exc.args[0].splitlines()[0]}); "
                "pad it to a rectangular shape or record each part separately") from exc
    return array, logical_name(array.dtype)
