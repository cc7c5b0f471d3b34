"""The gradient graph: which nodes get gradients, record order and names, refusals."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tracediff as td
from tracediff.adapters import onnx as tdo
from tracediff.adapters.onnx.grad import META_KEY, gradient_model, record_backward

RNG = np.random.default_rng(13)
W1, W2 = RNG.standard_normal((5, 7)), RNG.standard_normal((7, 3))


def _model(nodes, outputs=("y",), inits=None, shape=(3, 5)):
    inits = inits if inits is not None else {"W1": W1, "W2": W2}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, list(shape))],
        [helper.make_tensor_value_info(o, TensorProto.DOUBLE, None) for o in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _two_layer(act="Tanh"):
    return [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
            helper.make_node(act, ["h"], ["a"], name=f"/act/{act}"),
            helper.make_node("MatMul", ["a", "W2"], ["y"], name="/fc2/MatMul")]


def test_op_without_rule_names_op_and_node():
    with pytest.raises(td.TraceDiffError) as info:
        gradient_model(_model(_two_layer("Sin")), "sum")
    assert str(info.value) == (
        "no gradient rule for op Sin (node /act/Sin): add one to "
        "tracediff.adapters.onnx.grad.vjp.RULES or export the model without it; the forward trace "
        "is written")


def test_op_without_rule_leaves_the_forward_trace(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(_two_layer("Sin")), path)
    with pytest.raises(td.TraceDiffError, match="no gradient rule for op Sin"):
        tdo.record(path, {"x": RNG.standard_normal((3, 5))}, tmp_path / "t.h5", loss="sum")
    with pytest.warns(td.IncompleteTraceWarning):  # closed by the error, records intact
        trace = td.open(tmp_path / "t.h5")
    assert [r.name for r in trace.records("forward")] == ["/fc1/MatMul", "/act/Sin",
                                                          "/fc2/MatMul"]
    assert list(trace.records("backward")) == []


def test_records_run_from_the_loss_to_the_input_with_the_forward_names(tmp_path):
    nodes = _two_layer() + [helper.make_node("Tanh", ["y"], ["z"], name="/act/Tanh_1")]
    model = _model(nodes, outputs=("z",), inits={"W1": W1, "W2": W2})
    names = {"h": ("fc1", {"op_type": "MatMul", "module": "fc1"}),
             "a": ("act", {"op_type": "Tanh"}),
             "z": ("act", {"op_type": "Tanh"})}  # a module called twice: calls 0 and 1
    x = RNG.standard_normal((3, 5))
    with td.Recorder(tmp_path / "t.h5", framework="onnx") as rec:
        record_backward(model, {"x": x}, rec, loss="sum", names=names)
    trace = td.open(tmp_path / "t.h5")
    order = [(r.kind, r.name, r.call) for r in trace]
    assert order == [("loss", "loss", 0), ("backward", "act", 1), ("backward", "act", 0),
                     ("backward", "fc1", 0), ("param_grad", "W1", 0), ("param_grad", "W2", 0)]
    assert trace.get("fc1", kind="backward").meta == {"op_type": "MatMul", "module": "fc1"}
    h = x @ W1
    a = np.tanh(h)
    y = a @ W2
    dy = 1 - np.tanh(y) ** 2
    np.testing.assert_allclose(trace.get("act", kind="backward", call=1).read(), np.ones((3, 3)))
    np.testing.assert_allclose(trace.get("act", kind="backward", call=0).read(), dy @ W2.T,
                               rtol=1e-12)
    np.testing.assert_allclose(trace.get("W2", kind="param_grad").read(), a.T @ dy, rtol=1e-12)


def test_only_the_loss_path_is_differentiated():
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node("Shape", ["h"], ["s"], name="/shape"),  # integers: no rule needed
             helper.make_node("Reshape", ["h", "s"], ["y"], name="/reshape"),
             helper.make_node("Sin", ["x"], ["side"], name="/side/Sin")]  # not on the path
    plan_model = gradient_model(_model(nodes, outputs=("y", "side"), inits={"W1": W1}), "sum")
    mapping = json.loads({p.key: p.value for p in plan_model.metadata_props}[META_KEY])
    assert [t for t, _ in mapping["grads"]] == ["y", "h"]
    assert [t for t, _ in mapping["param_grads"]] == ["W1"]
    assert "Sin" not in {n.op_type for n in plan_model.graph.node}


def test_unsorted_graph_is_differentiated_in_dependency_order():
    model = _model(list(reversed(_two_layer())))
    ordered = _model(_two_layer())
    import onnxruntime as ort

    x = RNG.standard_normal((3, 5))
    results = []
    for m in (model, ordered):
        grad_model = gradient_model(m, "sum")
        session = ort.InferenceSession(grad_model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        results.append(session.run(None, {"x": x}))
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


def test_output_that_depends_on_no_float_tensor_is_refused():
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["y"], name="/shape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(td.TraceDiffError) as info:
        gradient_model(model, "sum")
    assert str(info.value) == ("graph output 0 ('y') depends on no float input or initializer: "
                               "put the logits/prediction first among the outputs")


def test_gradient_model_passes_the_checker_and_is_saved(tmp_path):
    x = RNG.standard_normal((3, 5))
    with td.Recorder(tmp_path / "t.h5", framework="onnx") as rec:
        record_backward(_model(_two_layer()), {"x": x}, rec, loss="mse",
                        target=np.zeros((3, 3)), save_grad_model=tmp_path / "grad.onnx")
    saved = onnx.load(tmp_path / "grad.onnx")
    onnx.checker.check_model(saved, full_check=True)
    assert [i.name for i in saved.graph.input] == ["x", "target"]
    assert [o.name for o in saved.graph.output] == [
        "loss", "y_grad", "a_grad", "h_grad", "W1_grad", "W2_grad"]


def test_merged_initializers_keep_a_gradient_per_parameter(tmp_path):
    """The legacy exporter stores equal parameters once and names the others through Identity
    (here a fresh LayerNorm pair's ones); each still gets its own gradient, as in torch."""
    ones = np.ones(7)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node("Identity", ["norm1.weight"], ["norm2.weight"], name="Identity_0"),
             helper.make_node("LayerNormalization", ["h", "norm1.weight"], ["n1"],
                              name="/norm1/LayerNormalization"),
             helper.make_node("Tanh", ["n1"], ["t"], name="/act/Tanh"),
             helper.make_node("LayerNormalization", ["t", "norm2.weight"], ["y"],
                              name="/norm2/LayerNormalization")]
    model = _model(nodes, inits={"W1": W1, "norm1.weight": ones})
    x = RNG.standard_normal((3, 5))
    with td.Recorder(tmp_path / "t.h5", framework="onnx") as rec:
        record_backward(model, {"x": x}, rec, loss="mse", target=np.zeros((3, 7)))
    trace = td.open(tmp_path / "t.h5")
    assert [r.name for r in trace.records("param_grad")] == ["W1", "norm1.weight",
                                                             "norm2.weight"]

    def normalized(v):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)

    y = normalized(np.tanh(normalized(x @ W1)))
    # dL/d(norm2.weight) = sum over rows of dL/dy * normalized input; dL/dy = 2 y / size
    np.testing.assert_allclose(trace.get("norm2.weight", kind="param_grad").read(),
                               (2 * y / y.size * y).sum(0), rtol=1e-9)
    assert trace.get("norm2.weight", kind="param_grad").meta["role"] == "weight"


