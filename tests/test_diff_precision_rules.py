"""The precision that flows, rule by rule, on traces written with td.Recorder."""
import ml_dtypes
import numpy as np

import tracediff as td

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 16)).astype(np.float32)


def write(path, records, meta=None):
    """``records``: (name, value, extra meta, inputs or None = no dataflow recorded)."""
    with td.Recorder(path, meta=meta) as rec:
        rec.input("x", X)
        for name, value, extra, inputs in records:
            if inputs is None:
                rec.record("forward", name, value, **extra)
            else:
                rec.forward(name, value, inputs=inputs, **extra)
    return str(path)


def tolerances(report):
    return {p.b_name: p.tolerance for p in report.pairs if p.kind == "forward"}


def test_dataflow_decides_and_execution_order_is_the_fallback(tmp_path):
    h = X * 2
    half = h.astype(ml_dtypes.bfloat16)
    branches = [("low", half, {}, ["x"]), ("side", X + 1, {}, ["x"]), ("join", h + 1, {}, ["low", "side"])]
    a = write(tmp_path / "a.h5", branches)
    b = write(tmp_path / "b.h5", [(n, np.asarray(v, np.float32), e, i) for n, v, e, i in branches])
    tol = tolerances(td.diff(a, b))
    # "side" read only x: float32, although a bfloat16 record ran before it; "join" read "low"
    assert (tol["side"]["precision"], tol["join"]["precision"]) == ("float32", "bfloat16")
    unknown = [(n, v, e, None) for n, v, e, _ in branches]
    a = write(tmp_path / "a2.h5", unknown)
    b = write(tmp_path / "b2.h5", [(n, np.asarray(v, np.float32), e, None) for n, v, e, _ in unknown])
    tol = tolerances(td.diff(a, b))
    assert (tol["side"]["precision"], tol["join"]["precision"]) == ("bfloat16", "bfloat16")


def test_tf32_and_matmul_precision_settings(tmp_path):
    records = [("fc", X @ np.eye(16, dtype=np.float32), {"device": "cuda:0"}, ["x"]),
               ("cpu_fc", X, {"device": "cpu"}, ["x"])]
    ref = write(tmp_path / "ref.h5", records)
    tf32 = write(tmp_path / "tf32.h5", records, meta={"float32_matmul_precision": "high"})
    tol = tolerances(td.diff(tf32, ref))
    assert tol["fc"]["precision"] == "tensorfloat32" and tol["fc"]["rtol"] == 2.5e-3
    assert tol["cpu_fc"]["precision"] == "float32"
    medium = write(tmp_path / "medium.h5", records, meta={"float32_matmul_precision": "medium"})
    assert {t["precision"] for t in tolerances(td.diff(medium, ref)).values()} == {"bfloat16"}


def test_a_five_percent_error_at_depth_100_in_bfloat16_is_named(tmp_path):
    """The old growth, 4 sqrt(d), allowed 0.64 of the scale there."""
    chain = [(f"l{i}", (X * (1 + i / 100)).astype(ml_dtypes.bfloat16), {}, [f"l{i - 1}" if i else "x"])
             for i in range(100)]
    bad = list(chain)
    bad[98] = ("l98", (np.asarray(chain[98][1], np.float32) * 1.05).astype(ml_dtypes.bfloat16), {}, ["l97"])
    report = td.diff(write(tmp_path / "bad.h5", bad), write(tmp_path / "ref.h5", chain))
    first = report.first_divergence.forward
    assert first.b_name == "l98" and first.tolerance["rtol"] == 0.04
    assert td.diff(write(tmp_path / "same.h5", chain), tmp_path / "ref.h5").ok


def test_fp64_run_of_another_model_is_refused(tmp_path):
    import pytest

    ref = write(tmp_path / "ref.h5", [("fc", X * 2, {}, ["x"])])
    with td.Recorder(tmp_path / "g.h5") as rec:
        rec.input("other", X.astype(np.float64))
        rec.forward("dense", (X * 2).astype(np.float64))
    with pytest.raises(td.TraceDiffError, match="none of its records has the name of a record"):
        td.diff(ref, ref, fp64=tmp_path / "g.h5")
