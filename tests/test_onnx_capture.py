"""What the ONNX adapter captures: one forward record per node output in topological order,
named as the conventions say, equal to onnxruntime's own outputs; the same records whatever
the memory budget; peak memory bounded by one group; generated and checked inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff import format as fmt  # noqa: E402
from tracediff.adapters import onnx as tdo  # noqa: E402
from tracediff.errors import TraceDiffError  # noqa: E402


def small_model():
    """x[batch, 6] -> Relu (unnamed) -> Split into two (named) -> Mul by a Constant, Add.

    The nodes are stored out of order: the adapter must still run and record them
    topologically.
    """
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "proj.weight")
    nodes = [
        helper.make_node("Add", ["prod", "right"], ["y"], name="/sum/Add"),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Split", ["r"], ["left", "right"], name="/split/Split", axis=1,
                         num_outputs=2),
        helper.make_node("Constant", [], ["two"], name="const",
                         value=numpy_helper.from_array(np.float32(2.0))),
        helper.make_node("MatMul", ["left", "proj.weight"], ["mm"], name="/proj/MatMul"),
        helper.make_node("Mul", ["mm", "two"], ["prod"], name="/proj/Mul"),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def reference(model, feeds, names):
    """onnxruntime's values for tensors ``names``, all marked as graph outputs at once."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names
                             if n not in {o.name for o in model.graph.output})
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_records_every_node_output_in_topological_order(tmp_path):
    model = small_model()
    x = np.linspace(-1, 1, 30, dtype=np.float32).reshape(5, 6)
    tdo.record(model, {"x": x}, tmp_path / "t.h5")
    trace = td.open(tmp_path / "t.h5")
    forward = trace.records("forward")
    assert [r.name for r in forward] == [
        "Relu_1", "/split/Split:0", "/split/Split:1", "/proj/MatMul", "/proj/Mul", "/sum/Add"]
    assert [r.meta["onnx_output"] for r in forward] == ["r", "left", "right", "mm", "prod", "y"]
    assert [r.meta["op_type"] for r in forward] == ["Relu", "Split", "Split", "MatMul", "Mul", "Add"]
    expected = reference(model, {"x": x}, [r.meta["onnx_output"] for r in forward])
    for record in forward:
        np.testing.assert_array_equal(record.read(), expected[record.meta["onnx_output"]])
    assert [r.name for r in trace.records("input")] == ["x"]
    assert [r.name for r in trace.records("param")] == ["proj.weight"]
    assert trace.framework == "onnx" and trace.complete
    assert forward[-1].meta["graph_output"] is True


def test_grouped_capture_writes_the_same_records_bit_for_bit(tmp_path):
    model = small_model()
    x = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)
    tdo.record(model, {"x": x}, tmp_path / "one.h5")
    tdo.record(model, {"x": x}, tmp_path / "many.h5", max_memory=1)
    one, many = td.open(tmp_path / "one.h5"), td.open(tmp_path / "many.h5")
    assert json.loads(one.attrs["meta"])["groups"] == 1
    assert json.loads(many.attrs["meta"])["groups"] == 5  # one per non-Constant node
    assert [(r.kind, r.name, r.meta) for r in one] == [(r.kind, r.name, r.meta) for r in many]
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a.read(), b.read())


def chain_model(length=24, numel=2**20, ops=("Sin", "Cos", "Neg")):
    """``length`` elementwise nodes (``ops`` in turn) on one float32 tensor of ``numel`` (4 MiB
    by default: ~100 MiB of intermediates)."""
    nodes, previous = [], "x"
    for index in range(length):
        op = ops[index % len(ops)]
        nodes.append(helper.make_node(op, [previous], [f"t{index}"], name=f"/chain/{op}_{index}"))
        previous = f"t{index}"
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [numel])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [numel])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


_PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from tracediff.adapters import onnx as tdo

    def status(key):  # kB, of this process's own memory (ru_maxrss survives fork + exec)
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(key))

    model, out, budget = sys.argv[1], sys.argv[2], sys.argv[3]
    x = np.ones(2**20, np.float32)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak (VmHWM) to the current resident size
    before = status("VmRSS:")
    tdo.record(model, {"x": x}, out, max_memory=budget, values=False)
    print(json.dumps({"growth_kib": status("VmHWM:") - before}))
