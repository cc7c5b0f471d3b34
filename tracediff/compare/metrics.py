"""The comparison kernel: one pass over two same-shaped arrays, chunk by chunk.

Chunks small enough to stay in cache let the kernel take a dozen statistics in about the time
NumPy needs for ``abs(a - b).max()`` on whole arrays (which allocates two full temporaries).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..dtypes import as_float
from ..primes import primes
from .tolerances import SCALE_FLOOR

try:  # the compiled one-pass comparison (tracediff/_compare.c); the NumPy path below otherwise
    from .._compare import at_least as _at_least, compare as _kernel, same as _same
except ImportError:  # pragma: no cover - a build without a C compiler
    _kernel = _at_least = _same = None

CHUNK = 1 << 15            # elements per chunk (256 KiB in float64: stays in cache)
EXACT_P99_LIMIT = 1 << 20  # above this, p99 and the minimal tolerances are estimated (see compare)
WORST = 10
SAME_CHUNK = 1 << 16       # words per step of the identical-bytes check
P99_SELECT_MIN = 1 << 14   # pools smaller than this are selected among whole
P99_SAMPLE = 1 << 12       # values sampled to place the threshold of the top percent
_KERNEL_TYPES = (np.dtype("=f4"), np.dtype("=f8"))


def work_dtype(a: np.ndarray, b: np.ndarray) -> np.dtype:
    """float32 when both sides fit in it, float64 otherwise; complex kept complex."""
    return _work_dtype(a.dtype, b.dtype)


@functools.lru_cache(maxsize=256)
def _work_dtype(dtype_a: np.dtype, dtype_b: np.dtype) -> np.dtype:
    kinds = {as_float(np.zeros(0, dtype_a)).dtype, as_float(np.zeros(0, dtype_b)).dtype}
    if any(k.kind == "c" for k in kinds):
        return np.dtype(np.complex128) if any(k.itemsize >= 16 or k.kind == "f" and k.itemsize == 8
                                              for k in kinds) else np.dtype(np.complex64)
    return np.dtype(np.float32) if kinds == {np.dtype(np.float32)} else np.dtype(np.float64)


def rms_of(b: np.ndarray) -> float:
    """Root mean square over the finite elements."""
    flat = as_float(b).reshape(-1)
    if flat.size == 0:
        return 0.0
    if flat.dtype.kind == "c":
        flat = np.abs(flat)
    finite = flat if np.isfinite(flat).all() else flat[np.isfinite(flat)]
    if finite.size == 0:
        return 0.0
    finite = finite.astype(np.float64, copy=False)
    return math.sqrt(dot(finite, finite) / finite.size)


class Comparison:
    """The statistics of one comparison; ``passed`` is the tolerance verdict."""

    def __init__(self, shape, numel):
        self.shape = tuple(shape)
        self.numel = numel
        self.max_abs = 0.0
        self.argmax_flat = 0
        self.sum_abs = 0.0
        self.sum_sq = 0.0
        self.sum_aa = 0.0
        self.sum_bb = 0.0
        self.sum_ab = 0.0
        self.max_rel = 0.0
        self.min_rtol = 0.0
        self.min_atol = 0.0
        self.mismatches = 0
        self.nan_a = self.nan_b = self.inf_a = self.inf_b = 0
        self.nonfinite_mismatches = 0
        self.first_nonfinite = None   # flat index of the first NaN/Inf that the other side lacks
        self.p99 = 0.0
        self.worst_list = []   # (flat index, a, b, |a - b|) of the largest differences
        self.sampled = False
        self.nonfinite_count = 0   # elements left out of the numeric statistics

    @property
    def passed(self) -> bool:
        return self.mismatches == 0 and self.nonfinite_mismatches == 0

    @property
    def rel_l2(self):
        norm_d, norm_b = math.sqrt(self.sum_sq), math.sqrt(self.sum_bb)
        if norm_d == 0:
            return 0.0
        return norm_d / norm_b if norm_b > 0 else None

    def stats(self) -> dict:
        n = max(1, self.numel - self.nonfinite_count)
        norm_a, norm_b = math.sqrt(self.sum_aa), math.sqrt(self.sum_bb)
        if norm_a == 0 or norm_b == 0:
            cosine = 1.0 if norm_a == norm_b else 0.0
        else:
            cosine = max(-1.0, min(1.0, self.sum_ab / (norm_a * norm_b)))
        if self.sum_sq == 0:
            sqnr = math.inf
        elif self.sum_bb == 0:
            sqnr = -math.inf
        else:
            ratio = self.sum_bb / self.sum_sq   # 0 when the squared differences overflowed
            sqnr = 10.0 * math.log10(ratio) if ratio > 0 else (-math.inf if ratio == 0 else math.nan)
        index = unravel(int(self.argmax_flat), self.shape) if self.numel else []
        return {
            "max_abs": self.max_abs, "max_rel": self.max_rel, "mean_abs": self.sum_abs / n,
            "rmse": math.sqrt(self.sum_sq / n), "rel_l2": self.rel_l2, "cosine": cosine,
            "mismatch_fraction": (self.mismatches + self.nonfinite_mismatches) / max(1, self.numel),
            "argmax_abs": index, "nan_a": self.nan_a, "nan_b": self.nan_b,
            "inf_a": self.inf_a, "inf_b": self.inf_b, "p99": self.p99, "sqnr_db": sqnr,
            "min_rtol": self.min_rtol, "min_atol": self.min_atol, "numel": self.numel,
            "sampled": self.sampled,
        }

    def worst(self) -> list:
        """The largest differences, largest first (the earlier among equals), zeros left out."""
        shape = self.shape     # both paths keep them largest first
        return [{"index": unravel(flat, shape), "a": a, "b": b, "diff": diff}
                for flat, a, b, diff in self.worst_list if diff > 0]


def unravel(flat: int, shape) -> list:
    """``np.unravel_index(flat, shape)`` as a list of ints, for one index (no array round trip)."""
    if len(shape) == 1 and 0 <= flat < shape[0]:
        return [flat]
    if len(shape) == 2 and 0 <= flat < shape[0] * shape[1]:
        return list(divmod(flat, shape[1]))
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    if flat:
        raise ValueError(f"index out of bounds for shape {tuple(shape)}")
    return index[::-1]


@np.errstate(invalid="ignore", over="ignore", divide="ignore")  # NaN/Inf are counted, not warned about
def compare(a: np.ndarray, b: np.ndarray, rtol: float, atol: float, *, b_rms=None,
            a_l2=None, b_l2=None, flat_index=None, logical_shape=None) -> Comparison:
    """Compare ``a`` (candidate) with ``b`` (reference), elementwise.

    An element passes when ``|a-b| <= atol + rtol * max(|b|, SCALE_FLOOR * rms(b))``; NaN and
    Inf pass only where the other side has the same value. ``a_l2``/``b_l2`` (the norms a
    record's statistics already hold, for all-finite tensors) save two passes. ``flat_index``
    maps positions of flat samples back to their flat index in a tensor of ``logical_shape``.

    Exact for tensors up to EXACT_P99_LIMIT elements. Above, chunks whose largest difference is
    within tolerance everywhere are sampled (one in eight) for ``max_rel``, ``min_rtol`` and
    ``min_atol``, and ``p99`` comes from about EXACT_P99_LIMIT elements of the sampled chunks;
    the verdict, mismatch count, maxima, norms and cosine stay exact. The compiled kernel
    (two float32 or two float64 arrays, all finite) takes every statistic but p99 exactly.
    """
    shape = tuple(logical_shape if logical_shape is not None else b.shape)
    work = work_dtype(a, b)
    rtol, atol = float(rtol), float(atol)
    fa = a.reshape(-1)
    fb = b.reshape(-1)
    n = fb.size
    result = Comparison(shape, n)
    result.sampled = flat_index is not None
    if b_rms is None:
        b_rms = b_l2 / math.sqrt(n) if (b_l2 is not None and n) else rms_of(b)
    floor = SCALE_FLOOR * float(b_rms)
    rel_floor = atol if atol > 0 else float(np.finfo(np.float64).tiny)
    exact = n <= EXACT_P99_LIMIT
    stride = 1 if exact else int(math.ceil(n / EXACT_P99_LIMIT))
    detail_stride = 1 if exact else 8
    screen = atol + rtol * floor          # no element with |a-b| <= screen can fail
    norms_given = a_l2 is not None and b_l2 is not None and work.kind != "c"
    if (_kernel is not None and fa.dtype == work and fb.dtype == work and work in _KERNEL_TYPES
            and _compare_in_one_pass(result, fa, fb, rtol, atol, floor, rel_floor,
                                     keep=CHUNK if exact else max(1, min(CHUNK, CHUNK * detail_stride // stride)),
                                     every=detail_stride)):
        if norms_given:
            result.sum_aa, result.sum_bb = float(a_l2) ** 2, float(b_l2) ** 2
            result.sum_ab = 0.5 * (result.sum_aa + result.sum_bb - result.sum_sq)
        return _to_flat_indices(result, flat_index, n)
    p99_parts = []
    excluded = 0
    # preallocated chunk buffers: fresh temporaries of this size cost a page fault per page
    size = min(CHUNK, max(1, n))
    real = np.dtype(np.float64) if work.kind == "c" else work
    convert_a, convert_b = fa.dtype != work, fb.dtype != work
    buf_a = np.empty(size, work) if convert_a else None
    buf_b = np.empty(size, work) if convert_b else None
    d_buf = np.empty(size, work)
    absd_buf, absb_buf, scale_buf, tmp_buf = (np.empty(size, real) for _ in range(4))
    worst = _Worst()
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        k = stop - start
        ac = _chunk(fa, start, stop, buf_a)
        bc = _chunk(fb, start, stop, buf_b)
        d = np.subtract(ac, bc, out=d_buf[:k])
        absd = np.abs(d, out=absd_buf[:k])
        tmp = tmp_buf[:k]
        sq = dot(absd, absd)
        nonfinite = not math.isfinite(sq)
        if nonfinite:
            ac, bc, d, absd, excluded_here = _nonfinite(result, ac, bc, start, flat_index)
            excluded += excluded_here
            sq = dot(absd, absd)
        local_max = float(absd.max())
        if local_max > result.max_abs:
            result.max_abs = local_max
            result.argmax_flat = start + int(np.argmax(absd))
        result.sum_abs += float(absd.sum())
        result.sum_sq += sq
        if not norms_given or nonfinite:
            if work.kind == "c":
                result.sum_aa += dot(ac, ac)
                result.sum_bb += dot(bc, bc)
                result.sum_ab += dot(ac, bc)
            else:
                result.sum_aa += dot(ac, ac)
                result.sum_bb += dot(bc, bc)
                result.sum_ab += dot(ac, bc)
        chunk_index = start // CHUNK
        sampled = exact or chunk_index % detail_stride == 0
        # a chunk whose differences are all zero leaves every detail statistic where it is
        if local_max > 0 and (local_max > screen or nonfinite or sampled):
            # chunks within tolerance everywhere: one in detail_stride samples the minimal tolerances
            _detail(result, absd, bc, rtol, atol, floor, rel_floor, absb_buf[:k], scale_buf[:k],
                    tmp, count=True)
        if sampled:
            keep = k if exact else max(1, min(k, k * detail_stride // stride))
            p99_parts.append(absd[:keep].copy())
        worst.keep(absd, ac, bc, start, local_max)
    result.worst_list = worst.as_list()
    if norms_given and not excluded:
        result.sum_aa, result.sum_bb = float(a_l2) ** 2, float(b_l2) ** 2
        result.sum_ab = 0.5 * (result.sum_aa + result.sum_bb - result.sum_sq)
    result.nonfinite_count = excluded
    if p99_parts:
        pool = np.concatenate(p99_parts)
        result.p99 = percentile99(pool) if pool.size else 0.0
    result.min_rtol = max(0.0, result.min_rtol)
    result.min_atol = max(0.0, result.min_atol)
    return _to_flat_indices(result, flat_index, n)


def _compare_in_one_pass(result, fa, fb, rtol, atol, floor, rel_floor, keep, every) -> bool:
    """``compare``'s statistics from the compiled kernel (tracediff/_compare.c): same per-element
    arithmetic, so the same verdict; every statistic but p99 is exact at any size. False when
    a NaN or an Inf is found: the NumPy path then counts and places them."""
    fa, fb = np.ascontiguousarray(fa), np.ascontiguousarray(fb)
    pooled = (fa.size if every == 1 and keep == CHUNK
              else sum(min(keep, fa.size - start) for start in range(0, fa.size, CHUNK * every)))
    if pooled < P99_SELECT_MIN:     # the kernel keeps the top percent itself, and reads p99
        top = _top_count(pooled) if pooled else 0
        got = _kernel(fa, fb, rtol, atol, floor, rel_floor, np.empty(max(1, top), fa.dtype),
                      CHUNK, every, keep, 0.0, top)
        if got is None:
            return False
        _take(result, got)
        return True
    # untouched pages of an np.empty cost nothing: only the values kept are written
    pool = np.empty(pooled, fa.dtype)
    threshold = _top_threshold(fa, fb, pool.size)
    got = _kernel(fa, fb, rtol, atol, floor, rel_floor, pool, CHUNK, every, keep, threshold)
    if got is None:
        return False
    pooled, kept = _take(result, got)
    if threshold > 0 and kept < _top_count(pooled):   # the sample misled: keep every value
        kept = _kernel(fa, fb, rtol, atol, floor, rel_floor, pool, CHUNK, every, keep, 0.0)[-1]
    if kept == pooled:
        result.p99 = percentile99(pool[:pooled]) if pooled else 0.0
    else:
        result.p99 = _percentile99_of_top(pool[:kept], pooled)
    return True


def _take(result, got) -> tuple:
    """The kernel's statistics into ``result``; ``(pooled, kept)``."""
    (result.max_abs, result.argmax_flat, result.sum_abs, result.sum_sq, result.sum_aa,
     result.sum_bb, result.sum_ab, result.mismatches, result.min_atol, result.max_rel,
     result.min_rtol, result.worst_list, p99, pooled, kept) = got
    if p99 is not None:
        result.p99 = p99
    return pooled, kept


def _top_count(n: int) -> int:
    """How many of ``n`` values np.percentile(..., 99) reads from the top: those at ranks
    floor(0.99 (n - 1)) and up."""
    return n - math.floor((n - 1) * 0.99)


@functools.lru_cache(maxsize=1024)   # a model's tensors repeat a few sizes
def _sample_step(n: int) -> int:
    """A stride giving about P99_SAMPLE values of ``n``; prime, so that it does not fall in step
    with a tensor's rows (a stride of 64 over rows of 256 sees four columns only)."""
    step = n // P99_SAMPLE
    return next(primes(step)) if step > 1 else 1


def _top_threshold(fa, fb, pooled) -> float:
    """A value of |a - b| with about three times p99's top percent at or above it, placed from a
    strided sample; 0 (keep every value) for a pool small enough to select among directly."""
    if pooled < P99_SELECT_MIN:
        return 0.0
    step = _sample_step(fa.size)
    sample = np.abs(fa[::step] - fb[::step])
    rank = sample.size - 1 - int(3 * _top_count(pooled) * sample.size / pooled)
    return float(np.partition(sample, rank)[rank]) if rank > 0 else 0.0


def _to_flat_indices(result, flat_index, n):
    """Positions in a flat sample back to flat indices of the whole tensor."""
    if flat_index is not None:
        result.argmax_flat = int(flat_index[result.argmax_flat]) if n else 0
        result.worst_list = [(int(flat_index[i]), a, b, d) for i, a, b, d in result.worst_list]
        if result.first_nonfinite is not None:
            result.first_nonfinite = int(flat_index[result.first_nonfinite])
    return result


def percentile99(pool: np.ndarray) -> float:
    """``np.percentile(pool, 99)`` (linear interpolation) of non-NaN values, bit for bit, from
    the top percent of the values: one pass to pick them out instead of a selection over all
    of them (which took a third of a diff's time). ``pool`` is overwritten."""
    n = pool.size
    if n < 2:
        return float(pool[0]) if n else math.nan
    above_count = _top_count(n)
    if n < P99_SELECT_MIN:
        return _percentile99_of_top(pool, n)   # np.percentile's own path imports numpy.ma
    sample = pool[::_sample_step(n)].copy()
    # a threshold from a sample: about twice as many values above it as needed
    rank = max(0, sample.size - 1 - int(2 * above_count * sample.size / n) - 1)
    threshold = np.partition(sample, rank)[rank]
    if _at_least is not None and pool.dtype in _KERNEL_TYPES and pool.flags.c_contiguous:
        top = pool[:_at_least(pool, float(threshold), above_count)]  # moved to the front
    else:
        top = pool[pool >= threshold]
    if top.size < above_count:        # the sample misled: select over everything
        return _percentile99_of_top(pool, n)
    return _percentile99_of_top(top, n)


def _percentile99_of_top(top: np.ndarray, n: int) -> float:
    """``np.percentile(pool, 99)`` of a pool of ``n`` values, from ``top``: the pool's values at
    or above some threshold, at least ``_top_count(n)`` (>= 2) of them. ``top`` is reordered."""
    # NumPy's linear method: virtual index, the rank below it and the weight of the one above
    virtual = (n - 1) * 0.99
    below = math.floor(virtual)
    first = top.size - (n - below)     # rank ``below`` within ``top``
    top.partition([first, first + 1])
    low, high = top[first], top[first + 1]
    gamma = virtual - below
    diff = high - low
    # NumPy's _lerp, in the pool's dtype (gamma is a weak Python float there too)
    value = low + diff * gamma if gamma < 0.5 else high - diff * (1 - gamma)
    return float(value)


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays of one dtype and shape hold the same bytes; stops at the first chunk
    that differs, so a pair that differs anywhere early costs little."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if _same is not None and a.flags.c_contiguous and b.flags.c_contiguous:
        return _same(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))   # memcmp
    fa = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    fb = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    if fa.size % 8 == 0:   # eight bytes a comparison: the check runs at memory speed
        fa, fb = fa.view(np.uint64), fb.view(np.uint64)
    for start in range(0, fa.size, SAME_CHUNK):
        if not np.array_equal(fa[start:start + SAME_CHUNK], fb[start:start + SAME_CHUNK]):
            return False
    return True


