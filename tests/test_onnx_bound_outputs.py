"""onnxruntime writes the grouped capture's outputs into one reused buffer (``run_groups``):
the values are those of a plain ``session.run`` bit for bit, tensors carried to later groups
survive the buffer's reuse, outputs of unknown shape or type and wrong inferred types still
come back right, and the trace is the same with and without the buffer."""
from __future__ import annotations

import functools

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import onnx as tdo  # noqa: E402
from tracediff.adapters import onnx_run  # noqa: E402
from tracediff.adapters.onnx_plan import (estimate_sizes, inferred_types, plan_groups,  # noqa: E402
                                          topological_order)

CPU = ["CPUExecutionProvider"]


def make_model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "bound", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def mixed_model():
    """A small attention-like block with float32, float16, int64 and bool outputs."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    zero = numpy_helper.from_array(np.float32(0), "zero")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["proj"], name="/proj/MatMul"),
        helper.make_node("Add", ["proj", "b"], ["biased"], name="/proj/Add"),
        helper.make_node("Transpose", ["biased"], ["keys"], name="/attn/Transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["biased", "keys"], ["scores"], name="/attn/MatMul"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="/attn/Softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "biased"], ["mixed"], name="/attn/MatMul_1"),
        helper.make_node("Cast", ["mixed"], ["half"], name="/out/Cast", to=TensorProto.FLOAT16),
        helper.make_node("Greater", ["mixed", "zero"], ["positive"], name="/out/Greater"),
        helper.make_node("ArgMax", ["mixed"], ["best"], name="/out/ArgMax", axis=-1),
        helper.make_node("Tanh", ["mixed"], ["y"], name="/out/Tanh"),
    ]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16, 32])],
        [weight, bias, zero])


def carry_model():
    """``a`` is read three groups after it is made and ``b`` two: with one node a group, every
    group's output lies at the start of the buffer, so a carried tensor left in it is lost."""
    nodes = [helper.make_node("Sin", ["x"], ["a"], name="/a/Sin"),
             helper.make_node("Cos", ["x"], ["b"], name="/b/Cos"),
             helper.make_node("Neg", ["x"], ["c"], name="/c/Neg"),
             helper.make_node("Add", ["a", "b"], ["d"], name="/d/Add"),
             helper.make_node("Mul", ["d", "c"], ["y"], name="/y/Mul")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])])


def reshape_model(declared_shape=None, declared_type=TensorProto.FLOAT):
    """``shaped`` is ``x`` reshaped to the runtime input ``s``: inference cannot size it, unless
    the graph output declares a shape (``declared_shape``), which it then takes on trust."""
    nodes = [helper.make_node("Sin", ["x"], ["a"], name="/a/Sin"),
             helper.make_node("Reshape", ["a", "s"], ["shaped"], name="/r/Reshape"),
             helper.make_node("Neg", ["shaped"], ["y"], name="/y/Neg"),
             helper.make_node("Cos", ["x"], ["known"], name="/k/Cos")]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("shaped", declared_type, declared_shape),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("known", TensorProto.FLOAT, [2, 3])])


RESHAPE_FEEDS = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5,
                 "s": np.array([3, 2], np.int64)}


