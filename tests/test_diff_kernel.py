"""The compiled comparison (tracediff/_compare.c) reaches the NumPy path's verdict and
statistics: same mismatch count, maxima and worst elements, the same detail statistics where
the NumPy path is exact, and the NumPy path itself wherever a NaN or an Inf appears."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tracediff.compare import metrics
from tracediff.compare.metrics import EXACT_P99_LIMIT, compare, percentile99

pytestmark = pytest.mark.skipif(metrics._kernel is None, reason="the C kernel is not built here")

EXACT_FIELDS = ("max_abs", "argmax_abs", "nan_a", "nan_b", "inf_a", "inf_b", "numel",
                "mismatch_fraction")
CLOSE_FIELDS = ("mean_abs", "rmse", "rel_l2", "cosine")
DETAIL_FIELDS = ("max_rel", "min_rtol", "min_atol", "p99")


def _noisy_pair(seed, size, dtype):
    """``(a, b, |a - b|)``: b standard normal, a = b plus as much noise again."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(size).astype(dtype)
    a = b + rng.standard_normal(size).astype(dtype)
    return a, b, np.abs(a - b)


def _numpy_path(a, b, rtol, atol, **options):
    saved = metrics._kernel
    metrics._kernel = None
    try:
        return compare(a, b, rtol, atol, **options)
    finally:
        metrics._kernel = saved


def _close(x, y):
    if x is None or y is None:
        return x is y
    return x == y or math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-12)


