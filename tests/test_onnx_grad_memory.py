"""The memory-bounded backward (``max_memory``): run group by group as gradient checkpointing
does, it writes the records of the single gradient run, and its peak memory stays near the
budget plus the boundary tensors rather than growing with every gradient."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import tracediff as td
from tracediff.adapters import onnx as tdo
from tracediff.cli import main

from test_onnx_capture import chain_model
from test_onnx_grad_torch import _built, _export, _loss_fn

GRADIENT_KINDS = ("loss", "backward", "param_grad")


def _deep_mlp():
    import torch

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 11), nn.Tanh(),
                          nn.Linear(11, 5)).eval()
    gen = torch.Generator().manual_seed(5)
    return model, torch.randn(3, 7, generator=gen), torch.tensor([0, 4, 2])


def _gradient_records(path):
    trace = td.open(path)
    return trace, [r for r in trace if r.kind in GRADIENT_KINDS]


def _groups(trace):
    return trace.get("loss", kind="loss").meta["gradient_groups"]


@pytest.mark.parametrize("name,exporter,budget", [
    ("mlp", "legacy", 1), ("cnn", "legacy", 2000), ("cnn", "dynamo", 1),
    ("block", "legacy", 8000), ("block", "dynamo", 1)])
def test_grouped_backward_writes_the_records_of_the_single_run(name, exporter, budget, tmp_path):
    model, x, target = _deep_mlp() if name == "mlp" else _built(name)
    path = tmp_path / "m.onnx"
    _export(model, x, path, exporter)
    feeds, labels = {"x": x.numpy()}, target.numpy()
    tdo.record(path, feeds, tmp_path / "one.h5", loss="cross_entropy", target=labels,
               max_memory="1GiB")
    tdo.record(path, feeds, tmp_path / "many.h5", loss="cross_entropy", target=labels,
               max_memory=budget)
    one, single = _gradient_records(tmp_path / "one.h5")
    many, grouped = _gradient_records(tmp_path / "many.h5")
    assert _groups(one) == 1 and _groups(many) >= 4
    # the same records; backward ones in the same order (loss to input), each parameter's
    # gradient written once, as soon as the earliest group reading it is done
    assert sorted(r.key for r in grouped) == sorted(r.key for r in single)
    assert [r.key for r in grouped if r.kind == "backward"] == \
        [r.key for r in single if r.kind == "backward"]
    assert {r.key: r.meta for r in grouped if r.kind != "loss"} == \
        {r.key: r.meta for r in single if r.kind != "loss"}
    for record in single:
        # onnxruntime fuses differently in one big graph than in small ones: last bits only
        np.testing.assert_allclose(many.get(record.name, record.kind, record.call).read(),
                                   record.read(), rtol=2e-5, atol=1e-7,
                                   err_msg=f"{record.kind} {record.name} call {record.call}")
    assert td.diff(tmp_path / "many.h5", tmp_path / "one.h5").ok


def test_grouped_backward_matches_torch(tmp_path):
    from tracediff.adapters import torch as tdt

    model, x, target = _built("cnn")
    _export(model, x, tmp_path / "m.onnx", "legacy")
    tdt.record(model, x, tmp_path / "torch.h5", loss_fn=_loss_fn(target))
    tdo.record(tmp_path / "m.onnx", {"x": x.numpy()}, tmp_path / "onnx.h5",
               loss="cross_entropy", target=target.numpy(), max_memory=1000)
    assert _groups(td.open(tmp_path / "onnx.h5")) >= 4
    report = td.diff(tmp_path / "onnx.h5", tmp_path / "torch.h5")
    grads = {p.b_name: p.status for p in report.pairs if p.kind == "param_grad"}
    assert grads == {n: "ok" for n, _ in model.named_parameters()}
    assert report.first_divergence.backward is None


def _shared_weight_model():
    """One weight read by three MatMuls, an alias of a bias read by two: one node a group
    with a tiny budget, so gradients must be summed across groups."""
    rng = np.random.default_rng(11)
    w, b = rng.standard_normal((5, 5)), rng.standard_normal(5)
    nodes = [helper.make_node("Identity", ["fc.bias"], ["fc2.bias"], name="Identity_0")]
    previous = "x"
    for i in range(3):
        nodes.append(helper.make_node("MatMul", [previous, "fc.weight"], [f"m{i}"],
                                      name=f"/fc{i}/MatMul"))
        bias = "fc.bias" if i == 0 else "fc2.bias"
        nodes.append(helper.make_node("Add", [f"m{i}", bias], [f"a{i}"], name=f"/fc{i}/Add"))
        nodes.append(helper.make_node("Tanh", [f"a{i}"], [f"t{i}"], name=f"/act{i}/Tanh"))
        previous = f"t{i}"
    graph = helper.make_graph(
        nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3, 5])],
        [helper.make_tensor_value_info(previous, TensorProto.DOUBLE, [3, 5])],
        initializer=[numpy_helper.from_array(w, "fc.weight"),
                     numpy_helper.from_array(b, "fc.bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), w, b


def test_parameter_read_by_several_groups_gets_the_sum_once(tmp_path):
    model, w, b = _shared_weight_model()
    x = np.random.default_rng(12).standard_normal((3, 5))
    tdo.record(model, {"x": x}, tmp_path / "t.h5", loss="sum", max_memory=1)
    trace = td.open(tmp_path / "t.h5")
    assert _groups(trace) == 10  # every node, the alias Identity included
    assert sorted(r.name for r in trace.records("param_grad")) == ["fc.bias", "fc.weight",
                                                                   "fc2.bias"]
    # by hand: h_{i+1} = tanh(h_i W + bias), L = sum(h_3)
    hs = [x]
    for _ in range(3):
        hs.append(np.tanh(hs[-1] @ w + b))
    dw, dbias, dhs = np.zeros_like(w), [None] * 3, {3: np.ones((3, 5))}
    for i in reversed(range(3)):
        da = dhs[i + 1] * (1 - hs[i + 1] ** 2)
        dw += hs[i].T @ da
        dbias[i] = da.sum(0)
        dhs[i] = da @ w.T
    np.testing.assert_allclose(trace.get("fc.weight", kind="param_grad").read(), dw, rtol=1e-12)
    np.testing.assert_allclose(trace.get("fc.bias", kind="param_grad").read(), dbias[0],
                               rtol=1e-12)
    np.testing.assert_allclose(trace.get("fc2.bias", kind="param_grad").read(),
                               dbias[1] + dbias[2], rtol=1e-12)
    np.testing.assert_allclose(trace.get("/act0/Tanh", kind="backward").read(), dhs[1],
                               rtol=1e-12)


def test_cli_max_memory_bounds_the_backward_too(tmp_path, capsys):
    model, _, _ = _shared_weight_model()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(12).standard_normal((3, 5)))
    out = tmp_path / "t.h5"
    assert main(["record", str(tmp_path / "m.onnx"), "--input", f"x={tmp_path / 'x.npy'}",
                 "--loss", "sum", "--max-memory", "150B", "--out", str(out)]) == 0
    capsys.readouterr()
    trace = td.open(out)
    assert _groups(trace) >= 4
    assert len(list(trace.records("backward"))) == 9


_PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import h5py, onnx, onnxruntime  # noqa: F401,E401  (loaded before the baseline)
    import tracediff as td
    from tracediff.adapters import onnx as tdo  # noqa: F401
    from tracediff.adapters.onnx.grad import groups  # noqa: F401
    from tracediff.adapters.onnx.grad import record_backward

    def status(key):  # kB, of this process's own memory
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(key))

    model_path, out, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = onnx.load(model_path)
    x = np.ones(model.graph.input[0].type.tensor_type.shape.dim[0].dim_value, np.float32)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak (VmHWM) to the current resident size
    before = status("VmRSS:")
    with td.Recorder(out, framework="onnx", values=False) as rec:
        record_backward(model, {"x": x}, rec, loss="sum", max_memory=budget)
    print(json.dumps({"growth": (status("VmHWM:") - before) * 1024,
                      "groups": td.open(out).get("loss", kind="loss").meta["gradient_groups"]}))
""")


