"""The three losses: value and dL/d(graph output 0) against NumPy, and their refusals."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tracediff as td
from tracediff.adapters.onnx.grad import record_backward

RNG = np.random.default_rng(11)
W = RNG.standard_normal((5, 7))


def _linear_model():
    """logits[2, 3, 7] = x[2, 3, 5] @ W: the output node is /fc/MatMul."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"], name="/fc/MatMul")], "linear",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.DOUBLE, [2, 3, 7])],
        initializer=[numpy_helper.from_array(W, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(tmp_path, loss, target):
    x = RNG.standard_normal((2, 3, 5))
    with td.Recorder(tmp_path / "t.h5", framework="onnx") as rec:
        record_backward(_linear_model(), {"x": x}, rec, loss=loss, target=target)
    return x, td.open(tmp_path / "t.h5")


def test_cross_entropy_means_over_every_position_but_the_class_axis(tmp_path):
    labels = np.array([[0, 6, 3], [2, 2, 5]])
    x, trace = _run(tmp_path, "cross_entropy", labels)
    logits = x @ W
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_p, labels[..., None], -1).mean()
    np.testing.assert_allclose(trace.get("loss", kind="loss").read(), expected, rtol=1e-12)
    one_hot = np.eye(7)[labels]
    grad = (np.exp(log_p) - one_hot) / labels.size
    np.testing.assert_allclose(trace.get("logits", kind="backward").read(), grad, rtol=1e-10)
    np.testing.assert_allclose(trace.get("W", kind="param_grad").read(),
                               np.einsum("bti,btj->ij", x, grad), rtol=1e-10)


def test_mse_is_the_mean_squared_error(tmp_path):
    target = RNG.standard_normal((2, 3, 7))
    x, trace = _run(tmp_path, "mse", target)
    logits = x @ W
    np.testing.assert_allclose(trace.get("loss", kind="loss").read(),
                               ((logits - target) ** 2).mean(), rtol=1e-12)
    np.testing.assert_allclose(trace.get("logits", kind="backward").read(),
                               2 * (logits - target) / logits.size, rtol=1e-10)


def test_sum_loss_seeds_ones(tmp_path):
    x, trace = _run(tmp_path, "sum", None)
    logits = x @ W
    np.testing.assert_allclose(trace.get("loss", kind="loss").read(), logits.sum(), rtol=1e-12)
    assert np.array_equal(trace.get("logits", kind="backward").read(), np.ones((2, 3, 7)))
    kinds = [r.kind for r in trace]
    assert kinds == ["loss", "backward", "param_grad"]


@pytest.mark.parametrize("loss, target, message", [
    ("hinge", None, "unknown loss 'hinge': use one of cross_entropy, mse, sum"),
    ("cross_entropy", None, "loss 'cross_entropy' needs a target: pass target= "
                            "(--target FILE.npy)"),
    ("cross_entropy", np.zeros((2, 4), np.int64),
     "target has shape [2, 4] but loss 'cross_entropy' needs [2, 3]: class indices for every "
     "position of the logits but the last axis"),
    ("cross_entropy", np.zeros((2, 3)),
     "cross_entropy target must hold integer class indices, got float64: pass labels as an "
     "int64 array"),
    ("cross_entropy", np.array([[0, 1, 7], [0, 0, 0]]),
     "cross_entropy target holds class 7 outside 0..6: labels must index the last axis of the "
     "logits"),
    ("mse", np.zeros((2, 3)),
     "target has shape [2, 3] but loss 'mse' needs [2, 3, 7]: the shape of the model's output 0"),
    ("sum", np.zeros(3), "loss 'sum' takes no target: drop target= / --target"),
])
def test_bad_loss_arguments_are_one_line(tmp_path, loss, target, message):
    with td.Recorder(tmp_path / "t.h5", framework="onnx") as rec:
        with pytest.raises(td.TraceDiffError) as info:
            record_backward(_linear_model(), {"x": np.zeros((2, 3, 5))}, rec, loss=loss,
                            target=target)
        assert rec.count == 0
    assert str(info.value) == message
