"""Meta ``inputs`` from Keras (inbound tensors) and ONNX (node inputs)."""

import numpy as np
import pytest

import tracediff as td


def edge(name, call=0, kind="forward"):
    return {"kind": kind, "name": name, "call": call}


def test_keras_functional_residual_and_subclassed(tmp_path):
    keras = pytest.importorskip("keras")
    from tracediff.adapters import tensorflow as tdtf

    x = keras.Input((6,), name="x")
    r = keras.layers.ReLU(name="act")(keras.layers.Dense(6, name="fc1")(x))
    out = keras.layers.Dense(2, name="head")(keras.layers.Add(name="add")([r, x]))
    data = np.random.default_rng(0).standard_normal((3, 6)).astype("float32")
    tdtf.record(keras.Model(x, out), data, tmp_path / "f.h5", loss_fn=lambda o: keras.ops.sum(o))
    trace = td.open(tmp_path / "f.h5")
    assert trace.get("fc1").meta["inputs"] == [edge("input", kind="input")]
    assert trace.get("add").meta["inputs"] == [edge("act"), edge("input", kind="input")]
    assert trace.get("head").meta["inputs"] == [edge("add")]

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Dense(6, name="a")
            self.b = keras.layers.Dense(2, name="b")

        def call(self, x):
            return self.b(self.a(x) * 2.0)    # an op that is no layer: b's input is untraceable

    model = Sub()
    model(data)
    tdtf.record(model, data, tmp_path / "s.h5")
    trace = td.open(tmp_path / "s.h5")
    assert trace.get("a").meta["inputs"] == [edge("input", kind="input")]
    assert "inputs" not in trace.get("b").meta     # unknown, not "nothing": order decides


def test_keras_dtype_policy_is_recorded(tmp_path):
    keras = pytest.importorskip("keras")
    from tracediff.adapters import tensorflow as tdtf

    x = keras.Input((4,))
    layer = keras.layers.Dense(3, name="fc", dtype="mixed_bfloat16")
    model = keras.Model(x, layer(x))
    tdtf.record(model, np.ones((2, 4), np.float32), tmp_path / "p.h5")
    fc = td.open(tmp_path / "p.h5").get("fc")
    assert (fc.dtype, fc.meta["dtype_policy"]) == ("bfloat16", "mixed_bfloat16")


def test_onnx_node_inputs_of_an_exported_residual_model(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from torch import nn
    from tracediff.adapters import onnx as tdo

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(5, 5)
            self.fc2 = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)) + x)

    path = tmp_path / "net.onnx"
    torch.onnx.export(Net(), (torch.randn(2, 5),), path, dynamo=False, input_names=["x"])
    tdo.record(path, {"x": np.ones((2, 5), np.float32)}, tmp_path / "o.h5")
    trace = td.open(tmp_path / "o.h5")
    records = trace.records("forward")
    assert [r.meta["op_type"] for r in records] == ["Gemm", "Relu", "Add", "Gemm"]
    fc1, relu, add, fc2 = records
    assert fc1.meta["inputs"] == [edge("x", kind="input")]
    assert relu.meta["inputs"] == [edge(fc1.name)]
    assert add.meta["inputs"] == [edge(relu.name), edge("x", kind="input")]
    assert fc2.meta["inputs"] == [edge(add.name)]
    # initializers (the Gemm weights) are parameters: not listed
    assert all(e["kind"] in ("forward", "input") for r in trace.records("forward")
               for e in r.meta["inputs"])


def test_keras_mixed_bfloat16_against_float32_is_clean_and_a_bug_is_named(tmp_path):
    """The float32 head and loss after mixed_bfloat16 layers are judged at bfloat16 (their
    inputs' precision): clean; a 5% kernel error in fc2 is named there."""
    keras = pytest.importorskip("keras")
    from tracediff.adapters import tensorflow as tdtf

    def build(policy):
        x = keras.Input((12,), name="x")
        h = keras.layers.Dense(32, name="fc1", dtype=policy)(x)
        h = keras.layers.LayerNormalization(name="ln", dtype=policy)(h)
        h = keras.layers.Activation("gelu", name="act", dtype=policy)(h)
        h = keras.layers.Dense(32, name="fc2", dtype=policy)(h)
        skip = keras.layers.Dense(32, name="skip", dtype=policy)(x)
        h = keras.layers.Add(name="add", dtype=policy)([h, skip])
        return keras.Model(x, keras.layers.Dense(5, name="head", dtype="float32")(h))

    reference, mixed = build("float32"), build("mixed_bfloat16")
    mixed.set_weights(reference.get_weights())
    data = np.random.default_rng(0).standard_normal((4, 12)).astype("float32")
    labels = np.array([0, 1, 2, 3])

    def loss(out):
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, out, from_logits=True))

    tdtf.record(reference, data, tmp_path / "f32.h5", loss_fn=loss)
    tdtf.record(mixed, data, tmp_path / "mixed.h5", loss_fn=loss)
    report = td.diff(tmp_path / "mixed.h5", tmp_path / "f32.h5")
    assert report.ok and len(report.pairs) == 38
    head = next(p for p in report.pairs if (p.kind, p.b_name) == ("forward", "head"))
    assert (head.dtype_a, head.tolerance["precision"]) == ("float32", "bfloat16")
    assert td.open(tmp_path / "mixed.h5").get("fc1").meta["dtype_policy"] == "mixed_bfloat16"

    kernel = mixed.get_layer("fc2").kernel
    noise = 1 + 0.05 * np.random.default_rng(1).standard_normal(kernel.shape)
    kernel.assign((kernel.numpy() * noise).astype("float32"))
    tdtf.record(mixed, data, tmp_path / "bad.h5", loss_fn=loss)
    assert td.diff(tmp_path / "bad.h5", tmp_path / "f32.h5").first_divergence.forward.b_name == "fc2"