def reference(model, feeds):
    """Every node output of ``model`` from one plain ``InferenceSession.run`` (outputs left
    untyped, as the capture's groups leave them, so that a declared type that lies is moot)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(onnx.ValueInfoProto(name=t) for n in copy.graph.node
                             for t in n.output if t)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(copy.SerializeToString(), options, providers=CPU)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.fixture
def session_runs(monkeypatch):
    """The capture's onnxruntime runs from when this fixture is requested (request it after
    ``reference``, which runs a session too): the output names of each plain
    ``InferenceSession.run`` and the number of bound runs (``run_with_iobinding``)."""
    runs = {"plain": [], "bound": 0}
    plain, bound = ort.InferenceSession.run, ort.InferenceSession.run_with_iobinding

    def counted_plain(self, output_names, *args, **kwargs):
        runs["plain"].append(list(output_names))
        return plain(self, output_names, *args, **kwargs)

    def counted_bound(self, *args, **kwargs):
        runs["bound"] += 1
        return bound(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counted_plain)
    monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", counted_bound)
    return runs


def run_all(model, feeds, max_memory, types=None, **options):
    """``run_groups`` over ``model`` as the adapter drives it: a list of ``(group, results)``
    with the yielded values kept as they are (views into the buffer) and as copies."""
    nodes = [model.graph.node[i] for i in topological_order(model.graph)]
    initializers = {t.name: t for t in model.graph.initializer}
    inferred = inferred_types(model, feeds)
    sizes = estimate_sizes(nodes, inferred, {k: v.nbytes for k, v in feeds.items()})
    groups = plan_groups(nodes, sizes, max_memory, feeds, set(initializers))
    runs = []
    for group, results in onnx_run.run_groups(model, nodes, groups, feeds, initializers, CPU,
                                              types=inferred if types is None else types,
                                              **options):
        copies = {t: v.copy() if isinstance(v, np.ndarray) else v for t, v in results.items()}
        runs.append((group, dict(results), copies))
    return runs


def assert_same_values(runs, expected):
    seen = set()
    for _, _, copies in runs:
        for tensor, value in copies.items():
            assert (value.dtype, value.shape) == (expected[tensor].dtype,
                                                  expected[tensor].shape), tensor
            np.testing.assert_array_equal(value, expected[tensor], err_msg=tensor)
            seen.add(tensor)
    assert seen == set(expected)


def lying_types(types, values):
    """The tensors whose inferred shape and dtype are known but not those of their value."""
    def inferred(tensor):
        tensor_type = types[tensor].tensor_type
        return (tuple(d.dim_value for d in tensor_type.shape.dim),
                helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    known = {t for t in values if t in types and types[t].tensor_type.HasField("shape")}
    return {t for t in known if inferred(t) != (values[t].shape, values[t].dtype)}


def first_values(runs):
    """The first yielded array of each group: at the start of the buffer when it is reused."""
    return [next(v for v in views.values() if isinstance(v, np.ndarray)) for _, views, _ in runs]


def test_bound_values_equal_a_plain_session_run_bit_for_bit(request):
    model = mixed_model()
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 16, 32)).astype(np.float32)}
    expected = reference(model, feeds)
    session = request.getfixturevalue("session_runs")
    runs = run_all(model, feeds, max_memory=12 * 1024)
    assert len(runs) >= 3
    assert_same_values(runs, expected)
    assert session["plain"] == [] and session["bound"] == len(runs)
    # the groups' values lie in one buffer: a capture that allocated them anew would not
    # overlap (and would not be the faster path this test is about)
    firsts = first_values(runs)
    assert all(np.shares_memory(firsts[0], later) for later in firsts[1:])


def test_without_reuse_every_value_has_its_own_memory():
    model = mixed_model()
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 16, 32)).astype(np.float32)}
    runs = run_all(model, feeds, max_memory=12 * 1024, reuse_buffer=False)
    assert_same_values(runs, reference(model, feeds))
    firsts = first_values(runs)
    assert not any(np.shares_memory(firsts[0], later) for later in firsts[1:])


def test_a_tensor_carried_past_two_groups_keeps_its_value(tmp_path):
    model = carry_model()
    x = np.linspace(-3, 3, 64, dtype=np.float32)
    runs = run_all(model, {"x": x}, max_memory=1)
    assert [len(group.nodes) for group, _, _ in runs] == [1] * 5
    firsts = first_values(runs)
    assert np.shares_memory(firsts[0], firsts[1])  # so `a` was overwritten in the buffer
    expected = reference(model, {"x": x})
    assert_same_values(runs, expected)

    tdo.record(model, {"x": x}, tmp_path / "t.h5", max_memory=1)
    trace = td.open(tmp_path / "t.h5")
    np.testing.assert_array_equal(trace.get("/d/Add").read(), expected["d"])
    np.testing.assert_array_equal(trace.get("/y/Mul").read(), expected["y"])


def test_scalars_and_strided_inputs_keep_their_shape(request):
    # the scalar `total` is carried into later groups, and `x` is fed as a strided view: both
    # are bound as inputs as they are, and the outputs inference cannot size keep their shape
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], name="/s/ReduceSum", keepdims=0),
             helper.make_node("Mul", ["total", "total"], ["square"], name="/s/Mul"),
             helper.make_node("Add", ["x", "total"], ["y"], name="/y/Add")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    x = np.arange(8, dtype=np.float32)[::2]
    expected = reference(model, {"x": np.ascontiguousarray(x)})
    types = inferred_types(model, {"x": x})
    for tensor in ("square", "y"):
        types[tensor] = helper.make_tensor_type_proto(TensorProto.FLOAT, None)
    session = request.getfixturevalue("session_runs")
    assert_same_values(run_all(model, {"x": x}, 1, types=types), expected)
    assert session == {"plain": [], "bound": 3}


@pytest.mark.parametrize("max_memory", [1, 2**20])
def test_outputs_of_unknown_shape_come_back_from_onnxruntime(tmp_path, request, max_memory):
    model = reshape_model()
    types = inferred_types(model, RESHAPE_FEEDS)
    assert not types["shaped"].tensor_type.shape.dim[0].dim_value
    expected = reference(model, RESHAPE_FEEDS)
    session = request.getfixturevalue("session_runs")
    runs = run_all(model, RESHAPE_FEEDS, max_memory)
    assert_same_values(runs, expected)
    assert session["plain"] == []  # bound, with onnxruntime allocating what inference left unsized

    tdo.record(model, RESHAPE_FEEDS, tmp_path / "t.h5", max_memory=max_memory)
    trace = td.open(tmp_path / "t.h5")
    np.testing.assert_array_equal(trace.get("/r/Reshape").read(), expected["shaped"])
    np.testing.assert_array_equal(trace.get("/y/Neg").read(), expected["y"])
    assert trace.get("/r/Reshape").shape == (3, 2)


@pytest.mark.parametrize("declared_shape, declared_type", [
    ([6, 1], TensorProto.FLOAT),     # the graph output's declared shape is wrong
    ([3, 2], TensorProto.INT32),     # its declared dtype is wrong
])
@pytest.mark.parametrize("max_memory", [1, 2**20])
def test_a_wrong_inferred_type_falls_back_to_a_plain_run(tmp_path, request, declared_shape,
                                                         declared_type, max_memory):
    model = reshape_model(declared_shape, declared_type)
    lie = inferred_types(model, RESHAPE_FEEDS)["shaped"].tensor_type
    assert [d.dim_value for d in lie.shape.dim] == declared_shape  # inference took it on trust
    expected = reference(model, RESHAPE_FEEDS)
    lies = lying_types(inferred_types(model, RESHAPE_FEEDS), expected)
    assert "shaped" in lies
    session = request.getfixturevalue("session_runs")
    runs = run_all(model, RESHAPE_FEEDS, max_memory)
    assert_same_values(runs, expected)
    # only the groups that inference lied about ran plainly (the lie can spread to a reader)
    assert session["plain"] == [g.outputs for g, _, _ in runs if lies & set(g.outputs)]

    tdo.record(model, RESHAPE_FEEDS, tmp_path / "t.h5", max_memory=max_memory)
    trace = td.open(tmp_path / "t.h5")
    for name, tensor in (("/r/Reshape", "shaped"), ("/y/Neg", "y"), ("/k/Cos", "known")):
        np.testing.assert_array_equal(trace.get(name).read(), expected[tensor])


def test_a_wrong_type_given_to_run_groups_falls_back_to_a_plain_run(request):
    model = mixed_model()
    feeds = {"x": np.random.default_rng(2).standard_normal((4, 16, 32)).astype(np.float32)}
    types = inferred_types(model, feeds)
    types["scores"].tensor_type.shape.dim[1].dim_value = 15
    expected = reference(model, feeds)
    session = request.getfixturevalue("session_runs")
    assert_same_values(run_all(model, feeds, max_memory=12 * 1024, types=types), expected)
    assert session["plain"] == [
        next(g.outputs for g, _, _ in run_all(model, feeds, 12 * 1024) if "scores" in g.outputs)]


def sequence_and_string_model():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="/a/Relu"),
             helper.make_node("SequenceConstruct", ["x", "r"], ["s"], name="/seq/Construct"),
             helper.make_node("ConcatFromSequence", ["s"], ["c"], name="/seq/Concat", axis=0),
             helper.make_node("Cast", ["c"], ["text"], name="/str/Cast", to=TensorProto.STRING),
             helper.make_node("Cast", ["text"], ["back"], name="/str/Back", to=TensorProto.FLOAT),
             helper.make_node("Neg", ["back"], ["y"], name="/b/Neg")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


def assert_sequence_and_string_values(runs, expected):
    values = {t: v for _, _, copies in runs for t, v in copies.items()}
    assert isinstance(values["s"], list) and len(values["s"]) == 2
    for got, want in zip(values["s"], expected["s"]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(values["text"], expected["text"])
    for tensor in ("r", "c", "back", "y"):
        np.testing.assert_array_equal(values[tensor], expected[tensor])


@pytest.mark.parametrize("max_memory, plain, bound", [
    # a sequence or string output, or input, runs plainly: the binding cannot hand those back
    # safely (onnxruntime 1.32's copy_outputs_to_cpu crashes on a string tensor)
    (1, [["s"], ["c"], ["text"], ["back"]], 2),
    (2**20, [["r", "s", "c", "text", "back", "y"]], 0),
])
def test_sequence_and_string_outputs_come_back_as_a_plain_run_gives_them(request, max_memory,
                                                                          plain, bound):
    model = sequence_and_string_model()
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2}
    expected = reference(model, feeds)
    session = request.getfixturevalue("session_runs")
    assert_sequence_and_string_values(run_all(model, feeds, max_memory), expected)
    assert session == {"plain": plain, "bound": bound}


def test_an_output_inferred_numeric_that_is_not_is_fetched_plainly(request):
    model = sequence_and_string_model()
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2}
    types = inferred_types(model, feeds)
    for tensor in ("s", "text"):  # as an unknown custom op's outputs could be mistyped
        types[tensor] = helper.make_tensor_type_proto(TensorProto.FLOAT, None)
    expected = reference(model, feeds)
    session = request.getfixturevalue("session_runs")
    assert_sequence_and_string_values(run_all(model, feeds, 1, types=types), expected)
    assert session == {"plain": [["s"], ["c"], ["text"], ["back"]], "bound": 4}


def _records(path):
    trace = td.open(path)
    return [(r.kind, r.name, r.meta, r.dtype, r.shape, r.hash, r.stats) for r in trace], \
        [r.read() for r in trace]


@pytest.mark.parametrize("model, feeds, max_memory", [
    (mixed_model(), {"x": np.random.default_rng(3).standard_normal((4, 16, 32)).astype(np.float32)},
     12 * 1024),
    (carry_model(), {"x": np.linspace(-3, 3, 64, dtype=np.float32)}, 1),
    (reshape_model(), RESHAPE_FEEDS, 1),
    (reshape_model([6, 1]), RESHAPE_FEEDS, 2**20),
])
def test_the_trace_is_the_same_with_and_without_the_buffer(tmp_path, monkeypatch, model, feeds,
                                                          max_memory):
    tdo.record(model, feeds, tmp_path / "bound.h5", max_memory=max_memory)
    monkeypatch.setattr(tdo, "run_groups",
                        functools.partial(onnx_run.run_groups, reuse_buffer=False))
    tdo.record(model, feeds, tmp_path / "plain.h5", max_memory=max_memory)
    (bound, bound_values), (plain, plain_values) = (_records(tmp_path / "bound.h5"),
                                                    _records(tmp_path / "plain.h5"))
    assert bound == plain
    assert len(bound) > 4
    for a, b in zip(bound_values, plain_values):
        np.testing.assert_array_equal(a, b)