def _pairs():
    rng = np.random.default_rng(11)
    for trial in range(60):
        n = int(rng.choice([1, 7, 1023, 1024, 1025, 32_768, 40_009, 300_007]))
        dtype = (np.float32, np.float64)[trial % 2]
        b = (rng.standard_normal(n) * rng.choice([1e-3, 1.0, 100.0])).astype(dtype)
        noise = rng.choice([0.0, 1e-7, 1e-4, 1e-2])
        a = (b * (1 + noise * rng.standard_normal(n))).astype(dtype)
        if trial % 3 == 0:    # exact zeros in the reference: the scale floor and max_rel matter
            b[rng.integers(0, n, max(1, n // 10))] = 0
        if trial % 5 == 0:    # a few gross errors
            a[rng.integers(0, n, 3)] += 1
        rtol = float(rng.choice([1.3e-6, 1e-5, 1e-3]))
        atol = float(rng.choice([0.0, 1e-8, 1e-5]))
        options = {"b_rms": 0.0} if trial % 4 == 0 else {}
        yield pytest.param(a, b, rtol, atol, options, id=f"{trial}-{n}-{np.dtype(dtype).name}")


@pytest.mark.parametrize("a, b, rtol, atol, options", list(_pairs()))
def test_kernel_and_numpy_reach_the_same_verdict_and_statistics(a, b, rtol, atol, options):
    fast, slow = compare(a, b, rtol, atol, **options), _numpy_path(a, b, rtol, atol, **options)
    assert (fast.passed, fast.mismatches) == (slow.passed, slow.mismatches)
    fs, ss = fast.stats(), slow.stats()
    for field in EXACT_FIELDS:
        assert fs[field] == ss[field], field
    for field in CLOSE_FIELDS + DETAIL_FIELDS:
        assert _close(fs[field], ss[field]), (field, fs[field], ss[field])
    if len(set(np.abs(a - b).tolist())) == a.size:    # no ties: the same ten worst elements
        assert fast.worst() == slow.worst()


def test_large_pairs_keep_the_exact_verdict_and_maxima():
    """Above EXACT_P99_LIMIT the NumPy path samples the detail statistics; the verdict, the
    mismatch count and the maxima stay exact on both paths."""
    rng = np.random.default_rng(5)
    b = rng.standard_normal(EXACT_P99_LIMIT + 12_345).astype(np.float32)
    a = b * np.float32(1 + 2 ** -20)
    a[[17, 900_001]] += np.float32(0.5)
    fast, slow = compare(a, b, 1e-5, 1e-5), _numpy_path(a, b, 1e-5, 1e-5)
    assert (fast.mismatches, slow.mismatches) == (2, 2)
    for field in EXACT_FIELDS:
        assert fast.stats()[field] == slow.stats()[field], field
    assert [w["index"] for w in fast.worst()[:2]] == [w["index"] for w in slow.worst()[:2]]
    assert fast.stats()["max_rel"] >= slow.stats()["max_rel"]   # exact vs sampled


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_values_take_the_numpy_path(bad):
    b = np.linspace(-1, 1, 5_000, dtype=np.float32)
    a = b.copy()
    a[4_321] = bad
    cmp = compare(a, b, 1e-5, 1e-5)
    assert cmp.first_nonfinite == 4_321 and cmp.nonfinite_mismatches == 1
    assert (cmp.nan_a, cmp.inf_a) == ((1, 0) if np.isnan(bad) else (0, 1))


def test_flat_sample_indices_are_mapped_back():
    b = np.arange(10, dtype=np.float64)
    a = b.copy()
    a[6] += 1
    cmp = compare(a, b, 1e-5, 1e-5, flat_index=np.arange(10) * 3, logical_shape=(5, 6))
    assert cmp.stats()["argmax_abs"] == [3, 0]
    assert cmp.worst()[0]["index"] == [3, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_p99_when_the_sample_misleads_leaves_the_pool_whole(dtype):
    """The sampled threshold lands too high when every sampled value is large: the selection
    must then fall back to all values, which it can only do if it left them in place."""
    n = 4096 * 100
    pool = np.full(n, 0.5, dtype)
    pool[::metrics._sample_step(n)] = 7.0
    pool[1::997] = np.arange(pool[1::997].size, dtype=dtype) / n
    expected = float(np.percentile(pool, 99))
    assert percentile99(pool.copy()) == expected


def test_kernel_refuses_mixed_types_and_bad_chunks_with_one_line():
    f32 = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="^compare\\(\\) takes two float32 or two float64 arrays"):
        metrics._kernel(f32, np.zeros(3, np.float64), 0.0, 0.0, 0.0, 0.0, f32, 1024, 1, 1024, 0.0)
    with pytest.raises(ValueError, match="^compare\\(\\): chunk must be a positive multiple of 1024"):
        metrics._kernel(f32, f32, 0.0, 0.0, 0.0, 0.0, f32, 1000, 1, 8, 0.0)
    assert metrics.CHUNK % 1024 == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_pools_only_the_values_at_or_above_the_threshold_in_order(dtype):
    a, b, absd = _noisy_pair(5, 3 * 1024 + 17, dtype)
    threshold = float(np.sort(absd)[-100])
    pool = np.full(b.size, -1, dtype)
    got = metrics._kernel(a, b, 1e-5, 1e-8, 0.0, 1e-300, pool, 1024, 1, 1024, threshold)
    pooled, kept = got[-2], got[-1]
    assert pooled == b.size
    assert kept == int((absd >= dtype(threshold)).sum()) >= 100
    np.testing.assert_array_equal(pool[:kept], absd[absd >= dtype(threshold)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_p99_when_the_kernels_threshold_misleads_is_still_exact(dtype, monkeypatch):
    """Every sampled difference large (fewer than one in a hundred), the rest small: the
    threshold from the sample keeps fewer values than p99 reads, and compare must go back for
    all of them."""
    n = metrics.EXACT_P99_LIMIT
    b = np.zeros(n, dtype)
    a = np.full(n, 1e-3, dtype)
    a[::metrics._sample_step(n)] = 5.0
    calls = []
    kernel = metrics._kernel
    monkeypatch.setattr(metrics, "_kernel", lambda *args: calls.append(args[-1]) or kernel(*args))
    p99 = compare(a, b, 1e-5, 1e-8).p99
    assert p99 == float(np.percentile(np.abs(a - b), 99))
    assert calls[0] > 0 and calls[1:] == [0.0]


def test_p99_threshold_sample_is_not_fooled_by_rows(monkeypatch):
    """Differences that depend on the column, in rows of 256: a sample stride of 64 would see
    four columns of the 256 and place the threshold wrongly; a prime stride sees them all,
    so one pass of the kernel is enough."""
    rows, width = 1024, 256
    b = np.zeros((rows, width), np.float32)
    a = np.tile(np.where(np.arange(width) % 64 == 0, 1e-6, 1e-3).astype(np.float32), (rows, 1))
    a[:, 5] = np.linspace(0.5, 1.0, rows, dtype=np.float32)   # a column of large ones
    calls = []
    kernel = metrics._kernel
    monkeypatch.setattr(metrics, "_kernel", lambda *args: calls.append(args[-1]) or kernel(*args))
    assert compare(a, b, 1e-5, 1e-8).p99 == float(np.percentile(np.abs(a - b), 99))
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_with_top_keeps_the_largest_differences_only(dtype):
    a, b, absd = _noisy_pair(6, 5 * 1024 + 3, dtype)
    heap = np.full(53, -1, dtype)
    got = metrics._kernel(a, b, 1e-5, 1e-8, 0.0, 1e-300, heap, 1024, 1, 1024, 0.0, heap.size)
    assert got[-2:] == (b.size, heap.size)
    np.testing.assert_array_equal(np.sort(heap), np.sort(absd)[-heap.size:])
    with pytest.raises(ValueError, match="^compare\\(\\): the pool holds 52 values, 53 are needed$"):
        metrics._kernel(a, b, 1e-5, 1e-8, 0.0, 1e-300, heap[:52], 1024, 1, 1024, 0.0, 53)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bfloat16", np.int8])
def test_same_bytes_compares_every_byte_of_any_dtype(dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    a = np.arange(3 * 7 * 11).astype(dtype).reshape(3, 7, 11)
    assert metrics.same_bytes(a, a.copy())
    last = a.copy()
    last.reshape(-1).view(np.uint8)[-1] ^= 1          # one bit of the last byte
    assert not metrics.same_bytes(a, last)
    assert not metrics.same_bytes(a, a.reshape(7, 3, 11).copy())       # another shape
    assert metrics.same_bytes(a[:, ::2], a.copy()[:, ::2])              # strided views too
    assert metrics.same_bytes(np.float32(2.5) * np.ones((), np.float32), np.full((), 2.5, np.float32))
