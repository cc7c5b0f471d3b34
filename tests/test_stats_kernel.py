"""The compiled one-pass statistics kernel (tracediff/_moments.c) gives what the NumPy path
gives, on every dtype, with NaN, Inf, zeros, tails shorter than a vector and means far larger
than the spread."""
import math
import shutil
import sysconfig

import ml_dtypes
import numpy as np
import pytest

from tracediff import stats

needs_kernel = pytest.mark.skipif(stats._kernel is None, reason="the C kernel is not built here")


def _numpy_summary(array, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(stats, "_kernel", None)
        return stats.summarize(array)


def _exact(array) -> dict:
    """The statistics in float64 over the finite values, the slow obvious way."""
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    finite = flat[np.isfinite(flat)]
    return {"min": finite.min(), "max": finite.max(), "mean": finite.mean(), "std": finite.std(),
            "l2": math.sqrt(float(np.sum(finite * finite))),
            "nan": int(np.isnan(flat).sum()), "inf": int(np.isinf(flat).sum()),
            "zero_frac": float(np.mean(flat == 0))}


def _cases():
    rng = np.random.default_rng(7)
    for n in (1, 3, 7, 31, 32, 33, 1023, 4096, 4097, 65537, 300_007):
        for dtype in (np.float32, np.float64):
            yield f"normal-{n}-{np.dtype(dtype).name}", rng.standard_normal(n).astype(dtype)
    relu = np.maximum(rng.standard_normal(10_007), 0).astype(np.float32)
    yield "relu-zeros", relu
    offset = (1e4 + 1e-3 * rng.standard_normal(50_021)).astype(np.float64)
    yield "mean-dwarfs-spread-f64", offset
    yield "mean-dwarfs-spread-f32", (100 + 1e-2 * rng.standard_normal(50_021)).astype(np.float32)
    holes = rng.standard_normal(9_001).astype(np.float32)
    holes[[5, 4096, 9000]] = [np.nan, np.inf, -np.inf]
    yield "nan-and-inf", holes
    yield "huge-values-overflow-float32-sums", np.full(5_003, 3e38, np.float32)
    yield "negative-zero", np.array([-0.0, 0.0, 1.0], np.float32)


@needs_kernel
@pytest.mark.parametrize("name, array", list(_cases()))
def test_kernel_matches_numpy_and_the_exact_values(name, array, monkeypatch):
    got, numpy_path = stats.summarize(array), _numpy_summary(array, monkeypatch)
    exact = _exact(array)
    for field in ("nan", "inf", "zero_frac", "min", "max"):
        assert got[field] == numpy_path[field] == exact[field], field
    # rounding of float32 sums, relative to the data's scale (a mean near 0 has no relative
    # precision of its own)
    tolerance = (1e-6 if array.dtype == np.float32 else 1e-12) * max(abs(exact["min"]), abs(exact["max"]))
    for field in ("mean", "std", "l2"):
        assert math.isclose(got[field], exact[field], rel_tol=1e-6, abs_tol=tolerance), field
        assert math.isclose(got[field], numpy_path[field], rel_tol=1e-5, abs_tol=tolerance), field


@needs_kernel
@pytest.mark.parametrize("array", [
    np.array([np.nan, np.nan], np.float32),
    np.array([np.inf, -np.inf, np.nan], np.float64),
    np.zeros(0, np.float32),
], ids=["all-nan", "no-finite-value", "empty"])
def test_kernel_without_finite_values(array, monkeypatch):
    got, numpy_path = stats.summarize(array), _numpy_summary(array, monkeypatch)
    assert got.keys() == numpy_path.keys()
    for field, value in numpy_path.items():
        assert got[field] == value or (math.isnan(got[field]) and math.isnan(value)), field


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.int64, np.uint8, np.bool_,
                                   np.complex64, ">f4"])
def test_other_dtypes_reach_the_kernel_converted(dtype, monkeypatch):
    rng = np.random.default_rng(3)
    values = rng.standard_normal(700_001) * 50
    if np.dtype(dtype).kind == "c":
        array = (values + 1j * values[::-1]).astype(dtype)
    else:
        array = values.astype(dtype)
    got, numpy_path = stats.summarize(array), _numpy_summary(array, monkeypatch)
    for field in ("numel", "nan", "inf", "zero_frac", "min", "max"):
        assert got[field] == numpy_path[field], field
    exact = _exact(np.abs(array) if array.dtype.kind == "c" else array.astype(np.float64))
    scale = max(abs(got["min"]), abs(got["max"]))
    for field in ("mean", "std", "l2"):  # the NumPy path sums float32 chunks: the looser one
        assert math.isclose(got[field], exact[field], rel_tol=1e-6, abs_tol=1e-6 * scale), field
        assert math.isclose(numpy_path[field], exact[field], rel_tol=1e-5, abs_tol=1e-5 * scale), field


@needs_kernel
def test_strided_views_are_summarised_as_their_values():
    base = np.arange(40_000, dtype=np.float32).reshape(200, 200)
    view = base[::3, 1::2].T
    assert stats.summarize(view) == stats.summarize(np.ascontiguousarray(view))


def test_kernel_refuses_other_types_with_one_line():
    if stats._kernel is None:
        pytest.skip("the C kernel is not built here")
    with pytest.raises(TypeError, match="^moments\\(\\) takes float32 or float64 data, not format '[a-z]'$"):
        stats._kernel(np.zeros(3, np.int64))


def test_kernel_is_built_where_a_c_compiler_is():
    """The extension is optional in pyproject.toml, so a failed build would pass silently:
    where a compiler exists, a missing kernel means the build broke."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): tracediff.stats uses NumPy")
    assert stats._kernel is not None, "tracediff._moments was not built: reinstall with `make`"
