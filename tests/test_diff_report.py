"""The report: exact JSON fields, strict JSON, statuses (nonfinite, dtype_mismatch), stats-only
traces, zeros in the reference, backward and parameter-gradient divergences, attribution."""
import json
import math

import numpy as np
import pytest

import tracediff as td

from diff_helpers import chain, rng, write

PAIR_FIELDS = {"a_name", "b_name", "kind", "status", "shape_a", "shape_b", "stats", "tolerance", "hint"}
STAT_FIELDS = {"max_abs", "max_rel", "mean_abs", "rmse", "rel_l2", "cosine", "mismatch_fraction",
               "argmax_abs", "nan_a", "nan_b", "inf_a", "inf_b", "p99", "sqnr_db", "min_rtol", "min_atol"}


def simple(tmp_path, candidate_scale=1.0):
    g = rng(0)
    ref = {"fc1": g.standard_normal((3, 11)), "act": g.standard_normal((3, 11)), "fc2": g.standard_normal((3, 5))}
    return chain(tmp_path, ref, {"act": ref["act"] * candidate_scale})


def test_json_has_exactly_the_contract_fields(tmp_path):
    a, b = simple(tmp_path, 2.0)
    report = td.diff(a, b)
    out = tmp_path / "report.json"
    report.to_json(out)
    data = json.loads(out.read_text())
    assert data["schema"] == "tracediff.diff/1"
    assert data["ok"] is False
    assert data["a"] == {"path": a, "framework": "numpy"} and data["b"] == {"path": b, "framework": "numpy"}
    assert set(data["first_divergence"]) >= {"forward", "backward"}
    assert data["first_divergence"]["backward"] is None
    fwd = data["first_divergence"]["forward"]
    assert PAIR_FIELDS <= set(fwd) and STAT_FIELDS <= set(fwd["stats"])
    assert (fwd["a_name"], fwd["b_name"], fwd["kind"], fwd["status"]) == ("act", "act", "forward", "diverged")
    assert fwd["shape_a"] == [3, 11] and fwd["match"] == "name"
    assert set(fwd["tolerance"]) >= {"rtol", "atol"}
    assert fwd["tolerance"]["atol"] == 1e-7          # float64 default
    assert fwd["stats"]["mismatch_fraction"] == 1.0
    assert fwd["stats"]["cosine"] == pytest.approx(1.0)
    assert fwd["stats"]["rel_l2"] == pytest.approx(1.0)
    assert len(fwd["stats"]["argmax_abs"]) == 2
    assert fwd["introduced"]["verdict"] == "introduced here" and fwd["introduced"]["previous"] == "fc1"
    assert len(fwd["worst"]) == 10 and set(fwd["worst"][0]) == {"index", "a", "b", "diff"}
    assert fwd["worst"][0]["diff"] == pytest.approx(fwd["stats"]["max_abs"])
    assert [p["b_name"] for p in data["pairs"]] == ["fc1", "act", "fc2"]
    assert data["unmatched"] == {"a": [], "b": []}
    hist = data["histogram"]["forward"]
    assert sum(hist["counts"]) == 33 and len(hist["edges"]) == len(hist["counts"]) + 1
    assert data["dims"]["hidden"] == 11


def test_json_is_strict_with_nonfinite_values(tmp_path):
    g = rng(1)
    ref = g.standard_normal((3, 7))
    bad = ref.copy()
    bad[1, 2] = np.nan
    bad[2, 4] = np.inf
    a, b = chain(tmp_path, {"x": ref}, {"x": bad})
    report = td.diff(a, b)
    text = report.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    pair = report.first_divergence.forward
    assert pair.status == "nonfinite"
    assert (pair.stats["nan_a"], pair.stats["inf_a"], pair.stats["nan_b"]) == (1, 1, 0)
    assert pair.hint == "non-finite values differ: a has 1 NaN / 1 Inf, b has 0 NaN / 0 Inf; first at [1, 2]"


def test_same_nans_on_both_sides_match(tmp_path):
    ref = rng(2).standard_normal((3, 7))
    ref[0, 0] = np.nan
    a, b = chain(tmp_path, {"x": ref}, {"x": ref.copy()})
    report = td.diff(a, b)
    assert report.ok and report.pairs[0].stats["nan_a"] == 1