def identical(shape, a_l2: float, b_l2: float) -> Comparison:
    """What ``compare`` finds for two bit-identical, all-finite arrays, without reading them:
    every difference is zero, and the norms come from the records' statistics exactly as
    ``compare`` takes them when it is given ``a_l2``/``b_l2``."""
    result = Comparison(shape, math.prod(shape))
    result.sum_aa, result.sum_bb = float(a_l2) ** 2, float(b_l2) ** 2
    result.sum_ab = 0.5 * (result.sum_aa + result.sum_bb - result.sum_sq)
    return result


def _chunk(flat, start, stop, buf):
    if buf is None:
        return flat[start:stop]
    out = buf[:stop - start]
    part = flat[start:stop]
    out[...] = as_float(part) if part.dtype.kind not in "fc" or part.dtype.itemsize < 4 else part
    return out


def _detail(result, absd, bc, rtol, atol, floor, rel_floor, absb, scale, tmp, count):
    """Mismatch count and the minimal tolerances of one chunk."""
    absb = np.abs(bc, out=absb)
    scale = np.maximum(absb, floor, out=scale) if floor > 0 else absb
    excess = np.subtract(absd, np.multiply(scale, rtol, out=tmp), out=tmp)
    result.min_atol = max(result.min_atol, float(excess.max()))
    if count:
        result.mismatches += int(np.count_nonzero(excess > atol))
    rel = np.divide(absd, np.maximum(absb, rel_floor, out=tmp), out=tmp)
    result.max_rel = max(result.max_rel, float(rel.max()))
    over = np.subtract(absd, atol, out=tmp)
    if floor > 0:
        result.min_rtol = max(result.min_rtol, float(np.divide(over, scale, out=tmp).max()))
    elif float(over.max()) > 0:
        positive = scale > 0
        if (over[~positive] > 0).any():
            result.min_rtol = math.inf
        elif positive.any():
            result.min_rtol = max(result.min_rtol, float((over[positive] / scale[positive]).max()))


