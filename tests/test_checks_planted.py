"""Health checks on traces recorded from a NumPy MLP (torch-adapter meta): each planted bug
makes its check fire naming the layer where it lives; the healthy net raises no alarm."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tracediff as td
from checks_nets import data, mlp_trace

ALL_IDS = ["input_data", "nonfinite", "initial_loss", "activation_spread", "saturation", "dead_units",
           "gradient_flow", "grad_weight_ratio", "frozen_params", "update_ratio", "train_mode",
           "loss_input", "batchnorm_batch", "labels", "regularisation"]


def check(tmp_path, name="t.h5", classes=None, **options):
    return td.check(mlp_trace(str(tmp_path / name), **options), classes=classes)


def alarms(report):
    return {c.id: c.status for c in report.checks if c.status in ("warn", "fail")}


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_healthy_mlp_trained_three_steps_raises_no_alarm(tmp_path, act):
    report = check(tmp_path, steps=3, act=act, classes=10)
    assert alarms(report) == {}
    assert report.ok
    assert [c.id for c in report.checks] == ALL_IDS
    ran = {c.id for c in report.checks if c.status == "pass"}
    assert {"input_data", "nonfinite", "initial_loss", "activation_spread", "gradient_flow",
            "grad_weight_ratio", "frozen_params", "update_ratio"} <= ran
    assert report["saturation" if act != "relu" else "dead_units"].status == "pass"


def test_dead_relu_layer_is_named_by_dead_units_and_gradient_flow(tmp_path):
    report = check(tmp_path, bias={1: -10.0})
    dead = report["dead_units"]
    assert (dead.status, dead.layers, dead.value) == ("fail", ["act1"], 1.0)
    assert dead.message.startswith("1 of `act1`'s units never positive across the batch")
    flow = report["gradient_flow"]
    assert flow.status == "fail"
    assert flow.layers == ["act1", "fc1", "act0", "fc0"]
    assert flow.message == "the gradient is exactly zero at `fc1` and every layer before it: it stops at `act1`"
    assert not report.ok


def test_tanh_saturated_by_large_weights_names_the_first_layer(tmp_path):
    report = check(tmp_path, act="tanh", scale=3.0)
    sat = report["saturation"]
    assert sat.status == "fail"
    assert sat.layers == ["act0", "act1"]
    assert sat.value > 0.5
    # the pre-activation is read from the producer record, verified against the output
    assert sat.details["input_from"]["act0"] == "producer `fc0`"


def test_saturation_from_the_output_alone_when_the_producer_is_not_the_input(tmp_path):
    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32) * 10
    with td.Recorder(tmp_path / "s.h5", framework="torch") as rec:
        rec.forward("scale", x * 3, op_type="Linear")     # not what the sigmoid consumed
        rec.forward("gate", 1 / (1 + np.exp(-x)), op_type="Sigmoid")
    sat = td.check(tmp_path / "s.h5")["saturation"]
    assert sat.details["input_from"]["gate"] == "inverted output"
    assert (sat.status, sat.layers) == ("fail", ["gate"])


def test_deep_sigmoid_net_has_vanishing_gradients(tmp_path):
    report = check(tmp_path, act="sigmoid", widths=(20,) + (32,) * 12 + (10,))
    flow = report["gradient_flow"]
    assert flow.status == "fail"
    assert flow.value < 1e-5
    assert flow.message.startswith("vanishing gradients: gradient norm")
    assert "`fc0` (first layer)" in flow.message and "`<root>` (last)" in flow.message
    # walking from the loss, the first layer whose gradient is 1000x below the last one
    norms = flow.details["norms"]
    first_low = next(n for n in reversed(list(norms)) if norms[n] / norms["<root>"] < 1e-3)
    assert flow.layers[0] == first_low
    assert report["saturation"].status == "pass"   # small inputs: vanishing, not saturation


def test_tiny_init_collapses_activations_from_the_first_layer(tmp_path):
    spread = check(tmp_path, scale=0.01)["activation_spread"]
    assert spread.status == "warn"
    assert spread.layers[0] == "fc0"
    assert spread.message.startswith("activations collapse from `fc0` on")


def test_large_init_blows_activations_up(tmp_path):
    spread = check(tmp_path, scale=1.0)["activation_spread"]
    assert spread.status == "warn" and spread.layers[0] == "fc1"
    assert "blow up" in spread.message


def test_overconfident_last_layer_fails_initial_loss_with_classes_given(tmp_path):
    report = check(tmp_path, layer_scale={2: 30.0}, classes=10)
    loss = report["initial_loss"]
    assert loss.status == "fail"
    assert loss.layers == ["<root>", "loss"]
    assert loss.value > 3 * np.log(10)
    assert "initial logits are too large" in loss.advice


def test_initial_loss_without_classes_only_assumes_and_warns(tmp_path):
    loss = check(tmp_path, layer_scale={2: 30.0})["initial_loss"]
    assert loss.status == "warn"
    assert "assuming a classification loss" in loss.message


def test_summed_loss_is_recognised_from_recorded_labels(tmp_path):
    loss = check(tmp_path, run_options={"reduction": "sum", "labels": True})["initial_loss"]
    assert loss.status == "fail"   # confirmed by the integer labels input, no classes= needed
    assert "width of `<root>`" in loss.message
    assert loss.advice.startswith("the loss is about 32 x ln(C): it is summed over the batch of 32")


def test_initial_loss_skips_with_reason_for_a_regression_head(tmp_path):
    x, _ = data()
    with td.Recorder(tmp_path / "r.h5") as rec:
        rec.input("x", x)
        rec.forward("head", x[:, :1])
        rec.loss(np.float32(0.7))
    loss = td.check(tmp_path / "r.h5")["initial_loss"]
    assert loss.status == "skip"
    assert loss.message == ("skipped: the last output `head` has width 1 and nothing says the loss "
                            "classifies: pass classes=N (--classes N)")


def test_tiny_weights_give_a_huge_gradient_to_weight_ratio(tmp_path):
    ratio = check(tmp_path, layer_scale={1: 1e-6})["grad_weight_ratio"]
    assert ratio.status == "fail"
    assert ratio.layers[0] == "fc1.weight"
    assert ratio.value > 1e4


def test_update_ratio_flags_a_learning_rate_far_too_high_and_too_low(tmp_path):
    high = check(tmp_path, name="high.h5", steps=3, lr=50.0)["update_ratio"]
    assert high.status == "fail" and high.value > 1
    assert high.message.startswith(f"updates too large at `{high.layers[0]}`")
    low = check(tmp_path, name="low.h5", steps=3, lr=1e-6)["update_ratio"]
    assert low.status == "warn" and low.value < 1e-4
    assert low.layers[0] == "fc0.weight"


def test_update_ratio_skips_a_single_step_trace(tmp_path):
    result = check(tmp_path)["update_ratio"]
    assert result.status == "skip"
    assert result.message.startswith("skipped: needs parameter records at two or more training steps")


def test_weight_left_out_of_the_optimizer_is_frozen(tmp_path):
    no_grad = check(tmp_path, name="a.h5", run_options={"no_grad": ("fc1.weight",)})["frozen_params"]
    assert (no_grad.status, no_grad.layers) == ("fail", ["fc1.weight"])
    assert no_grad.message == ("no gradient for `fc1.weight` (requires_grad=True), while 5 other "
                               "parameter(s) train")
    zero = check(tmp_path, name="b.h5", run_options={"zero_grad": ("fc1.weight",)})["frozen_params"]
    assert (zero.status, zero.layers) == ("fail", ["fc1.weight"])


def test_intentionally_frozen_parameter_and_buffers_are_not_flagged(tmp_path):
    w = np.ones((4, 3), np.float32)
    with td.Recorder(tmp_path / "f.h5", framework="torch") as rec:
        rec.forward("fc", np.ones((8, 4), np.float32), op_type="Linear")
        rec.loss(np.float32(1.0))
        rec.param("fc.weight", w, grad=w * 0.1, role="weight")
        rec.param("emb.weight", w, role="embedding", requires_grad=False)
        rec.param("pe", w, role="pe")                       # a persistent buffer
        rec.param("bn.running_mean", w[0], role="running_mean")
    result = td.check(tmp_path / "f.h5")["frozen_params"]
    assert result.status == "pass"
    assert "(1 marked requires_grad/trainable=False not counted)" in result.message


def test_no_gradient_without_requires_grad_meta_is_a_warning(tmp_path):
    w = np.ones((4, 3), np.float32)
    with td.Recorder(tmp_path / "f.h5", framework="torch") as rec:
        rec.param("a.weight", w, grad=w, role="weight")
        rec.param("b.weight", w, role="weight")
    result = td.check(tmp_path / "f.h5")["frozen_params"]
    assert (result.status, result.layers) == ("warn", ["b.weight"])


def test_json_report_follows_the_contract(tmp_path):
    report = check(tmp_path, bias={1: -10.0})
    out = tmp_path / "report.json"
    report.to_json(out)
    payload = json.loads(out.read_text())
    assert payload["schema"] == "tracediff.check/1"
    assert payload["ok"] is False
    assert [c["id"] for c in payload["checks"]] == ALL_IDS
    for c in payload["checks"]:
        assert {"id", "status", "layers", "value", "threshold", "message", "advice"} <= set(c)
        assert c["status"] in ("pass", "warn", "fail", "skip")
        if c["status"] == "skip":
            assert c["message"].startswith("skipped: ")
    dead = next(c for c in payload["checks"] if c["id"] == "dead_units")
    assert dead["layers"] == ["act1"] and dead["status"] == "fail"


def test_loss_named_in_meta_confirms_a_classification_loss(tmp_path):
    x, _ = data()
    with td.Recorder(tmp_path / "m.h5", meta={"loss_fn": "cross_entropy", "model_kind": "binary"}) as rec:
        rec.input("x", x)
        rec.forward("head", x[:, :10] * 40)
        rec.loss(np.float32(60.0))
    loss = td.check(tmp_path / "m.h5")["initial_loss"]
    assert loss.status == "fail" and "assuming" not in loss.message
    with td.Recorder(tmp_path / "u.h5", meta={"model_kind": "binary cross_entropy"}) as rec:
        rec.input("x", x)
        rec.forward("head", x[:, :10] * 40)
        rec.loss(np.float32(60.0))
    loss = td.check(tmp_path / "u.h5")["initial_loss"]   # a meta key not about the loss: no hint
    assert loss.status == "warn" and "assuming a classification loss" in loss.message
