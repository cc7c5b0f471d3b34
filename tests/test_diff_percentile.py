"""The comparison kernel's p99 of |a-b| picks the top percent out instead of selecting over
every value; the report must still hold exactly ``np.percentile(|a-b|, 99)``."""
from __future__ import annotations

import numpy as np
import pytest

from tracediff.compare.metrics import P99_SELECT_MIN, compare, percentile99


def _pools(seed):
    rng = np.random.default_rng(seed)
    for trial in range(120):
        n = int(rng.integers(P99_SELECT_MIN - 10, 5 * P99_SELECT_MIN)) if trial % 4 else \
            int(rng.integers(1, P99_SELECT_MIN))
        dtype = (np.float32, np.float64)[trial % 2]
        kind = trial % 5
        if kind == 0:
            pool = np.abs(rng.standard_normal(n))
        elif kind == 1:    # mostly exact matches: many zeros, ties at the threshold
            pool = np.zeros(n)
            pool[:int(rng.integers(0, n))] = 1.0
            pool[:int(rng.integers(0, n))] = np.abs(rng.standard_normal())
        elif kind == 2:    # few distinct values
            pool = rng.integers(0, 4, n).astype(np.float64)
        elif kind == 3:    # heavy tail
            pool = np.abs(rng.standard_cauchy(n)) * 1e-7
        else:              # overflowing differences
            pool = np.abs(rng.standard_normal(n))
            pool[rng.integers(0, n, 3)] = np.inf
        pool = pool.astype(dtype)
        rng.shuffle(pool)
        yield pool


@pytest.mark.parametrize("seed", [0, 1])
def test_p99_is_numpys_bit_for_bit(seed):
    for pool in _pools(seed):
        expected = float(np.percentile(pool, 99))
        assert percentile99(pool.copy()) == expected, (pool.size, pool.dtype)


def test_p99_in_the_report_of_a_large_pair():
    rng = np.random.default_rng(3)
    b = rng.standard_normal(300_007).astype(np.float32)
    a = b + rng.standard_normal(b.size).astype(np.float32) * 1e-3
    expected = float(np.percentile(np.abs(a - b), 99))
    assert compare(a, b, 1e-2, 1e-2).stats()["p99"] == expected


@pytest.mark.parametrize("order", ["shuffled", "ascending", "descending", "ties"])
@pytest.mark.parametrize("n", [1, 2, 3, 101, 1024, 1025, 8192, P99_SELECT_MIN - 1])
def test_p99_of_a_small_pair_from_the_kernels_heap_is_numpys(n, order):
    """Below P99_SELECT_MIN the kernel keeps the top percent in a heap as it goes: whatever
    order the differences come in (each new one the largest, each the smallest, all tied),
    p99 is still np.percentile's."""
    rng = np.random.default_rng(n)
    for dtype in (np.float32, np.float64):
        b = rng.standard_normal(n).astype(dtype)
        d = {"shuffled": rng.standard_normal(n), "ascending": np.linspace(0, 1, n),
             "descending": np.linspace(1, 0, n), "ties": rng.integers(0, 3, n) * 0.5}[order]
        a = (b + d).astype(dtype)
        assert compare(a, b, 1e-5, 1e-8).p99 == float(np.percentile(np.abs(a - b), 99))
