"""``td.gradcheck``: central differences in float64 against hand-written backward passes."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tracediff as td

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 5))
W = RNG.standard_normal((5, 4)) * 0.5
B = RNG.standard_normal(4) * 0.1
Y = RNG.integers(0, 4, 8)


def relu_softmax_net(arrays, bug=None):
    """Affine, ReLU, softmax cross-entropy: forward and a hand-written backward."""
    x, w, b = arrays["x"], arrays["W"], arrays["b"]
    z = x @ w + b
    h = np.maximum(z, 0)
    s = h - h.max(axis=1, keepdims=True)
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    n = len(Y)
    loss = -np.log(p[np.arange(n), Y]).mean()
    dh = p.copy()
    dh[np.arange(n), Y] -= 1
    dh /= n
    dz = dh * (z > 0)
    grads = {"x": dz @ w.T, "W": x.T @ dz, "b": dz.sum(axis=0)}
    if bug == "bias_twice":
        grads["b"] = 2 * grads["b"]
    if bug == "slightly_off":
        grads["W"] = grads["W"] * (1 + 1e-3)
    if bug == "transposed_entry":
        grads["W"] = grads["W"].copy()
        grads["W"][1, 2] += 0.5
    return loss, grads


def test_correct_backward_is_good_everywhere():
    result = td.gradcheck(relu_softmax_net, {"x": X, "W": W, "b": B})
    assert result.ok
    assert [r["name"] for r in result.results] == ["x", "W", "b"]
    for r in result.results:
        assert r["status"] in ("good", "ok") and r["max_rel_error"] <= 1e-5
        assert set(r) >= {"name", "max_rel_error", "worst_index", "status"}


def test_inputs_and_params_may_be_given_apart():
    result = td.gradcheck(relu_softmax_net, {"x": X}, {"W": W, "b": B})
    assert result.ok and [r["name"] for r in result.results] == ["x", "W", "b"]
    with pytest.raises(td.TraceDiffError, match=r"\['x'\] named both in inputs and params"):
        td.gradcheck(relu_softmax_net, {"x": X}, {"x": X})


def test_wrong_bias_gradient_is_named_wrong_and_the_others_stay_good():
    result = td.gradcheck(lambda a: relu_softmax_net(a, "bias_twice"), {"x": X, "W": W, "b": B})
    assert not result.ok
    assert result["b"]["status"] == "wrong"
    assert result["b"]["max_rel_error"] == pytest.approx(0.5, rel=1e-6)
    assert result["W"]["status"] in ("good", "ok") and result["x"]["status"] in ("good", "ok")


def test_a_wrong_entry_is_reported_with_its_index():
    result = td.gradcheck(lambda a: relu_softmax_net(a, "transposed_entry"), {"x": X, "W": W, "b": B})
    assert result["W"]["status"] == "wrong"
    assert result["W"]["worst_index"] == (1, 2)   # W has 20 entries: all checked


def test_a_small_systematic_error_is_suspicious_and_not_ok():
    result = td.gradcheck(lambda a: relu_softmax_net(a, "slightly_off"), {"x": X, "W": W, "b": B})
    assert result["W"]["status"] == "suspicious"
    assert result["W"]["max_rel_error"] == pytest.approx(1e-3 / (1 + 1e-3), rel=1e-3)
    assert not result.ok


def test_kinks_crossed_by_the_step_are_detected_and_not_blamed():
    x = np.array([[3e-6, -2.0, 1.0], [0.5, -4e-6, 0.0]])   # within one step of ReLU's kink
    r = np.arange(1.0, 7.0).reshape(2, 3)

    def relu_sum(arrays):
        return float((np.maximum(arrays["x"], 0) * r).sum()), {"x": r * (arrays["x"] > 0)}
    result = td.gradcheck(relu_sum, {"x": x})
    assert result.ok
    assert result["x"]["kinks"] == 3   # 3e-6, -4e-6 and the entry sitting on the kink at 0
    assert result["x"]["status"] == "good"


def test_a_wrong_subgradient_at_a_kink_is_still_wrong():
    x = np.array([0.0, 1.0])

    def bad_relu(arrays):
        return float(np.maximum(arrays["x"], 0).sum()), {"x": np.where(arrays["x"] > 0, 1.0, -3.0)}
    result = td.gradcheck(bad_relu, {"x": x})
    assert result["x"]["status"] == "wrong" and result["x"]["worst_index"] == (0,)


def test_large_arrays_are_sampled_always_including_the_largest_gradient():
    big = RNG.standard_normal((40, 30)) + 3.0
    weights = RNG.standard_normal((40, 30))
    weights[17, 3] = 50.0

    def weighted(arrays, bug):
        grad = 2 * arrays["a"] * weights
        if bug:
            grad[17, 3] *= 1.5   # wrong only where the gradient is largest
        return float((arrays["a"] ** 2 * weights).sum()), {"a": grad}
    good = td.gradcheck(lambda a: weighted(a, False), {"a": big}, samples=16)
    assert good.ok and (good["a"]["checked"], good["a"]["size"]) == (16, 1200)
    bad = td.gradcheck(lambda a: weighted(a, True), {"a": big}, samples=16)
    assert bad["a"]["status"] == "wrong" and bad["a"]["worst_index"] == (17, 3)


class Affine:
    """A layer with a forward/backward pair, as in hand-written frameworks."""

    def __init__(self, bug=False):
        self.bug = bug

    def forward(self, x, w):
        self.x, self.w = x, w
        return np.tanh(x @ w)

    def backward(self, dout):
        dz = dout * (1 - np.tanh(self.x @ self.w) ** 2)
        return dz @ self.w.T, (self.x.T @ dz) * (3.0 if self.bug else 1.0)


def test_layer_with_forward_and_backward_methods():
    assert td.gradcheck(Affine(), {"x": X, "W": W}).ok
    bad = td.gradcheck(Affine(bug=True), {"x": X, "W": W})
    assert bad["W"]["status"] == "wrong" and bad["x"]["status"] in ("good", "ok")


def test_cs231n_style_forward_backward_functions_with_a_cache():
    def affine_forward(x, w, b):
        return x @ w + b, (x, w)

    def affine_backward(dout, cache):
        x, w = cache
        return dout @ w.T, x.T @ dout, dout.sum(axis=0)
    result = td.gradcheck((affine_forward, affine_backward), {"x": X, "W": W, "b": B})
    assert result.ok and [r["status"] for r in result.results] == ["good", "good", "good"]


def test_float32_inputs_are_checked_in_float64(tmp_path):
    seen = []

    def f(arrays):
        seen.append(arrays["x"].dtype)
        return float((arrays["x"] ** 3).sum()), {"x": 3 * arrays["x"] ** 2}
    result = td.gradcheck(f, {"x": X.astype(np.float32)})
    assert result.ok and set(seen) == {np.dtype(np.float64)}
    payload = json.loads(result.to_json(tmp_path / "g.json"))
    assert payload["ok"] is True and payload["results"][0]["name"] == "x"
    assert isinstance(payload["results"][0]["worst_index"], list)


@pytest.mark.parametrize("f, arrays, text", [
    (relu_softmax_net, [X], "arrays must be a non-empty dict"),
    (relu_softmax_net, {"x": np.array(["a"])}, "array 'x' must be a non-empty real numeric array"),
    (relu_softmax_net, {"x": np.array([np.nan])}, "array 'x' holds NaN or Inf"),
    (lambda a: (1.0, {}), {"x": X}, "f returned no gradient for 'x'"),
    (lambda a: (1.0, {"x": np.zeros(3)}), {"x": X}, "the gradient of 'x' has shape (3,)"),
    (lambda a: (np.ones(2), {"x": a["x"]}), {"x": X}, "f must return a scalar loss"),
    (42, {"x": X}, "gradcheck: f must be a function"),
])
def test_bad_input_is_a_one_line_error(f, arrays, text):
    with pytest.raises(td.TraceDiffError) as info:
        td.gradcheck(f, arrays)
    assert text in str(info.value) and "\n" not in str(info.value)