def dot(x: np.ndarray, y: np.ndarray) -> float:
    """The real part of ``vdot(x, y)`` (flattened; ``x`` conjugated where complex), by einsum.
    Not np.dot/np.vdot: OpenBLAS runs a long vector's dot on its thread pool, whose threads
    then spin for about 0.1 s, on a 2-core machine stalling the framework's own threads (a
    replay's torch pass ran 2.5x slower after a diff); einsum's SIMD partial sums stay accurate."""
    x, y = x.reshape(-1), y.reshape(-1)
    if x.dtype.kind == "c" or y.dtype.kind == "c":
        return float(np.einsum("i,i->", np.conj(x), y).real)
    return float(np.einsum("i,i->", x, y))


class _Worst:
    """The NumPy path's largest differences so far, chunk by chunk."""

    def __init__(self):
        self.idx = np.zeros(0, np.int64)
        self.abs = np.zeros(0, np.float64)
        self.a = self.b = np.zeros(0)

    def keep(self, absd, ac, bc, start, local_max):
        if absd.size == 0 or local_max == 0:
            return
        if self.abs.size >= WORST and local_max <= float(self.abs.min()):
            return
        k = min(WORST, absd.size)
        local = np.argpartition(absd, absd.size - k)[absd.size - k:]
        idx = np.concatenate([self.idx, local.astype(np.int64) + start])
        vals = np.concatenate([self.abs, absd[local].astype(np.float64)])
        av = np.concatenate([self.a, ac[local]]) if self.a.size else ac[local].copy()
        bv = np.concatenate([self.b, bc[local]]) if self.b.size else bc[local].copy()
        top = np.argsort(-vals, kind="stable")[:WORST]
        self.idx, self.abs, self.a, self.b = idx[top], vals[top], av[top], bv[top]

    def as_list(self) -> list:
        return list(zip(self.idx.tolist(), _plain_list(self.a), _plain_list(self.b),
                        self.abs.tolist()))


