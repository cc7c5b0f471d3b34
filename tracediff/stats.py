"""Summary statistics computed while writing, so that listing a trace reads no tensor data."""
from __future__ import annotations

import math

import numpy as np

from .dtypes import as_float

STAT_FIELDS = ("numel", "min", "max", "mean", "std", "l2", "nan", "inf", "zero_frac")


def summarize(array: np.ndarray) -> dict:
    """min, max, mean, std and L2 norm over the finite elements; NaN/Inf counts; zero fraction.

    Complex tensors are summarised by magnitude. Empty tensors give NaN moments and zero counts.
    """
    numel = int(array.size)
    if numel == 0:
        return {"numel": 0, "min": math.nan, "max": math.nan, "mean": math.nan, "std": math.nan,
                "l2": 0.0, "nan": 0, "inf": 0, "zero_frac": 0.0}
    values = as_float(array)
    if values.dtype.kind == "c":
        zero = int(np.count_nonzero(values == 0))
        values = np.abs(values)
    else:
        zero = None
    if values.dtype.kind == "f":
        finite_mask = np.isfinite(values)
        n_finite = int(np.count_nonzero(finite_mask))
        if n_finite == numel:
            nan = inf = 0
            finite = values
        else:
            nan = int(np.count_nonzero(np.isnan(values)))
            inf = numel - n_finite - nan
            finite = values[finite_mask]
    else:
        nan = inf = 0
        finite = values
    if zero is None:
        zero = int(numel - np.count_nonzero(values))
    if finite.size == 0:
        lo = hi = mean = std = math.nan
        l2 = math.nan
    else:
        flat = finite.ravel()
        lo = float(flat.min())
        hi = float(flat.max())
        mean = float(np.mean(flat, dtype=np.float64))
        std = float(np.std(flat, dtype=np.float64))
        l2 = math.sqrt(float(np.dot(flat, flat))) if flat.dtype.kind == "f" else \
            math.sqrt(float(np.sum(np.square(flat, dtype=np.float64))))
    return {"numel": numel, "min": lo, "max": hi, "mean": mean, "std": std, "l2": l2,
            "nan": nan, "inf": inf, "zero_frac": zero / numel}
