"""One golden_trace fixture for every framework: a torch module, a Keras model and an ONNX file
each write their golden trace, match it on the next run, and fail naming the layer whose
weights were perturbed (pytester sessions, in process: the frameworks load once)."""
import os
import re

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# In-process pytester sessions drop the modules they import when they end; frameworks cannot be
# imported twice in one process, so everything the fixture loads is imported here first.
import numpy  # noqa: E402,F401
import tracediff.adapters.onnx  # noqa: E402,F401
import tracediff.adapters.tensorflow  # noqa: E402,F401
import tracediff.adapters.torch  # noqa: E402,F401
import tracediff.compare  # noqa: E402,F401
import tracediff.golden  # noqa: E402,F401

pytest_plugins = ["pytester"]

MODELS = '''
import os

import keras
import numpy as np
import onnx
import tensorflow as tf
import torch
from onnx import TensorProto, helper, numpy_helper

PERTURB = float(os.environ.get("GOLDEN_PERTURB", "0"))
X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def torch_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(4, 6))
    model.add_module("act", torch.nn.ReLU())
    model.add_module("fc2", torch.nn.Linear(6, 2))
    with torch.no_grad():
        model.fc2.bias += PERTURB
    if os.environ.get("GOLDEN_DOUBLE"):
        model = model.double()
    return model


def keras_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="fc1"),
                              keras.layers.ReLU(name="act"), keras.layers.Dense(2, name="fc2")],
                             name="mlp")
    kernel, bias = model.get_layer("fc2").get_weights()
    model.get_layer("fc2").set_weights([kernel, bias + PERTURB])
    return model


def onnx_model(path):
    rng = np.random.default_rng(1)
    weights = {"w1": rng.standard_normal((4, 6)), "b1": rng.standard_normal(6),
               "w2": rng.standard_normal((6, 2)), "b2": rng.standard_normal(2) + PERTURB}
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["a"], name="act"),
         helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_torch(golden_trace):
    x = torch.from_numpy(X)
    if os.environ.get("GOLDEN_DOUBLE"):
        x = x.double()
    golden_trace.check(torch_model(), x, loss_fn=lambda out: (out ** 2).mean())


def test_keras(golden_trace):
    golden_trace.check(keras_model(), X, loss_fn=lambda out: tf.reduce_mean(out ** 2))


def test_onnx(golden_trace, tmp_path):
    golden_trace.check(onnx_model(str(tmp_path / "mlp.onnx")), {"x": X}, loss_fn="sum")
'''


def test_torch_keras_and_onnx_through_one_fixture(pytester, monkeypatch):
    pytester.makepyfile(test_models=MODELS)
    monkeypatch.delenv("GOLDEN_PERTURB", raising=False)
    monkeypatch.delenv("GOLDEN_DOUBLE", raising=False)
    first = pytester.runpytest()
    first.assert_outcomes(failed=3)
    first.stdout.fnmatch_lines_random([f"traces/test_models/test_{name}.h5"
                                       for name in ("torch", "keras", "onnx")])
    with tracediff_open(pytester, "torch") as t, tracediff_open(pytester, "keras") as k, \
            tracediff_open(pytester, "onnx") as o:
        assert (t.framework, k.framework, o.framework) == ("torch", "tensorflow", "onnx")
        assert {"fc1", "act", "fc2"} <= {r.name for r in t.records("backward")}
        assert {"fc1", "act", "fc2"} <= {r.name for r in k.records("backward")}
        assert {"fc1", "act", "fc2"} <= {r.name for r in o.records("backward")}

    pytester.runpytest().assert_outcomes(passed=3)

    monkeypatch.setenv("GOLDEN_PERTURB", "0.5")
    monkeypatch.setenv("GOLDEN_DOUBLE", "1")
    broken = pytester.runpytest()
    broken.assert_outcomes(failed=3)
    text = broken.stdout.str()
    for name in ("torch", "keras", "onnx"):
        section = _section(text, f"test_{name}")
        assert re.search(r"^first diverging forward: fc2 diverged, introduced here", section, re.M), name
        assert "  worst elements (6 shown):" in section, name
    torch_text = _section(text, "test_torch")
    assert "first diverging forward: fc2 diverged, introduced here — float64 (golden float32) [3, 2]" \
        in torch_text
    assert "environment differs from the golden trace:" in torch_text
    assert "  dtype: golden float32, now float64" in torch_text
    assert "  framework_dtype: golden torch.float32, now torch.float64" in torch_text
    # The loss is mean(out**2): its gradient moves with the output, so backward diverges too,
    # first at the model's output (Keras records it as <root>, after fc2).
    assert "first diverging backward: <root> diverged, inherited" in _section(text, "test_keras")
    assert "first diverging backward: fc2 diverged, inherited" in torch_text


def tracediff_open(pytester, name):
    import tracediff as td
    return td.open(os.path.join(pytester.path, "traces", "test_models", f"test_{name}.h5"))


def _section(text, test):
    match = re.search(rf"_+ {test} _+\n(.*?)(?=\n_+ test_|\n=+ short test summary)", text, re.S)
    assert match, f"no failure section for {test}"
    return match.group(1)