""")


def _peak_growth(model_path, out, budget):
    # a fixed mmap threshold: glibc's adaptive one moves freed 4 MiB blocks onto the heap,
    # whose fragmentation makes the peak drift by a group between runs
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MALLOC_MMAP_THRESHOLD_="1048576")
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(model_path), str(out), budget],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])["growth_kib"] * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_stays_near_one_group_when_intermediates_exceed_the_budget(tmp_path):
    # growth of peak RSS over the process's own (imports, onnxruntime start-up, statistics
    # temporaries): with a 9 MiB budget it must not grow with the number of intermediates
    growth = {}
    for length, budget in ((6, "9MiB"), (24, "9MiB"), (24, "1GiB")):
        model_path = tmp_path / f"chain{length}.onnx"
        onnx.save(chain_model(length), model_path)
        out = tmp_path / f"{length}-{budget}.h5"
        growth[length, budget] = _peak_growth(model_path, out, budget)
        groups = json.loads(td.open(out).attrs["meta"])["groups"]
        assert groups == (1 if budget == "1GiB" else length // 2)  # two 4 MiB outputs a group
    intermediates = 24 * 4 * 2**20
    assert growth[24, "1GiB"] > 0.8 * intermediates, growth  # every output at once
    assert growth[24, "9MiB"] < growth[6, "9MiB"] + 8 * 2**20, growth
    assert growth[24, "9MiB"] < growth[24, "1GiB"] - 48 * 2**20, growth


def test_random_inputs_use_dims_then_distinct_primes(tmp_path):
    feeds_model = helper.make_model(helper.make_graph(
        [helper.make_node("Gather", ["embed.weight", "ids"], ["emb"], name="/embed/Gather"),
         helper.make_node("Relu", ["x"], ["r"], name="/act/Relu")], "inputs",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "width"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((6, 2), np.float32), "embed.weight")]),
        opset_imports=[helper.make_opsetid("", 18)])
    tdo.record(feeds_model, None, tmp_path / "r.h5", dims={"seq": 11}, seed=4)
    trace = td.open(tmp_path / "r.h5")
    assert trace.dims == {"seq": 11, "batch": 3, "width": 5}   # 4 is fixed: skipped
    ids, x = trace.get("ids", kind="input").read(), trace.get("x", kind="input").read()
    assert ids.shape == (3, 11) and x.shape == (3, 4, 5) and x.dtype == np.float32
    assert ids.min() >= 0 and ids.max() < 6 and len(np.unique(ids)) > 2  # rows of the table
    assert trace.get("embed.weight", kind="param").meta["role"] == "embedding"
    tdo.record(feeds_model, None, tmp_path / "again.h5", dims={"seq": 11}, seed=4)
    np.testing.assert_array_equal(td.open(tmp_path / "again.h5").get("x", kind="input").read(), x)


@pytest.mark.parametrize("inputs,message", [
    ({}, "no value given for input 'x' of <ModelProto>: give every input (x) or generate "
         "them with --random"),
    ({"x": np.zeros((2, 6), np.float32), "z": np.zeros(1)},
     "<ModelProto> has no input named 'z': its inputs are x"),
    ({"x": np.zeros((2, 6), np.float64)},
     "input 'x' of <ModelProto> is float64 but the model expects float32: convert it first "
     "(array.astype(np.float32))"),
    ({"x": np.zeros((2, 5), np.float32)},
     "input 'x' of <ModelProto> has size 5 on axis 1 but the model fixes it to 6: give shape "
     "['batch', 6]"),
    ({"x": np.zeros(6, np.float32)},
     "input 'x' of <ModelProto> has shape [6] but the model expects 2 axes ['batch', 6]"),
])
def test_bad_inputs_are_refused_in_one_line(tmp_path, inputs, message):
    model = small_model()
    model.graph.name = ""
    with pytest.raises(TraceDiffError) as error:
        tdo.record(model, inputs, tmp_path / "t.h5")
    assert str(error.value) == message
    assert not (tmp_path / "t.h5").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"max_memory": "lots"}, "cannot read memory size 'lots': write it like 512MB, 2GiB or "
                             "1000000 (bytes)"),
    ({"loss": "hinge"}, "unknown loss 'hinge': use one of cross_entropy, mse, sum"),
    ({"loss": "mse"}, "loss 'mse' needs a target: pass target= (--target FILE.npy)"),
    ({"providers": "nosuch"}, "onnxruntime provider 'nosuch' is not available in this "
                              "installation"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(TraceDiffError) as error:
        tdo.record(small_model(), {"x": np.zeros((2, 6), np.float32)}, tmp_path / "t.h5", **kwargs)
    assert str(error.value).startswith(message)
    assert not (tmp_path / "t.h5").exists()


def test_stats_only_capture_keeps_statistics_and_hashes(tmp_path):
    model = small_model()
    x = np.random.default_rng(5).standard_normal((5, 6)).astype(np.float32)
    tdo.record(model, {"x": x}, tmp_path / "full.h5")
    tdo.record(model, {"x": x}, tmp_path / "stats.h5", values=False)
    full, stats = td.open(tmp_path / "full.h5"), td.open(tmp_path / "stats.h5")
    for a, b in zip(full.records("forward"), stats.records("forward")):
        assert not b.stored and b.hash
        assert a.stats == b.stats


def test_subgraph_reading_an_outer_tensor_from_an_earlier_group(tmp_path):
    # the If branches read `h`, computed by an earlier node: with one node a group, `h` must
    # be carried into the If's group although no input of the If node names it
    then_graph = helper.make_graph([helper.make_node("Neg", ["h"], ["a"], name="/then/Neg")],
                                   "then", [], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])])
    else_graph = helper.make_graph([helper.make_node("Abs", ["h"], ["b"], name="/else/Abs")],
                                   "else", [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    graph = helper.make_graph(
        [helper.make_node("Sin", ["x"], ["h"], name="/pre/Sin"),
         helper.make_node("ReduceSum", ["x"], ["total"], name="/pre/ReduceSum", keepdims=0),
         helper.make_node("Greater", ["total", "zero"], ["cond"], name="/pre/Greater"),
         helper.make_node("If", ["cond"], ["y"], name="/branch/If", then_branch=then_graph,
                          else_branch=else_graph)],
        "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.float32(0), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    tdo.record(model, {"x": x}, tmp_path / "t.h5", max_memory=1)
    trace = td.open(tmp_path / "t.h5")
    assert json.loads(trace.attrs["meta"])["groups"] == 4
    np.testing.assert_allclose(trace.get("/branch/If").read(), -np.sin(x), rtol=1e-6)


def test_sequence_values_are_carried_between_groups_but_not_recorded(tmp_path):
    graph = helper.make_graph([
        helper.make_node("Relu", ["x"], ["r"], name="/a/Relu"),
        helper.make_node("SequenceConstruct", ["x", "r"], ["s"], name="/seq/Construct"),
        helper.make_node("ConcatFromSequence", ["s"], ["c"], name="/seq/Concat", axis=0),
        helper.make_node("Neg", ["c"], ["y"], name="/b/Neg")], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    tdo.record(model, {"x": x}, tmp_path / "t.h5", max_memory=1)
    trace = td.open(tmp_path / "t.h5")
    assert json.loads(trace.attrs["meta"])["groups"] == 4
    assert [r.name for r in trace.records("forward")] == ["/a/Relu", "/seq/Concat", "/b/Neg"]
    np.testing.assert_array_equal(trace.get("/b/Neg").read(),
                                  -np.concatenate([x, np.maximum(x, 0)]))


@pytest.mark.parametrize("node_names,expected", [
    (["/encoder/layers.0/self_attn/MatMul"], ["encoder.layers.0.self_attn"]),
    (["/layers.0/mlp/mlp.0/MatMul"], ["layers.0.mlp.0"]),             # Sequential child
    (["/blocks.0.1/conv/Conv"], ["blocks.0.1.conv"]),                  # nested ModuleLists
    (["/stage/stage.0/stage.0.1/Relu"], ["stage.0.1"]),
    (["/fc1/Gemm", "/Flatten", "/fc1_1/Gemm"], ["fc1", "<root>", "fc1"]),  # called twice
    (["/conv_1/Conv"], ["conv_1"]),                                    # a name ending in _1
])
def test_legacy_scopes_decode_to_qualified_module_names(node_names, expected):
    from tracediff.adapters.onnx.origins import node_origins

    nodes = [helper.make_node("Relu", [f"i{k}"], [f"o{k}"], name=name)
             for k, name in enumerate(node_names)]
    origins = node_origins(nodes, set(), set(), legacy=True)
    assert [o["scope"] for o in origins] == expected
    calls = [o.get("module_call", 0) for o in origins]
    assert calls == ([0, 0, 1] if len(nodes) == 3 else [0])


@pytest.mark.parametrize("length, values, chunk", [(24, True, fmt.LARGE_DATA_CHUNK),
                                                   (24, False, fmt.DATA_CHUNK),
                                                   (3, True, fmt.DATA_CHUNK)])
def test_the_planned_size_picks_the_data_chunk(tmp_path, length, values, chunk):
    """24 x 4 MiB of planned outputs is a large trace (fewer, larger chunks to write); a few
    MiB, or statistics only, keep small chunks so that small traces stay small."""
    x = np.ones(2**20, np.float32)
    tdo.record(chain_model(length), {"x": x}, tmp_path / "t.h5", values=values)
    with h5py.File(tmp_path / "t.h5", "r", locking=False) as f:
        assert f[fmt.DATA].chunks == (chunk,)
    last = td.open(tmp_path / "t.h5").records("forward")[-1]
    assert last.stats["numel"] == 2**20 and last.stored is values
