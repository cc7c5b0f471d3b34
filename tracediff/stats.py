"""Summary statistics computed while writing, so that listing a trace reads no tensor data."""
from __future__ import annotations

import functools
import math
import threading

import numpy as np

from .dtypes import as_float

try:  # the compiled one-pass kernel (tracediff/_moments.c); NumPy does the same when it is missing
    from ._moments import moments as _kernel
except ImportError:  # pragma: no cover - a build without a C compiler
    _kernel = None

STAT_FIELDS = ("numel", "min", "max", "mean", "std", "l2", "nan", "inf", "zero_frac")

# Elements per NumPy pass: small enough that each chunk stays in cache while several reductions
# read it. The compiled kernel reads float32/float64 arrays whole, in its own cache-sized blocks;
# other types reach it chunk by chunk, converted.
CHUNK = 1 << 18


def summarize(array: np.ndarray) -> dict:
    """min, max, mean, std and L2 norm over the finite elements; NaN/Inf counts; zero fraction.

    Complex tensors are summarised by magnitude. Empty tensors give NaN moments and zero counts.
    """
    numel = int(array.size)
    if numel == 0:
        return {"numel": 0, "min": math.nan, "max": math.nan, "mean": math.nan, "std": math.nan,
                "l2": 0.0, "nan": 0, "inf": 0, "zero_frac": 0.0}
    flat = array.reshape(-1)
    if _kernel is not None and flat.dtype in _KERNEL_TYPES:
        n, mean, m2, sumsq, lo, hi, nan, inf, zeros = _kernel(np.ascontiguousarray(flat))
        return {"numel": numel, **_moment_fields(n, mean, m2, sumsq, lo, hi), "nan": nan,
                "inf": inf, "zero_frac": zeros / numel}
    is_zero = _scratch()
    moments = _Moments()
    nan = inf = zeros = 0
    for start in range(0, numel, CHUNK):
        chunk = as_float(flat[start:start + CHUNK])  # a float (or complex) chunk from here on
        if _kernel is not None and chunk.dtype in _KERNEL_TYPES:
            n, mean, m2, sumsq, lo, hi, n_nan, n_inf, n_zero = _kernel(np.ascontiguousarray(chunk))
            nan, inf, zeros = nan + n_nan, inf + n_inf, zeros + n_zero
            moments.fold(n, mean, m2, sumsq, lo, hi)
            continue
        zeros += int(np.count_nonzero(np.equal(chunk, 0, out=is_zero[:chunk.size])))
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
    """Per-chunk sums folded together with Chan et al.'s pairwise combination (float64)."""

    def __init__(self):
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.sumsq = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, chunk: np.ndarray, lo: float, hi: float):
        """Fold in a non-empty chunk of finite values whose extremes are ``lo`` and ``hi``."""
        n = int(chunk.size)
        total = sumsq = m2 = math.inf
        if chunk.dtype in _BLAS_TYPES:
            ones = _ones(chunk.dtype)
            # Two BLAS dots (sum and sum of squares) read the chunk twice and allocate nothing.
            # The variance from them cancels when |mean| dominates the spread: such chunks
            # are centred first. Sums that overflow the chunk's type take the float64 path.
            with np.errstate(over="ignore", invalid="ignore"):
                total = float(np.dot(chunk, ones[:n]))
                sumsq = float(np.dot(chunk, chunk))
                m2 = sumsq - total * total / n
                if math.isfinite(m2) and m2 < 0.5 * sumsq:
                    centered = chunk - chunk.dtype.type(total / n)
                    m2 = float(np.dot(centered, centered))
                    sumsq = m2 + total * total / n
        if not (math.isfinite(total) and math.isfinite(sumsq) and math.isfinite(m2)):
            wide = chunk.astype(np.float64)
            total = float(np.add.reduce(wide))
            centered = wide - total / n
            m2 = float(np.dot(centered, centered))
            sumsq = float(np.dot(wide, wide))
        self.fold(n, total / n, m2, sumsq, lo, hi)

    def fold(self, n: int, mean: float, m2: float, sumsq: float, lo: float, hi: float):
        """Fold in ``n`` finite values summarised by their moments and extremes."""
        if n == 0:
            return
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)
        combined = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / combined
        self.m2 += m2 + delta * delta * self.n * n / combined
        self.sumsq += sumsq
        self.n = combined

    def result(self) -> dict:
        return _moment_fields(self.n, self.mean, self.m2, self.sumsq, self.lo, self.hi)


def _moment_fields(n, mean, m2, sumsq, lo, hi) -> dict:
    """min, max, mean, std and l2 of ``n`` finite values from their moments (NaN when n is 0)."""
    if n == 0:
        return {"min": math.nan, "max": math.nan, "mean": math.nan, "std": math.nan, "l2": math.nan}
    return {"min": lo, "max": hi, "mean": mean, "std": math.sqrt(max(m2 / n, 0.0)),
            "l2": math.sqrt(sumsq)}


_BLAS_TYPES = (np.dtype(np.float32), np.dtype(np.float64))
_KERNEL_TYPES = (np.dtype("=f4"), np.dtype("=f8"))  # native byte order only


@functools.lru_cache(maxsize=None)  # made on first use: opening a trace needs none
def _ones(dtype) -> np.ndarray:
    return np.ones(CHUNK, dtype=dtype)


_local = threading.local()


def _scratch() -> np.ndarray:
    """This thread's reusable buffer for the per-chunk ``== 0`` mask."""
    buffer = getattr(_local, "is_zero", None)
    if buffer is None:
        buffer = _local.is_zero = np.empty(CHUNK, dtype=bool)
    return buffer
