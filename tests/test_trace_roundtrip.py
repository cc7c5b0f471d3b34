"""Every dtype and shape round-trips bit-exactly; names are free text; repeats get call indices."""
import ml_dtypes
import numpy as np
import pytest

import tracediff as td

RNG = np.random.default_rng(3)

CASES = {
    "float16": RNG.standard_normal((3, 7)).astype(np.float16),
    "float32": RNG.standard_normal((3, 7, 11)).astype(np.float32),
    "float64": RNG.standard_normal((5,)),
    "bfloat16": RNG.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
    "float8_e4m3fn": RNG.standard_normal((7,)).astype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": RNG.standard_normal((7,)).astype(ml_dtypes.float8_e5m2),
    "int8": np.arange(-3, 4, dtype=np.int8),
    "int32": np.arange(15, dtype=np.int32).reshape(3, 5),
    "int64": np.arange(6, dtype=np.int64),
    "uint8": np.arange(7, dtype=np.uint8),
    "bool": np.array([[True, False, True]]),
    "complex64": (RNG.standard_normal(3) + 1j * RNG.standard_normal(3)).astype(np.complex64),
    "complex128": RNG.standard_normal(2) + 1j,
    "scalar": np.array(2.5, dtype=np.float32),
    "zero_size": np.zeros((0, 7), dtype=np.float32),
    "nan_inf": np.array([np.nan, np.inf, -np.inf, 1.0, -0.0], dtype=np.float32),
    "fortran_order": np.asfortranarray(RNG.standard_normal((3, 5))),
}


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "all.h5"
    with td.Recorder(path, dims={"batch": 3, "features": 7}) as rec:
        for name, value in CASES.items():
            rec.forward(name, value)
    with td.open(path) as opened:
        yield opened


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_bit_exact(trace, name):
    expected = np.asarray(CASES[name])
    got = trace.get(name).read()
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    assert got.tobytes() == np.ascontiguousarray(expected).tobytes()


def test_listing_reports_logical_dtype_and_shape_without_reading(trace):
    record = trace.get("bfloat16")
    assert (record.dtype, record.shape) == ("bfloat16", (3, 5))
    assert record.stats["numel"] == 15


def test_stats_count_nan_inf_and_zeros(trace):
    stats = trace.get("nan_inf").stats
    assert (stats["nan"], stats["inf"]) == (1, 2)
    assert stats["min"] == -0.0 and stats["max"] == 1.0
    assert stats["zero_frac"] == pytest.approx(1 / 5)


def test_stats_match_numpy(trace):
    value = CASES["float32"].astype(np.float64)
    stats = trace.get("float32").stats
    assert stats["mean"] == pytest.approx(value.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(value.std(), rel=1e-6)
    assert stats["l2"] == pytest.approx(np.linalg.norm(value), rel=1e-5)
    assert (stats["min"], stats["max"]) == (pytest.approx(value.min()), pytest.approx(value.max()))


def test_names_are_free_text_and_repeats_get_call_indices(tmp_path):
    path = tmp_path / "names.h5"
    names = ["enc/layers.0:attn", "größe/σ", "a b", "<script>", "x\ty"]
    with td.Recorder(path) as rec:
        for name in names:
            rec.forward(name, np.ones(2))
        rec.forward(names[0], np.zeros(2))
        rec.backward(names[0], np.full(2, 7.0), call=1)
    trace = td.open(path)
    assert [r.name for r in trace][:5] == names
    again = trace.get(names[0], call=1)
    assert again.index == 5 and again.read().tolist() == [0.0, 0.0]
    assert trace.get(names[0], call=0).read().tolist() == [1.0, 1.0]
    assert trace.get(names[0], kind="backward", call=1).read().tolist() == [7.0, 7.0]


def test_root_attributes(tmp_path):
    path = tmp_path / "attrs.h5"
    with td.Recorder(path, framework="torch", framework_version="2.13.0", dims={"batch": 3},
                     model="MLP", seed=11) as rec:
        rec.loss(np.float32(1.5))
    trace = td.open(path)
    attrs = trace.attrs
    assert attrs["format"] == "tracediff.trace" and attrs["format_version"] == 3
    assert (attrs["framework"], attrs["framework_version"], attrs["model"], attrs["seed"]) == \
        ("torch", "2.13.0", "MLP", 11)
    assert trace.dims == {"batch": 3} and trace.complete is True
    for key in ("tracediff_version", "python", "host", "created"):
        assert attrs[key]
    assert trace.get("loss", kind="loss").read() == np.float32(1.5)


def test_filters_by_kind_name_glob_and_step(tmp_path):
    path = tmp_path / "filters.h5"
    with td.Recorder(path) as rec:
        for step in range(2):
            rec.step(step)
            rec.forward("fc1", np.ones(3))
            rec.forward("fc2", np.ones(3))
            rec.backward("fc2", np.ones(3))
            rec.param("fc1.weight", np.ones((3, 3)), grad=np.zeros((3, 3)))
    trace = td.open(path)
    assert [r.name for r in trace.records(kind="forward", step=1)] == ["fc1", "fc2"]
    assert [r.kind for r in trace.records(name="fc1*", step=0)] == ["forward", "param", "param_grad"]
    assert len(trace.records(kind=("backward", "param_grad"))) == 4
    assert trace.steps == [0, 1]


def test_numpy_adapter_records_inputs_and_closes(tmp_path):
    from tracediff.adapters import numpy as tdn

    def net(rec, x):
        h = np.maximum(x @ np.eye(7), 0)
        rec.forward("relu", h)
        return h

    out = tdn.record(net, np.ones((3, 7)), tmp_path / "np.h5")
    trace = td.open(tmp_path / "np.h5")
    assert [r.name for r in trace] == ["input", "relu"]
    assert trace.framework == "numpy" and trace.complete
    assert out.shape == (3, 7)
