"""Health checks on traces of the ONNX and Keras adapters: their op types (Relu, Dense...)
and metadata (Keras trainable, record(training=...)) are understood."""
from __future__ import annotations

import numpy as np
import pytest

import tracediff as td

RNG = np.random.default_rng(0)
X = RNG.standard_normal((32, 20)).astype(np.float32)
Y = RNG.integers(0, 10, 32)


def onnx_mlp(path, bias):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    w1 = (RNG.standard_normal((20, 64)) * np.sqrt(2 / 20)).astype(np.float32)
    w2 = (RNG.standard_normal((64, 10)) * np.sqrt(1 / 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node("Add", ["h", "b1"], ["z"], name="/fc1/Add"),
             helper.make_node("Relu", ["z"], ["r"], name="/relu/Relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="/fc2/MatMul")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 10])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(np.full(64, bias, np.float32), "b1"),
         numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("bias, dead", [(0.0, False), (-10.0, True)])
def test_onnx_relu_graph_healthy_and_dead(tmp_path, bias, dead):
    pytest.importorskip("onnxruntime")
    tdo = pytest.importorskip("tracediff.adapters.onnx")
    model = onnx_mlp(str(tmp_path / "m.onnx"), bias)
    tdo.record(model, {"x": X}, tmp_path / "t.h5", loss="cross_entropy", target=Y)
    report = td.check(tmp_path / "t.h5")
    if not dead:
        assert {c.id: c.status for c in report.checks if c.status in ("warn", "fail")} == {}
        assert report["initial_loss"].status == "pass"   # the adapter names its loss
        return
    assert (report["dead_units"].status, report["dead_units"].layers) == ("fail", ["/relu/Relu"])
    assert report["gradient_flow"].message.endswith("it stops at `/relu/Relu`")


def test_keras_model_inference_trace_with_a_frozen_layer(tmp_path):
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    tdtf = pytest.importorskip("tracediff.adapters.tensorflow")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(64), keras.layers.ReLU(),
                              keras.layers.Dropout(0.1), keras.layers.Dense(10)])
    model.layers[0].trainable = False   # frozen on purpose: no alarm

    def loss_fn(out):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(Y, out, from_logits=True))
    tdtf.record(model, X, tmp_path / "eval.h5", loss_fn=loss_fn)
    report = td.check(tmp_path / "eval.h5", classes=10)
    assert {c.id: c.status for c in report.checks if c.status in ("warn", "fail")} == {}
    assert report["frozen_params"].message == ("all 2 parameter(s) with gradients receive a non-zero "
                                               "one (2 marked requires_grad/trainable=False not counted)")
    tdtf.record(model, X, tmp_path / "train.h5", training=True)
    assert td.check(tmp_path / "train.h5")["train_mode"].message.startswith(
        "training trace (trace meta training=True)")