def _peak_growth(model_path, out, budget):
    # a fixed mmap threshold, as in the forward adapter's memory test: freed blocks go back
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MALLOC_MMAP_THRESHOLD_="1048576")
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(model_path), str(out),
                           str(budget)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_of_the_backward_stays_near_budget_plus_boundary(tmp_path):
    # 48 gradients of 2 MiB: 96 MiB together, four times the 24 MiB budget
    mib, tensor = 2**20, 2 * 2**20
    onnx.save(chain_model(48, tensor // 4, ops=("Tanh", "Sigmoid", "Neg")), tmp_path / "chain.onnx")
    whole = _peak_growth(tmp_path / "chain.onnx", tmp_path / "whole.h5", 1024 * mib)
    grouped = _peak_growth(tmp_path / "chain.onnx", tmp_path / "grouped.h5", 24 * mib)
    assert whole["groups"] == 1 and grouped["groups"] == 8  # 6 outputs + 6 gradients a group
    assert whole["growth"] > 48 * tensor, whole  # every gradient at once
    boundary = grouped["groups"] * tensor  # each group's input (the last: the loss input)
    assert grouped["growth"] < 24 * mib + boundary + 16 * mib, grouped
    assert grouped["growth"] < 0.5 * whole["growth"], (grouped, whole)