def test_zeros_in_the_reference_never_give_infinite_relative_error(tmp_path):
    ref = np.zeros((3, 7))
    cand = ref.copy()
    cand[0, 1] = 1e-3
    a, b = chain(tmp_path, {"x": ref}, {"x": cand})
    stats = td.diff(a, b).first_divergence.forward.stats
    assert math.isfinite(stats["max_rel"]) and stats["max_rel"] == pytest.approx(1e-3 / 1e-7)
    assert stats["rel_l2"] is None or math.isfinite(stats["rel_l2"])
    assert stats["argmax_abs"] == [0, 1]


def test_dtype_mismatch(tmp_path):
    ref = np.arange(21, dtype=np.float32).reshape(3, 7)
    a, b = chain(tmp_path, {"ids": ref}, {"ids": ref.astype(np.int64)})
    pair = td.diff(a, b).first_divergence.forward
    assert pair.status == "dtype_mismatch"
    assert pair.hint == "a is int64, b is float32: different kinds of number"


def test_float64_port_against_float32_reference_is_judged_at_float32(tmp_path):
    ref = rng(3).standard_normal((3, 7)).astype(np.float32)
    a, b = chain(tmp_path, {"x": ref}, {"x": ref.astype(np.float64) * (1 + 1e-7)})
    report = td.diff(a, b)
    assert report.ok
    assert report.pairs[0].tolerance["atol"] == 1e-5


def test_cli_tolerances_override_the_defaults(tmp_path):
    a, b = simple(tmp_path, 1.01)
    assert not td.diff(a, b).ok
    report = td.diff(a, b, rtol=0.02, atol=0)
    assert report.ok and report.pairs[1].tolerance["rtol"] == 0.02


def test_per_layer_tolerances_from_toml(tmp_path):
    a, b = simple(tmp_path, 1.01)
    toml = tmp_path / "tol.toml"
    toml.write_text('[tolerances]\n"ac*" = {rtol = 0.05, atol = 0.0}\n')
    report = td.diff(a, b, tolerances=toml)
    assert report.ok
    act = report.pairs[1]
    assert (act.tolerance["rtol"], act.tolerance["source"]) == (0.05, "file")


def test_stats_only_traces_compare_by_hash_and_sample(tmp_path):
    g = rng(4)
    big = g.standard_normal((3, 7, 11))
    other = big.copy()
    other[0, 0, 0] += 1.0
    a = write(tmp_path / "a.h5", [("forward", "same", big), ("forward", "changed", big * 2)], values=False)
    b = write(tmp_path / "b.h5", [("forward", "same", big), ("forward", "changed", big)], values=False)
    report = td.diff(a, b)
    same, changed = report.pairs
    assert same.status == "ok" and same.stats["identical_hash"] is True
    assert changed.status == "diverged" and changed.stats["sampled"] is True
    assert report.first_divergence.forward.b_name == "changed"


def test_backward_first_divergence_walks_from_the_loss(tmp_path):
    g = rng(5)
    x, h1, h2 = g.standard_normal((3, 7)), g.standard_normal((3, 11)), g.standard_normal((3, 5))
    d2, d1 = g.standard_normal((3, 5)), g.standard_normal((3, 11))
    recs = lambda d1_, d2_: [("forward", "fc1", h1), ("forward", "fc2", h2), ("loss", "loss", np.float64(1.0)),
                             ("backward", "fc2", d2_), ("backward", "fc1", d1_)]
    a = write(tmp_path / "a.h5", recs(d1 * 3, d2 * 2))
    b = write(tmp_path / "b.h5", recs(d1, d2))
    report = td.diff(a, b)
    assert report.first_divergence.forward is None
    back = report.first_divergence.backward
    assert back.b_name == "fc2" and back.introduced["verdict"] == "introduced here"
    assert back.introduced["previous"] == "loss"


