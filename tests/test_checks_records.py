"""Health checks on hand-built traces: non-finite values, train/eval mode, input data, and
statistics-only traces."""
from __future__ import annotations

import numpy as np
import pytest

import tracediff as td
from checks_nets import mlp_trace

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 6)).astype(np.float32)


def report_of(tmp_path, build, **options):
    path = tmp_path / "t.h5"
    with td.Recorder(path, framework="torch", **options) as rec:
        build(rec)
    return td.check(path)


# -- nonfinite ------------------------------------------------------------------------------
def test_nan_first_appearing_in_softmax_is_named_with_its_finite_input(tmp_path):
    def build(rec):
        rec.input("input", X)
        scores = X @ X.T
        rec.forward("attn.scores", scores, op_type="matmul")
        bad = np.full_like(scores, np.nan)
        rec.forward("attn.softmax", bad, op_type="Softmax")
        rec.forward("fc", bad[:, :3], op_type="Linear")
        rec.loss(np.float32(np.nan))
    result = report_of(tmp_path, build)["nonfinite"]
    assert result.status == "fail"
    assert result.layers == ["attn.softmax", "fc", "loss"]
    assert result.message == ("NaN first appears in the output of `attn.softmax`, whose input "
                              "`attn.scores` (forward) was finite; 3 record(s) non-finite")


def test_nan_born_in_the_backward_pass_is_found_walking_from_the_loss(tmp_path):
    def build(rec):
        rec.input("input", X)
        rec.forward("norm", X, op_type="LayerNorm")
        rec.forward("head", X[:, :2], op_type="Linear")
        rec.loss(np.float32(0.5))
        rec.backward("head", np.ones((8, 2), np.float32))
        rec.backward("norm", np.full((8, 6), np.inf, np.float32))
    result = report_of(tmp_path, build)["nonfinite"]
    assert (result.status, result.layers) == ("fail", ["norm"])
    assert result.message.startswith("Inf first appears in the gradient of `norm`'s output (backward), "
                                     "whose input `head` (backward) was finite")


def test_nan_in_a_parameter_at_a_later_step_is_reported_with_its_step(tmp_path):
    def build(rec):
        for step in range(2):
            rec.step(step)
            rec.input("input", X)
            w = np.ones((6, 6), np.float32) * (np.nan if step else 1)
            rec.param("fc.weight", w, role="weight")
            rec.forward("fc", X @ w, op_type="Linear")
    result = report_of(tmp_path, build)["nonfinite"]
    assert result.layers[0] == "fc.weight"
    assert result.message.startswith("NaN first appears in the parameter `fc.weight` at step 1")


def test_minus_inf_attention_mask_with_finite_outputs_is_only_a_warning(tmp_path):
    def build(rec):
        rec.input("input", X)
        mask = np.where(np.tril(np.ones((8, 8))) > 0, 0, -np.inf).astype(np.float32)
        rec.forward("mask", mask, op_type="masked_fill")
        rec.forward("attn", X, op_type="MultiheadAttention")
        rec.loss(np.float32(1.0))
        rec.backward("attn", X)
    result = report_of(tmp_path, build)["nonfinite"]
    assert (result.status, result.layers) == ("warn", ["mask"])
    assert "masking with -inf is fine" in result.message


def test_finite_trace_passes_nonfinite(tmp_path):
    result = report_of(tmp_path, lambda rec: rec.forward("fc", X))["nonfinite"]
    assert (result.status, result.message) == ("pass", "all 1 records are finite")


# -- train_mode -----------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["Dropout", "BatchNorm2d", "BatchNormalization"])
def test_layer_left_in_training_mode_in_an_evaluation_trace_fails(tmp_path, op_type):
    def build(rec):
        rec.input("input", X)
        rec.forward("fc", X, op_type="Linear", training=False)
        rec.forward("drop", X, op_type=op_type, training=True)
        rec.forward("head", X, op_type="Linear", training=False)
    result = report_of(tmp_path, build)["train_mode"]
    assert (result.status, result.layers) == ("fail", ["drop"])
    assert "evaluation trace (no loss or gradients recorded)" in result.message


def test_evaluation_trace_in_eval_mode_passes(tmp_path):
    def build(rec):
        rec.input("input", X)
        rec.forward("drop", X, op_type="Dropout", training=False)
    result = report_of(tmp_path, build)["train_mode"]
    assert result.status == "pass"


def test_dropout_training_in_a_training_trace_is_fine(tmp_path):
    def build(rec):
        rec.input("input", X)
        rec.forward("drop", X, op_type="Dropout", training=True)
        rec.loss(np.float32(1.0))
    assert report_of(tmp_path, build)["train_mode"].status == "pass"


def test_trace_meta_mode_eval_makes_it_an_evaluation_trace(tmp_path):
    def build(rec):
        rec.input("input", X)
        rec.forward("drop", X, op_type="Dropout", training=True)
        rec.loss(np.float32(1.0))
    result = report_of(tmp_path, build, meta={"mode": "eval"})["train_mode"]
    assert result.status == "fail" and "trace meta mode='eval'" in result.message


def test_two_identical_passes_that_differ_name_the_random_layer(tmp_path):
    keep = [RNG.random(X.shape) > 0.5 for _ in range(2)]

    def build(rec):
        for step in range(2):
            rec.step(step)
            rec.input("input", X)
            rec.param("fc.weight", np.eye(6, dtype=np.float32), role="weight")
            rec.forward("fc", X, op_type="Linear")
            rec.forward("drop", X * keep[step] * 2, op_type="Dropout")
            rec.forward("head", (X * keep[step] * 2)[:, :2], op_type="Linear")
    result = report_of(tmp_path, build)["train_mode"]
    assert (result.status, result.layers) == ("fail", ["drop"])
    assert result.message.startswith("two identical forward passes (step 0 and step 1: same inputs "
                                     "and parameters) differ first at `drop`")