def test_sequence_ops_on_the_path_are_named_not_silently_cut():
    """A sequence is not a float tensor, but the gradient flows through it: an op without a
    rule there must stop the build, never drop the branch."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node("SplitToSequence", ["h"], ["seq"], axis=1, name="/split"),
             helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0, name="/concat")]
    with pytest.raises(td.TraceDiffError) as info:
        gradient_model(_model(nodes, inits={"W1": W1}), "sum")
    assert str(info.value).startswith(
        "no gradient rule for op ConcatFromSequence (node /concat):")


def test_dynamic_batch_gradient_model_serves_every_batch_size():
    """Without feeds the dims stay symbolic: broadcast gradients are summed back at run time."""
    import onnxruntime as ort

    bias = RNG.standard_normal((1, 7))
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/fc1/MatMul"),
             helper.make_node("Add", ["h", "b"], ["z"], name="/fc1/Add"),
             helper.make_node("Mul", ["z", "z"], ["y"], name="/square")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 7])],
        initializer=[numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    grad_model = gradient_model(model, "sum")
    onnx.checker.check_model(grad_model, full_check=True)
    session = ort.InferenceSession(grad_model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    outputs = [o.name for o in grad_model.graph.output]
    for batch in (2, 3):
        x = RNG.standard_normal((batch, 5))
        values = dict(zip(outputs, session.run(None, {"x": x})))
        dz = 2 * (x @ W1 + bias)
        np.testing.assert_allclose(values["b_grad"], dz.sum(0, keepdims=True), rtol=1e-12)
        np.testing.assert_allclose(values["W1_grad"], x.T @ dz, rtol=1e-12)
