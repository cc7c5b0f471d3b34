"""The public contract end to end: the Python API as ../shared/CONTRACT.md shows it, and every
CLI verb with its exit status. Details of each part are specified in their own test modules."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.cli import main  # noqa: E402

DIMS = {"batch": 3, "features": 7, "hidden": 11, "classes": 5}


def reference_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.Tanh(), torch.nn.Linear(11, 5))


def numpy_port(path, model, x, y, bias_bug=False):
    w1, b1, w2, b2 = (p.detach().double().numpy() for p in model.parameters())
    with td.Recorder(path, framework="numpy", dims=DIMS) as rec:
        rec.input("input", x)
        h1 = x @ w1.T + b1
        rec.forward("0", h1)
        a1 = np.tanh(h1)
        rec.forward("1", a1)
        out = a1 @ w2.T + (0 if bias_bug else b2)
        rec.forward("2", out)
        rec.forward("<root>", out)
        p = np.exp(out - out.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        rec.loss(-np.log(p[np.arange(3), y]).mean())
        dout = p.copy()
        dout[np.arange(3), y] -= 1
        dout /= 3
        rec.backward("<root>", dout)
        rec.backward("2", dout)
        da1 = dout @ w2
        rec.backward("1", da1)
        dh1 = da1 * (1 - a1 ** 2)
        rec.backward("0", dh1)
        rec.param("0.weight", w1, grad=dh1.T @ x)
        rec.param("0.bias", b1, grad=dh1.sum(0))
        rec.param("2.weight", w2, grad=dout.T @ a1)
        rec.param("2.bias", b2, grad=dout.sum(0))


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract")
    model = reference_model()
    x = np.random.default_rng(1).standard_normal((3, 7))
    y = np.array([0, 4, 2])
    tdt.record(model, torch.tensor(x, dtype=torch.float32), folder / "ref.h5",
               loss_fn=lambda out: F.cross_entropy(out, torch.tensor(y)), dims=DIMS)
    numpy_port(folder / "mine.h5", model, x, y)
    numpy_port(folder / "bug.h5", model, x, y, bias_bug=True)
    return folder


def test_reader_lists_without_reading_and_reads_bit_exact(traces):
    trace = td.open(traces / "ref.h5")
    kinds = {r.kind for r in trace}
    assert kinds == {"input", "forward", "backward", "param", "param_grad", "loss"}
    first = trace.get("0")
    assert (first.shape, first.dtype) == ((3, 11), "float32") and "mean" in first.stats
    assert first.read().dtype == np.float32


def test_correct_port_reports_nothing(traces):
    report = td.diff(traces / "mine.h5", traces / "ref.h5")
    assert report.ok
    assert report.first_divergence.forward is None and report.first_divergence.backward is None


def test_planted_bug_is_named_and_reported_in_every_format(traces, tmp_path):
    report = td.diff(traces / "bug.h5", traces / "ref.h5")
    assert not report.ok
    assert report.first_divergence.forward.b_name == "2"
    report.to_json(tmp_path / "r.json")
    report.to_html(tmp_path / "r.html")
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["schema"] == "tracediff.diff/1" and payload["ok"] is False
    assert (payload["a"]["framework"], payload["b"]["framework"]) == ("numpy", "torch")
    pair = payload["first_divergence"]["forward"]
    assert {"a_name", "b_name", "kind", "status", "shape_a", "shape_b", "stats", "tolerance",
            "hint"} <= set(pair)
    assert {"max_abs", "max_rel", "mean_abs", "rmse", "rel_l2", "cosine", "mismatch_fraction",
            "argmax_abs", "nan_a", "nan_b", "inf_a", "inf_b"} <= set(pair["stats"])
    assert {"rtol", "atol"} <= set(pair["tolerance"])
    assert set(payload["unmatched"]) == {"a", "b"}
    assert "<html" in (tmp_path / "r.html").read_text().lower()


def test_check_and_gradcheck(traces):
    report = td.check(traces / "ref.h5")
    assert isinstance(report.ok, bool)
    assert {c["id"] for c in report.to_dict()["checks"]} >= {
        "nonfinite", "gradient_flow", "grad_weight_ratio", "activation_spread", "initial_loss",
        "frozen_params", "train_mode", "input_data"}
    x, w = np.random.default_rng(0).standard_normal((3, 7)), np.random.default_rng(1).standard_normal((7, 5))

    def f(arrays):
        out = arrays["x"] @ arrays["W"]
        return 0.5 * float((out ** 2).sum()), {"x": out @ arrays["W"].T, "W": arrays["x"].T @ out}

    result = td.gradcheck(f, {"x": x, "W": w})
    assert result.ok and [r["name"] for r in result.results] == ["x", "W"]
    assert set(result.results[0]) >= {"name", "max_rel_error", "worst_index", "status"}


@pytest.mark.parametrize("argv, status", [
    (["show", "{t}/ref.h5"], 0),
    (["diff", "{t}/mine.h5", "{t}/ref.h5"], 0),
    (["diff", "{t}/bug.h5", "{t}/ref.h5"], 1),
    (["diff", "{t}/bug.h5", "{t}/missing.h5"], 2),
    (["diff", "{t}/mine.h5", "{t}/ref.h5", "--align", "sideways"], 2),
    (["check", "{t}/missing.h5"], 2),
])
def test_cli_exit_status(traces, argv, status, capsys):
    assert main([a.format(t=traces) for a in argv]) == status
    if status == 2:
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
