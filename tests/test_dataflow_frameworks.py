"""Meta ``inputs`` from Keras (inbound tensors) and ONNX (node inputs)."""
import os

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
    forward = {r.meta["op_type"]: r for r in trace.records("forward")}
    assert forward["Gemm"].meta["inputs"] in ([edge("x", kind="input")],
                                              [edge(forward["Add"].name)])
    assert forward["Relu"].meta["inputs"] == [edge(trace.records("forward")[0].name)]
    assert forward["Add"].meta["inputs"] == [edge(forward["Relu"].name), edge("x", kind="input")]
    # initializers (the Gemm weights) are parameters: not listed
    assert all(e["kind"] in ("forward", "input") for r in trace.records("forward")
               for e in r.meta["inputs"])
