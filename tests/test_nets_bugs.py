"""Each planted bug changes exactly what the catalogue says, checked without the diff engine:
a buggy NumPy port against the correct one (both float64), record by record."""
import numpy as np
import pytest

import tracediff as td
from tracediff.demo import bugs, numpy_nets


def _differs(a, b):
    x, y = a.read(), b.read()
    return x.shape != y.shape or not np.allclose(x, y, rtol=1e-9, atol=1e-12)


def _record_pair(tmp_path, bug):
    state = numpy_nets.init_params(bug.net)
    x, y = numpy_nets.make_inputs(bug.net)
    numpy_nets.build(bug.net, state, bugs={bug.id}).record_to(tmp_path / "bug.h5", x, y)
    numpy_nets.build(bug.net, state).record_to(tmp_path / "ok.h5", x, y)
    return td.open(tmp_path / "bug.h5"), td.open(tmp_path / "ok.h5")


def _diverging(buggy, correct, kind):
    return [b.name for a, b in zip(buggy.records(kind), correct.records(kind)) if _differs(a, b)]


@pytest.mark.parametrize("bug", bugs.CATALOGUE, ids=lambda b: b.id)
def test_bug_first_shows_at_its_catalogued_record(tmp_path, bug):
    buggy, correct = _record_pair(tmp_path, bug)
    assert [r.key for r in buggy] == [r.key for r in correct]
    forward = _diverging(buggy, correct, "forward")
    backward = _diverging(buggy, correct, "backward")
    param_grads = _diverging(buggy, correct, "param_grad")
    if bug.where == "forward":
        assert forward[0] == bug.layer
    elif bug.where == "backward":
        assert forward == []
        assert backward[0] == bug.layer  # backward records run from the loss towards the input
    else:
        assert forward == [] and backward == []
        assert param_grads == [bug.layer]
    assert _diverging(buggy, correct, "param") == []


def test_shape_bug_transposes_the_recorded_hidden_layer(tmp_path):
    buggy, correct = _record_pair(tmp_path, bugs.get("transposed_output"))
    assert buggy.get("fc1").shape == (11, 3) and correct.get("fc1").shape == (3, 11)
    np.testing.assert_array_equal(buggy.get("act1").read(), correct.get("act1").read().T)
    np.testing.assert_array_equal(buggy.get("fc3").read(), correct.get("fc3").read())


def test_catalogue_covers_every_kind_of_bug_the_issue_names():
    ids = set(bugs.BY_ID)
    assert {"missing_bias", "wrong_activation", "wrong_padding", "flipped_kernel",
            "wrong_flatten_order", "layernorm_eps", "gelu_tanh", "missing_attention_scaling",
            "wrong_activation_derivative", "skipped_residual_gradient",
            "transposed_output"} <= ids
    assert {b.where for b in bugs.CATALOGUE} == {"forward", "backward", "param_grad"}
    assert {b.net for b in bugs.CATALOGUE} == set(bugs.NETS)


def test_unknown_or_foreign_bug_is_refused_in_one_line():
    with pytest.raises(td.TraceDiffError, match=r"^unknown planted bug 'nope': choose one of missing_bias, "):
        numpy_nets.build("mlp", numpy_nets.init_params("mlp"), bugs={"nope"})
    with pytest.raises(td.TraceDiffError, match=r"^planted bug 'gelu_tanh' belongs to the transformer net, not mlp"):
        numpy_nets.build("mlp", numpy_nets.init_params("mlp"), bugs={"gelu_tanh"})


def test_port_naming_renames_layers_and_parameters(tmp_path):
    state = numpy_nets.init_params("mlp")
    x, y = numpy_nets.make_inputs("mlp")
    numpy_nets.build("mlp", state, naming="port").record_to(tmp_path / "p.h5", x, y)
    trace = td.open(tmp_path / "p.h5")
    assert [r.name for r in trace.records("forward")] == ["dense0", "relu0", "dense1", "relu1", "dense2"]
    assert [r.name for r in trace.records("param")][:2] == ["dense0.W", "dense0.b"]
    assert trace.get("dense0.W", kind="param").meta == {"role": "weight", "layout": "OI"}
    assert trace.get("dense0").meta == {                           # the port's own op names
        "op_type": "Dense", "inputs": [{"kind": "input", "name": "input", "call": 0}]}  # issue 19
    assert trace.get("relu0", kind="backward").meta == {"op_type": "relu"}
