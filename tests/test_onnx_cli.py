"""``tracediff record``: inputs from .npy files or generated, one summary line, and every
mistake answered with one line and exit status 2."""
from __future__ import annotations


import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.cli import main  # noqa: E402


@pytest.fixture
def model_path(tmp_path):
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10,
                                     "fc.weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "fc.weight"], ["y"], name="/fc/MatMul"),
         helper.make_node("Relu", ["y"], ["out"], name="/act/Relu")],
        "cli", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 3])], [weight])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_record_from_npy_files(tmp_path, model_path, capsys):
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "t.h5"
    assert main(["record", str(model_path), "--input", f"x={tmp_path / 'x.npy'}",
                 "--out", str(out), "--max-memory", "64B"]) == 0
    assert capsys.readouterr().err == f"recorded 4 records (2 node outputs, 2 groups) to {out}\n"
    trace = td.open(out)
    np.testing.assert_array_equal(trace.get("x", kind="input").read(), x)
    np.testing.assert_allclose(trace.get("/act/Relu").read(),
                               np.maximum(x @ (np.arange(12).reshape(4, 3) / 10), 0), rtol=1e-6)


def test_record_random_inputs_with_dims_and_seed(tmp_path, model_path):
    args = ["record", str(model_path), "--random", "--dims", "batch=2,seq=7", "--seed", "3"]
    assert main(args + ["--out", str(tmp_path / "a.h5")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.h5")]) == 0
    a, b = td.open(tmp_path / "a.h5"), td.open(tmp_path / "b.h5")
    assert a.dims == {"batch": 2, "seq": 7} and a.attrs["seed"] == 3
    assert a.get("x", kind="input").shape == (2, 7, 4)
    np.testing.assert_array_equal(a.get("x", kind="input").read(), b.get("x", kind="input").read())
    assert main(["record", str(model_path), "--random", "--out", str(tmp_path / "c.h5")]) == 0
    assert td.open(tmp_path / "c.h5").dims == {"batch": 3, "seq": 5}  # distinct primes


def _error(capsys, argv):
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    return err.strip()


def test_mistakes_are_one_line_and_exit_2(tmp_path, model_path, capsys):
    out = str(tmp_path / "t.h5")
    model = str(model_path)
    assert _error(capsys, ["record", model, "--out", out]) == (
        "tracediff record: error: no inputs: give --input NAME=FILE.npy for each graph input, "
        "or --random to generate them")
    assert _error(capsys, ["record", model, "--random", "--input", "x=a.npy", "--out", out]) == (
        "tracediff record: error: give either --input NAME=FILE.npy or --random, not both")
    assert _error(capsys, ["record", model, "--random", "--dims", "batch=two", "--out", out]) == (
        "tracediff record: error: cannot read --dims item 'batch=two': write NAME=SIZE pairs "
        "joined by commas, e.g. batch=3,seq=7")
    assert _error(capsys, ["record", model, "--input", "x", "--out", out]) == (
        "tracediff record: error: cannot read --input 'x': write NAME=FILE.npy")
    assert _error(capsys, ["record", model, "--input", f"x={tmp_path / 'no.npy'}", "--out", out]) == (
        f"tracediff record: error: --input x: {tmp_path / 'no.npy'} does not exist")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert _error(capsys, ["record", model, "--input", f"x={tmp_path / 'obj.npy'}", "--out", out]) == (
        f"tracediff record: error: --input x: {tmp_path / 'obj.npy'} holds Python objects, which "
        "are not loaded (no pickle): save a numeric array with np.save")
    assert _error(capsys, ["record", str(tmp_path / "none.onnx"), "--random", "--out", out]) == (
        f"tracediff record: error: model {tmp_path / 'none.onnx'} does not exist: give the path "
        "of a .onnx file")
    assert _error(capsys, ["record", model, "--random", "--provider", "cuda", "--out", out]) \
        .startswith("tracediff record: error: onnxruntime provider 'cuda' is not available")
    assert not (tmp_path / "t.h5").exists()
    assert main(["record", model, "--random", "--out", out]) == 0
    capsys.readouterr()
    assert _error(capsys, ["record", model, "--random", "--out", out]) == (
        f"tracediff record: error: {out} already exists: choose another --out or pass --overwrite")
    assert main(["record", model, "--random", "--out", out, "--overwrite"]) == 0


def test_loss_adds_backward_records_named_after_the_forward_records(tmp_path, model_path):
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "t.h5"
    assert main(["record", str(model_path), "--input", f"x={tmp_path / 'x.npy'}", "--loss", "sum",
                 "--out", str(out), "--max-memory", "1B"]) == 0
    trace = td.open(out)
    forward = {r.name: r for r in trace.records("forward")}
    backward = {r.name: r for r in trace.records("backward")}
    assert set(backward) == set(forward) == {"/fc/MatMul", "/act/Relu"}
    for name, record in backward.items():
        assert record.meta["module"] == forward[name].meta["module"]
    # d(sum(relu(y)))/dy is 1 where y > 0
    np.testing.assert_array_equal(backward["/act/Relu"].read(), np.ones((2, 3, 3), np.float32))
    np.testing.assert_array_equal(backward["/fc/MatMul"].read(),
                                  (forward["/fc/MatMul"].read() > 0).astype(np.float32))