def test_weight_gradient_divergence_reported_when_activations_match(tmp_path):
    g = rng(6)
    h, dh, w, dw = g.standard_normal((3, 11)), g.standard_normal((3, 11)), g.standard_normal((11, 7)), g.standard_normal((11, 7))
    recs = lambda dw_: [("forward", "fc1", h), ("loss", "loss", np.float64(1.0)), ("backward", "fc1", dh),
                        ("param", "fc1.weight", w), ("param_grad", "fc1.weight", dw_)]
    report = td.diff(write(tmp_path / "a.h5", recs(dw * 0.5)), write(tmp_path / "b.h5", recs(dw)))
    assert not report.ok
    fd = report.first_divergence
    assert fd.forward is None and fd.backward is None
    assert fd.param_grad.b_name == "fc1.weight"
    grad = next(p for p in report.pairs if p.kind == "param_grad")
    assert grad.status == "diverged" and grad.hint.startswith("a = 0.5 x b: a constant scale factor")


def test_error_growing_slowly_is_inherited(tmp_path):
    g = rng(7)
    h1, h2 = g.standard_normal((3, 11)), g.standard_normal((3, 11))
    noise = 1 + 5e-6 * np.sign(g.standard_normal((3, 11)))
    a, b = chain(tmp_path, {"fc1": h1, "fc2": h2}, {"fc1": h1 * noise, "fc2": h2 * noise * noise})
    report = td.diff(a, b, rtol=6e-6, atol=0)
    fwd = report.first_divergence.forward
    assert fwd.b_name == "fc2"
    assert fwd.introduced["verdict"] == "inherited"
    assert fwd.introduced["previous"] == "fc1" and 1 < fwd.introduced["growth"] < 10



def test_bad_tolerance_argument(tmp_path):
    a, b = simple(tmp_path)
    with pytest.raises(td.TraceDiffError, match=r"rtol must be a finite number >= 0, got -1"):
        td.diff(a, b, rtol=-1)


def test_diff_holds_one_pair_of_tensors_at_a_time(tmp_path, monkeypatch):
    import gc
    import weakref

    from tracediff.compare import engine

    monkeypatch.setattr(engine, "MAX_COMPARE_THREADS", 1)   # threads: see test_diff_threads.py
    a, b = simple(tmp_path, 2.0)
    alive, most = [], []
    original = td.Record.view   # the diff reads through views: mapped pages count as memory too

    def tracking_read(self):
        gc.collect()
        most.append(sum(ref() is not None for ref in alive))
        array = original(self)
        alive.append(weakref.ref(array))
        return array

    monkeypatch.setattr(td.Record, "view", tracking_read)
    report = td.diff(a, b)
    assert report.first_divergence.forward.b_name == "act"
    assert len(most) >= 4   # pairs with equal content hashes are settled without a read
    # when a tensor is read, at most the other side of its pair (and, for the hint of the first
    # divergence, that pair) is still alive
    assert max(most) <= 2


def test_bfloat16_candidate_judged_at_bfloat16(tmp_path):
    import ml_dtypes

    ref = rng(8).standard_normal((3, 7, 11)).astype(np.float32)
    a, b = chain(tmp_path, {"h": ref, "g": ref}, {"h": ref.astype(ml_dtypes.bfloat16),
                                                  "g": (ref * 1.25).astype(ml_dtypes.bfloat16)})
    report = td.diff(a, b)
    h, g = report.pairs
    assert (h.status, h.dtype_a, h.tolerance["atol"]) == ("ok", "bfloat16", 1e-5)
    assert g.status == "diverged"
    # bfloat16's default rtol 1.6e-2, grown with depth but capped at 2.5x for 16-bit forwards
    assert g.tolerance["rtol"] == pytest.approx(0.04, abs=1e-4)


def test_training_steps_align_step_by_step(tmp_path):
    import tracediff as td_

    g = rng(9)
    h0, h1 = g.standard_normal((3, 7)), g.standard_normal((3, 7))

    def trace(path, second):
        with td_.Recorder(path, dims={"batch": 3, "features": 7}) as rec:
            rec.step(0)
            rec.forward("fc", h0)
            rec.step(1)
            rec.forward("fc", second)
        return str(path)

    report = td.diff(trace(tmp_path / "a.h5", h1 + 1.0), trace(tmp_path / "b.h5", h1))
    assert [(p.step, p.status) for p in report.pairs] == [(0, "ok"), (1, "diverged")]
    assert report.first_divergence.forward.step == 1
