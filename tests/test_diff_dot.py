"""The diff's dot products go through einsum, never BLAS: OpenBLAS runs a long vector's dot
on its thread pool, whose threads then spin for about 0.1 s. On a 2-core machine that stalled
the framework running next (a torch replay pass after a diff ran 2.5x slower)."""
from __future__ import annotations

import numpy as np
import pytest

import tracediff as td
from tracediff.compare.metrics import compare, dot

from diff_helpers import rng, write


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_dot_is_the_real_part_of_vdot(dtype):
    shape = (11, 13, 7)
    x = rng(1).standard_normal(shape).astype(dtype)
    y = rng(2).standard_normal(shape).astype(dtype)
    if np.iscomplexobj(x):
        x = x + 1j * rng(3).standard_normal(shape).astype(dtype)
        y = y - 1j * rng(4).standard_normal(shape).astype(dtype)
    tolerance = 1e-5 if dtype in (np.float32, np.complex64) else 1e-12
    assert dot(x, y) == pytest.approx(float(np.vdot(x, y).real), rel=tolerance)
    assert dot(x, x) == pytest.approx(float(np.linalg.norm(x)) ** 2, rel=tolerance)


def test_a_diff_with_hints_calls_no_blas_dot(tmp_path, monkeypatch):
    """A diverging pair of 2^17 elements (above OpenBLAS's threading size), explained by a
    scale factor, and a complex pair through the NumPy path: no np.dot or np.vdot on the way."""
    ref = rng(5).standard_normal((3, 131_101)).astype(np.float32)
    waves = (rng(6).standard_normal(40_009) + 1j * rng(7).standard_normal(40_009)).astype(np.complex64)
    a = write(tmp_path / "a.h5", [("forward", "fc", ref * np.float32(1.5)), ("forward", "fft", waves * 2)])
    b = write(tmp_path / "b.h5", [("forward", "fc", ref), ("forward", "fft", waves)])

    def refused(*_, **__):
        raise AssertionError("a BLAS dot product in the diff")

    monkeypatch.setattr(np, "dot", refused)
    monkeypatch.setattr(np, "vdot", refused)
    report = td.diff(a, b)
    assert report.first_divergence.forward.b_name == "fc"
    assert "a = 1.5 x b: a constant scale factor" in report.first_divergence.forward.hint
    complex_pair = compare(waves * 2, waves, 1e-5, 1e-6)
    assert complex_pair.stats()["rel_l2"] == pytest.approx(1.0, rel=1e-5)
