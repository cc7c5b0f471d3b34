"""THE end-to-end check: every planted bug is named by ``td.diff`` at the right record, with the
reference's names and with a port that renames every layer (structural alignment), and a
correct port of each net is reported as matching, with default tolerances.

a = the float64 NumPy port, b = the float32 PyTorch reference (the correct float64 NumPy port
when torch is missing).
"""
import importlib.util

import pytest

import tracediff as td
from tracediff.demo import bugs, numpy_nets

HAS_TORCH = importlib.util.find_spec("torch") is not None
NAMINGS = ("torch", "port")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One reference trace per net, and the float64 state dict the ports start from."""
    folder = tmp_path_factory.mktemp("references")
    out = {}
    for net in bugs.NETS:
        x, y = numpy_nets.make_inputs(net)
        path = folder / f"{net}.h5"
        if HAS_TORCH:
            from tracediff.demo import torch_nets
            model = torch_nets.build(net)
            torch_nets.record(model, net, x, y, path)
            state = torch_nets.state_dict_float64(model)
        else:
            state = numpy_nets.init_params(net)
            numpy_nets.build(net, state).record_to(path, x, y)
        out[net] = (path, state, x, y)
    return out


def _diff(references, tmp_path, net, bug_ids=(), naming="torch"):
    ref_path, state, x, y = references[net]
    port_path = tmp_path / f"{net}-{naming}.h5"
    port = numpy_nets.build(net, state, bugs=bug_ids, naming=naming)
    port.record_to(port_path, x, y)
    return td.diff(port_path, ref_path), port


def _describe(report):
    bad = [(p.kind, p.a_name, p.b_name, p.status) for p in report.pairs if p.status != "ok"]
    return f"diverged pairs: {bad[:8]}"


@pytest.mark.parametrize("naming", NAMINGS)
@pytest.mark.parametrize("net", bugs.NETS)
def test_correct_port_reports_nothing(references, tmp_path, net, naming):
    report, _ = _diff(references, tmp_path, net, naming=naming)
    assert report.ok, _describe(report)
    assert report.first_divergence.forward is None
    assert report.first_divergence.backward is None
    data = report.to_dict()
    assert data["unmatched"] == {"a": [], "b": []}
    kinds = {p["kind"] for p in data["pairs"]}
    assert {"forward", "backward", "param", "param_grad"} <= kinds
    assert all(p["status"] == "ok" for p in data["pairs"])


@pytest.mark.parametrize("naming", NAMINGS)
@pytest.mark.parametrize("bug", bugs.CATALOGUE, ids=lambda b: b.id)
def test_planted_bug_is_named_at_its_layer(references, tmp_path, bug, naming):
    report, port = _diff(references, tmp_path, bug.net, (bug.id,), naming)
    assert not report.ok
    first = report.first_divergence
    if bug.where == "forward":
        pair = first.forward
        assert pair is not None, _describe(report)
        assert (pair.b_name, pair.a_name) == (bug.layer, port.record_name(bug.layer)), _describe(report)
        assert pair.kind == "forward"
    elif bug.where == "backward":
        assert first.forward is None, f"forward named {first.forward.b_name}; {_describe(report)}"
        pair = first.backward
        assert pair is not None, _describe(report)
        assert (pair.b_name, pair.a_name) == (bug.layer, port.record_name(bug.layer)), _describe(report)
        assert pair.kind == "backward"
    else:
        assert first.forward is None and first.backward is None, _describe(report)
        bad = [p for p in report.pairs if p.status != "ok"]
        assert [(p.kind, p.b_name, p.a_name) for p in bad] == [
            ("param_grad", bug.layer, port.record_param_name(bug.layer))], _describe(report)


@pytest.mark.parametrize("bug_id, status", [
    ("transposed_output", "layout"),       # [hidden, batch] vs [batch, hidden]: same values
    ("wrong_flatten_order", "layout"),     # NHWC flatten of the same feature map
    ("weight_grad_transposed", "layout"),  # dW stored [in, out]
])
def test_layout_bugs_are_reported_as_layout(references, tmp_path, bug_id, status):
    bug = bugs.get(bug_id)
    report, _ = _diff(references, tmp_path, bug.net, (bug.id,))
    pair = next(p for p in report.pairs if p.b_name == bug.layer
                and p.kind == ("param_grad" if bug.where == "param_grad" else "forward"))
    assert pair.status == status, (pair.status, pair.hint)
    assert pair.hint


@pytest.mark.parametrize("bug_id, words", [
    ("missing_attention_scaling", ("scale",)),     # scores sqrt(11) times the reference's
    ("weight_grad_double_mean", ("scale",)),       # dW a third of the reference's
    ("square_weight_grad_transposed", ("transpos",)),
    ("wrong_padding", ("shift", "rows", "row", "column")),
])
def test_hint_says_what_kind_of_mistake(references, tmp_path, bug_id, words):
    bug = bugs.get(bug_id)
    report, _ = _diff(references, tmp_path, bug.net, (bug.id,))
    kind = "param_grad" if bug.where == "param_grad" else "forward"
    pair = next(p for p in report.pairs if p.b_name == bug.layer and p.kind == kind)
    assert pair.hint and any(w in pair.hint.lower() for w in words), pair.hint


def test_small_bugs_are_not_float_precision_noise(references, tmp_path):
    # a LayerNorm eps of 1e-3 and a tanh GELU are ~1e-4 relative: well above float32 rounding,
    # far below a wrong layer; the engine must name them without calling them precision noise
    for bug_id in ("layernorm_eps", "gelu_tanh"):
        report, _ = _diff(references, tmp_path, "transformer", (bug_id,))
        pair = report.first_divergence.forward
        assert pair.status == "diverged"
        assert pair.stats["rel_l2"] < 1e-2
        assert not (pair.hint or "").lower().startswith("float precision")