def _nonfinite(result, ac, bc, start, flat_index):
    """Count NaN/Inf on each side; equal non-finite values (NaN with NaN, +Inf with +Inf) pass,
    the others are mismatches; both are left out of the numeric statistics."""
    nan_a, nan_b = np.isnan(ac), np.isnan(bc)
    inf_a, inf_b = np.isinf(ac), np.isinf(bc)
    result.nan_a += int(nan_a.sum())
    result.nan_b += int(nan_b.sum())
    result.inf_a += int(inf_a.sum())
    result.inf_b += int(inf_b.sum())
    bad_a = nan_a | inf_a
    bad_b = nan_b | inf_b
    same = (nan_a & nan_b) | (inf_a & inf_b & (ac == bc))
    mismatch = (bad_a | bad_b) & ~same
    count = int(mismatch.sum())
    result.nonfinite_mismatches += count
    if count and result.first_nonfinite is None:
        result.first_nonfinite = start + int(np.argmax(mismatch))
    keep = ~(bad_a | bad_b)
    ac = np.where(keep, ac, 0)
    bc = np.where(keep, bc, 0)
    d = ac - bc
    return ac, bc, d, np.abs(d), int((~keep).sum())


def _plain_list(values: np.ndarray) -> list:
    """``_plain`` of each value; NumPy's own numbers convert in one call."""
    if values.dtype.kind in "fiub" and type(values.dtype).__module__.startswith("numpy"):
        return values.tolist()
    return [_plain(v) for v in values]


def _plain(value):
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, complex):
        return [value.real, value.imag]
    return value
