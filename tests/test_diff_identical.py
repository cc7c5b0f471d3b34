"""Bit-identical pairs take a shortcut in the diff engine (no arithmetic over the values); what
it reports must be exactly what the comparison kernel reports for them."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import tracediff as td
from tracediff.compare.metrics import compare, identical, same_bytes

from diff_helpers import rng, write

ARRAYS = {
    "f32": rng(1).standard_normal((3, 7, 11)).astype(np.float32),
    "f64": rng(2).standard_normal((5, 13)),
    "f16": rng(3).standard_normal((7, 3)).astype(np.float16),
    "bf16": rng(4).standard_normal((11,)).astype(ml_dtypes.bfloat16),
    "i32": rng(5).integers(-9, 9, (3, 5)).astype(np.int32),
    "bool": rng(6).random((13,)) > 0.5,
    "zeros": np.zeros((3, 5), np.float32),
    "scalar": np.float32(2.5).reshape(()),
    "empty": np.zeros((0, 7), np.float32),
    "odd_bytes": rng(7).standard_normal((7,)).astype(np.float16),  # 14 bytes: not whole words
    "two_chunks": rng(8).standard_normal(300_001).astype(np.float32),
}


def _twins(tmp_path, arrays):
    records = [("forward", name, value) for name, value in arrays.items()]
    a = write(tmp_path / "a.h5", [(k, n, np.copy(v)) for k, n, v in records])
    b = write(tmp_path / "b.h5", records)
    return a, b


def test_identical_pairs_report_what_the_kernel_reports(tmp_path):
    a, b = _twins(tmp_path, ARRAYS)
    report = td.diff(a, b)
    assert report.ok
    ta, tb = td.open(a), td.open(b)
    for pair in report.pairs:
        ra, rb = ta.get(pair.a_name), tb.get(pair.b_name)
        tol = pair.tolerance
        kernel = compare(ra.read(), rb.read(), tol["rtol"], tol["atol"],
                         a_l2=float(ra.stats["l2"]), b_l2=float(rb.stats["l2"]))
        assert pair.status == "ok", pair.a_name
        assert pair.stats == kernel.stats(), pair.a_name
        assert pair.worst == kernel.worst() == []
    ta.close()
    tb.close()


def test_a_difference_in_the_last_element_is_still_found(tmp_path):
    ref = rng(9).standard_normal(300_001).astype(np.float32)
    cand = ref.copy()
    cand[-1] = np.nextafter(cand[-1], np.float32(np.inf))
    a = write(tmp_path / "a.h5", [("forward", "fc", cand)])
    b = write(tmp_path / "b.h5", [("forward", "fc", ref)])
    report = td.diff(a, b, rtol=0, atol=0)
    pair = report.pairs[0]
    assert pair.status == "diverged"
    assert pair.stats["argmax_abs"] == [300_000]
    assert pair.stats["mismatch_fraction"] == pytest.approx(1 / 300_001)


def test_signed_zero_is_not_the_same_bytes_but_compares_equal(tmp_path):
    ref = np.array([0.0, 1.0, 2.0], np.float32)
    cand = np.array([-0.0, 1.0, 2.0], np.float32)
    assert not same_bytes(cand, ref)
    a = write(tmp_path / "a.h5", [("forward", "fc", cand)])
    b = write(tmp_path / "b.h5", [("forward", "fc", ref)])
    assert td.diff(a, b, rtol=0, atol=0).pairs[0].status == "ok"


def test_identical_records_holding_nan_take_the_kernel_and_count_it(tmp_path):
    ref = np.array([np.nan, 1.0, np.inf], np.float32)
    a, b = _twins(tmp_path, {"fc": ref})
    pair = td.diff(a, b).pairs[0]
    assert pair.status == "ok"
    assert (pair.stats["nan_a"], pair.stats["nan_b"], pair.stats["inf_a"]) == (1, 1, 1)


@pytest.mark.parametrize("other", [
    np.zeros((3, 4), np.float64),                     # same bytes count, other dtype
    np.zeros((4, 3), np.float32),                     # same dtype, other shape
])
def test_same_bytes_needs_the_same_dtype_and_shape(other):
    assert same_bytes(np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32))
    assert not same_bytes(np.zeros((3, 4), np.float32), other)


def test_identical_comparison_norms_follow_the_kernel():
    x = rng(10).standard_normal(1000).astype(np.float32)
    l2 = math.sqrt(float(np.dot(x.astype(np.float64), x)))
    assert identical(x.shape, l2, l2).stats() == compare(x, x.copy(), 1e-5, 1e-5, a_l2=l2,
                                                         b_l2=l2).stats()


def test_equal_content_hashes_skip_reading_the_values(tmp_path, monkeypatch):
    """Every v2 record carries a content hash: identical stored pairs are settled from the
    index alone, with the same result as reading them, and a one-bit change is still read."""
    arrays = {"fc1": ARRAYS["f32"], "fc2": ARRAYS["two_chunks"]}
    a, b = _twins(tmp_path, arrays)
    expected = td.diff(a, b)
    read = []
    original = td.Record.view   # the diff reads through views
    monkeypatch.setattr(td.Record, "view", lambda self: read.append(self.name) or original(self))
    report = td.diff(a, b)
    assert read == []
    assert [p.stats for p in report.pairs] == [p.stats for p in expected.pairs]
    changed = arrays["fc2"].copy()
    changed[7] = np.nextafter(changed[7], np.float32(np.inf))
    c = write(tmp_path / "c.h5", [("forward", "fc1", arrays["fc1"]), ("forward", "fc2", changed)])
    assert td.diff(c, b).pairs[1].stats["max_abs"] > 0
    assert read == ["fc2", "fc2"]
