"""Quantized tensors stored as integers: ``real = (q - zero_point) * scale``, with the meta keys
of docs/conventions.md (``scale``, ``zero_point``, per axis with ``quantized_dimension``).
Shared by the adapters (LiteRT's replay) and the diff (quantized against float)."""
from __future__ import annotations

import numpy as np


def dequantize(values, meta, shape=None, flat_index=None):
    """Float32 ``(q - zero_point) * scale``; per-axis parameters broadcast along
    ``quantized_dimension`` (``flat_index``: the positions of a sample's values in ``shape``)."""
    scale = np.asarray(meta["scale"], dtype=np.float64)
    zero = np.asarray(meta.get("zero_point", 0), dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if scale.ndim and scale.size > 1:
        axis = int(meta.get("quantized_dimension", 0))
        if flat_index is not None:
            channel = np.unravel_index(np.asarray(flat_index), shape)[axis]
            scale, zero = scale[channel], (zero[channel] if zero.ndim else zero)
        else:
            view = [1] * values.ndim
            view[axis] = scale.size
            scale = scale.reshape(view)
            zero = zero.reshape(view) if zero.ndim and zero.size == scale.size else zero
    return ((values - zero) * scale).astype(np.float32)


def quantize(values, meta, dtype):
    """``values`` as a quantized tensor of integer ``dtype`` stores them: ``round(x / scale) +
    zero_point``, clipped to the type's range (the inverse of :func:`dequantize`)."""
    dtype = np.dtype(dtype)
    scale = np.asarray(meta["scale"], dtype=np.float64)
    zero = np.asarray(meta.get("zero_point", 0), dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if scale.ndim and scale.size > 1:
        view = [1] * values.ndim
        view[int(meta.get("quantized_dimension", 0))] = scale.size
        scale = scale.reshape(view)
        zero = zero.reshape(view) if zero.ndim and zero.size == scale.size else zero
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero, info.min, info.max).astype(dtype)


def quantized(record) -> bool:
    """An integer record that says how to dequantize it."""
    return (str(record.dtype).startswith(("int", "uint")) and "scale" in record.meta
            and _scales(record.meta) is not None)


def step(meta) -> float:
    """One quantization step: the largest of the scales."""
    return float(np.max(np.abs(np.asarray(_scales(meta), dtype=np.float64))))


def _scales(meta):
    scale = meta.get("scale")
    try:
        array = np.asarray(scale, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.size == 0 or not np.all(np.isfinite(array)):
        return None
    return scale
