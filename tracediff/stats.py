"""Summary statistics computed while writing, so that listing a trace reads no tensor data."""
from __future__ import annotations

import math

import numpy as np

from .dtypes import as_float

STAT_FIELDS = ("numel", "min", "max", "mean", "std", "l2", "nan", "inf", "zero_frac")

# Elements per pass: small enough that each chunk stays in cache while several reductions read it.
CHUNK = 1 << 15


def summarize(array: np.ndarray) -> dict:
    """min, max, mean, std and L2 norm over the finite elements; NaN/Inf counts; zero fraction.

    Complex tensors are summarised by magnitude. Empty tensors give NaN moments and zero counts.
    """
    numel = int(array.size)
    if numel == 0:
        return {"numel": 0, "min": math.nan, "max": math.nan, "mean": math.nan, "std": math.nan,
                "l2": 0.0, "nan": 0, "inf": 0, "zero_frac": 0.0}
    flat = array.reshape(-1)
    moments = _Moments()
    nan = inf = zeros = 0
    for start in range(0, numel, CHUNK):
        chunk = as_float(flat[start:start + CHUNK])  # a float (or complex) chunk from here on
        zeros += int(np.count_nonzero(chunk == 0))
        if chunk.dtype.kind == "c":
            chunk = np.abs(chunk)
        lo, hi = float(chunk.min()), float(chunk.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates through min/max
            finite = np.isfinite(chunk)
            n_nan = int(np.count_nonzero(np.isnan(chunk)))
            nan += n_nan
            inf += chunk.size - int(np.count_nonzero(finite)) - n_nan
            chunk = chunk[finite]
            if chunk.size == 0:
                continue
            lo, hi = float(chunk.min()), float(chunk.max())
        moments.add(chunk, lo, hi)
    return {"numel": numel, **moments.result(), "nan": nan, "inf": inf, "zero_frac": zeros / numel}


class _Moments:
    """Chan et al.'s pairwise combination of per-chunk mean and squared deviations (float64)."""

    def __init__(self):
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, chunk: np.ndarray, lo: float, hi: float):
        """Fold in a non-empty chunk of finite values whose extremes are ``lo`` and ``hi``."""
        n = int(chunk.size)
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)
        mean = m2 = math.inf
        if chunk.dtype == np.float32:
            # BLAS sdot is ~5x faster than NumPy's own reductions here; float32 accumulation
            # within one cache-sized chunk is precise enough for summary statistics. Values
            # near float32's limits overflow it: those chunks take the float64 path below.
            with np.errstate(over="ignore", invalid="ignore"):
                mean = float(np.dot(chunk, _ONES[:n])) / n
                centered = chunk - np.float32(mean)
                m2 = float(np.dot(centered, centered))
        if not (math.isfinite(mean) and math.isfinite(m2)):
            mean = float(np.add.reduce(chunk, dtype=np.float64)) / n
            centered = chunk.astype(np.float64) - mean
            m2 = float(np.add.reduce(centered * centered))
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def result(self) -> dict:
        if self.n == 0:
            return {"min": math.nan, "max": math.nan, "mean": math.nan, "std": math.nan, "l2": math.nan}
        variance = max(self.m2 / self.n, 0.0)
        return {"min": self.lo, "max": self.hi, "mean": self.mean, "std": math.sqrt(variance),
                "l2": math.sqrt(max(self.m2 + self.n * self.mean * self.mean, 0.0))}


_ONES = np.ones(CHUNK, dtype=np.float32)
