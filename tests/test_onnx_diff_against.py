"""``tracediff record MODEL --diff-against REF``: record, then diff against a reference in one
process, with exactly the report and exit status of ``tracediff diff TRACE REF``."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tracediff.cli import main  # noqa: E402


def _model(path, scale=1.0):
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10,
                                     "fc.weight")
    factor = numpy_helper.from_array(np.array(scale, np.float32), "factor")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "fc.weight"], ["y"], name="/fc/MatMul"),
         helper.make_node("Mul", ["y", "factor"], ["z"], name="/scale/Mul"),
         helper.make_node("Relu", ["z"], ["out"], name="/act/Relu")],
        "cli", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])], [weight, factor])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return str(path)


@pytest.fixture
def reference(tmp_path):
    ref = tmp_path / "ref.h5"
    assert main(["record", _model(tmp_path / "ref.onnx"), "--random", "--out", str(ref)]) == 0
    return str(ref)


def _reports(tmp_path, capsys, model, reference, *options):
    """(status, stdout, JSON report) of --diff-against, then of record + tracediff diff."""
    one = tmp_path / "one.json"
    status = main(["record", model, "--random", "--out", str(tmp_path / "one.h5"),
                   "--diff-against", reference, "--json", str(one), *options])
    out = capsys.readouterr().out
    two = tmp_path / "two.json"
    assert main(["record", model, "--random", "--out", str(tmp_path / "two.h5")]) == 0
    capsys.readouterr()
    status_two = main(["diff", str(tmp_path / "two.h5"), reference, "--json", str(two), *options])
    out_two = capsys.readouterr().out
    assert status == status_two
    return status, out.replace("one.h5", "X"), out_two.replace("two.h5", "X"), \
        _plain(json.loads(one.read_text())), _plain(json.loads(two.read_text()))


def _plain(report):
    report["a"]["path"] = "X"
    return report


def test_a_planted_bug_is_named_as_diff_names_it(tmp_path, capsys, reference):
    buggy = _model(tmp_path / "buggy.onnx", scale=1.5)
    status, out, out_two, report, report_two = _reports(tmp_path, capsys, buggy, reference)
    assert status == 1
    assert report["first_divergence"]["forward"]["a_name"] == "/scale/Mul"
    assert report == report_two
    assert out == out_two and "/scale/Mul" in out


def test_a_correct_run_reports_nothing(tmp_path, capsys, reference):
    same = _model(tmp_path / "same.onnx")
    status, out, out_two, report, report_two = _reports(tmp_path, capsys, same, reference,
                                                        "--rtol", "0", "--atol", "0")
    assert status == 0
    assert report["ok"] and report["first_divergence"]["forward"] is None
    assert report["pairs"][0]["tolerance"]["rtol"] == 0
    assert report == report_two and out == out_two


def _error(capsys, argv):
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    return err.strip()


def test_refusals_come_before_the_model_runs(tmp_path, capsys, reference):
    model = _model(tmp_path / "m.onnx")
    out = str(tmp_path / "new.h5")
    capsys.readouterr()
    assert _error(capsys, ["record", model, "--random", "--out", out, "--rtol", "0"]) == (
        "tracediff record: error: --rtol is an option of the comparison: give --diff-against "
        "REF.h5 too, or leave it out")
    assert _error(capsys, ["record", model, "--random", "--out", out, "--markdown", "r.md"]) == (
        "tracediff record: error: --markdown is an option of the comparison: give "
        "--diff-against REF.h5 too, or leave it out")
    missing = str(tmp_path / "none.h5")
    assert _error(capsys, ["record", model, "--random", "--out", out, "--diff-against",
                           missing]) == (
        f"tracediff record: error: --diff-against {missing} does not exist: record the "
        "reference trace first (tracediff record ... --out REF.h5)")
    assert _error(capsys, ["record", model, "--random", "--out", reference, "--overwrite",
                           "--diff-against", reference]) == (
        f"tracediff record: error: --diff-against and --out both name {reference}: write the "
        "new trace to another --out")
    assert not (tmp_path / "new.h5").exists()