def test_dropout_differing_between_training_passes_is_by_design(tmp_path):
    keep = [RNG.random(X.shape) > 0.5 for _ in range(2)]

    def build(rec):
        for step in range(2):
            rec.step(step)
            rec.input("input", X)
            rec.param("fc.weight", np.eye(6, dtype=np.float32), role="weight")   # lr = 0
            rec.forward("drop", X * keep[step] * 2, op_type="Dropout", training=True)
            rec.loss(np.float32(1.0))
    assert report_of(tmp_path, build)["train_mode"].status == "pass"


def test_repeated_passes_after_a_weight_update_are_not_compared(tmp_path):
    def build(rec):
        for step in range(2):
            rec.step(step)
            rec.input("input", X)
            w = np.eye(6, dtype=np.float32) * (1 + step)
            rec.param("fc.weight", w, role="weight")
            rec.forward("fc", X @ w, op_type="Linear")
    assert report_of(tmp_path, build)["train_mode"].status != "fail"


# -- input_data -----------------------------------------------------------------------------
@pytest.mark.parametrize("value, status, text", [
    (np.zeros((8, 6), np.float32), "fail", "`input`: all zeros"),
    (np.full((8, 6), 3.0, np.float32), "fail", "`input`: constant (3 everywhere)"),
    (np.where(X > 1, np.nan, X), "fail", "NaN and 0 Inf values"),
    (np.tile(X[:1], (8, 1)), "fail", "`input`: all 8 samples of the batch are identical"),
    (np.abs(X) * 80 + 120, "warn", "`input`: far from standardised (mean"),
    (X, "pass", "1 input(s) look standardised and varied"),
])
def test_input_data_problems(tmp_path, value, status, text):
    result = report_of(tmp_path, lambda rec: rec.input("input", value))["input_data"]
    assert result.status == status
    assert text in result.message
    if status != "pass":
        assert result.layers == ["input"]


def test_single_label_in_the_batch_is_a_warning(tmp_path):
    def build(rec):
        rec.input("input", X)
        rec.input("labels", np.full(8, 3, np.int64))
    result = report_of(tmp_path, build)["input_data"]
    assert (result.status, result.layers) == ("warn", ["labels"])
    assert "a single label (3) for all 8 samples" in result.message


def test_varied_labels_and_image_range_inputs_pass(tmp_path):
    def build(rec):
        rec.input("input", RNG.random((8, 3, 4, 4)).astype(np.float32))  # images in [0, 1]
        rec.input("labels", np.arange(8) % 3)
    assert report_of(tmp_path, build)["input_data"].status == "pass"


# -- skips say why --------------------------------------------------------------------------
def test_forward_only_trace_skips_gradient_checks_with_the_reason(tmp_path):
    report = report_of(tmp_path, lambda rec: (rec.input("input", X), rec.forward("fc", X)))
    flow = report["gradient_flow"]
    assert flow.status == "skip"
    assert flow.message == "skipped: no backward records: record with a loss to check gradients"
    assert report["grad_weight_ratio"].status == "skip"
    assert report["initial_loss"].message.startswith("skipped: no scalar loss record")


def test_statistics_only_trace_is_checked_from_stats_and_samples(tmp_path):
    dead_path = mlp_trace(str(tmp_path / "full.h5"), bias={1: -10.0}, steps=2)
    stats_path = tmp_path / "stats.h5"
    with td.open(dead_path) as full, td.Recorder(stats_path, framework="torch", values=False) as rec:
        step = None
        for r in full:
            if r.step != step:
                step = r.step
                rec.step(step)
            rec.record(r.kind, r.name, r.read(), call=r.call, **r.meta)
    report = td.check(stats_path)
    assert report["dead_units"].status == "fail" and report["dead_units"].layers == ["act1"]
    assert "statistics only" in report["dead_units"].message
    assert report["gradient_flow"].layers[0] == "act1"
    assert report["update_ratio"].status != "skip"


def test_check_accepts_an_open_trace_and_restricts_to_some_ids(tmp_path):
    path = mlp_trace(str(tmp_path / "t.h5"))
    with td.open(path) as trace:
        report = td.check(trace, only=["nonfinite", "dead_units"])
    assert [c.id for c in report.checks] == ["nonfinite", "dead_units"]


@pytest.mark.parametrize("kwargs, text", [
    ({"classes": 1}, "classes must be an integer >= 2, got 1"),
    ({"only": ["nonsense"]}, "unknown check id(s) 'nonsense'"),
    ({"extra": ["x"]}, "extra results must be CheckResult objects"),
])
def test_bad_options_are_one_line_errors(tmp_path, kwargs, text):
    path = mlp_trace(str(tmp_path / "t.h5"))
    with pytest.raises(td.TraceDiffError) as info:
        td.check(path, **kwargs)
    assert text in str(info.value) and "\n" not in str(info.value)


def test_missing_trace_is_a_one_line_error(tmp_path):
    with pytest.raises(td.TraceDiffError, match="cannot open trace .*no such file"):
        td.check(tmp_path / "absent.h5")


def test_unbatched_image_with_replicated_grey_channels_is_not_a_duplicate_batch(tmp_path):
    grey = RNG.standard_normal((1, 8, 8)).astype(np.float32)

    def build(rec):
        rec.input("input", np.repeat(grey, 3, axis=0))              # (3, 8, 8), no batch axis
        rec.forward("conv", RNG.standard_normal((16, 8, 8)).astype(np.float32), op_type="Conv2d")
    assert report_of(tmp_path, build)["input_data"].status == "pass"
