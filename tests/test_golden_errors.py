"""golden_trace.check on bad input and on golden traces that cannot be diffed: one clear line,
or a failure that says what changed. GoldenTrace is driven directly (no pytest sub-session)."""
import subprocess
import sys

import numpy as np
import pytest

import tracediff as td
from tracediff.errors import TraceDiffError
from tracediff.golden import GoldenTrace, Ledger, Mode

X = np.arange(6.0).reshape(2, 3)


def two_layers(rec, x, second="fc2"):
    h = x * 2.0
    rec.forward("fc1", h)
    rec.forward(second, h + 1.0)


def renamed(rec, x):
    two_layers(rec, x, second="fc2b")


def checker(tmp_path, mode=Mode.CHECK):
    messages = []
    return GoldenTrace(("test_mod", "test_case"), Ledger(str(tmp_path)), mode,
                       fail=messages.append), messages


@pytest.mark.parametrize("model, text", [
    (42, "golden_trace.check: cannot record a int; give a torch.nn.Module, a Keras model, an "
         ".onnx path or onnx.ModelProto, or a function fn(rec, inputs)"),
    ("model.pt", "golden_trace.check: model path 'model.pt' is not an .onnx file; give an .onnx "
                 "path, an onnx.ModelProto, a torch.nn.Module, a Keras model or a NumPy function"),
])
def test_models_no_adapter_records_are_refused(tmp_path, model, text):
    golden, _ = checker(tmp_path)
    with pytest.raises(TraceDiffError) as info:
        golden.check(model, X)
    assert str(info.value) == text


def test_loss_fn_that_does_not_fit_the_model_is_refused(tmp_path):
    golden, _ = checker(tmp_path)
    with pytest.raises(TraceDiffError, match=r"^golden_trace.check: loss_fn does not apply to a "
                       r"NumPy function; record the loss and gradients inside fn\(rec, inputs\)"):
        golden.check(two_layers, X, loss_fn=lambda out: out.sum())
    with pytest.raises(TraceDiffError, match=r"^golden_trace.check: an ONNX model takes loss_fn as "
                       r"a loss name \('sum'\) or a pair \(name, target\) with name one of "
                       r"cross_entropy, mse, sum, not a function$"):
        golden.check("model.onnx", {"x": X}, loss_fn=lambda out: out.sum())


def test_names_must_be_file_safe_and_unique_within_a_test(tmp_path):
    golden, messages = checker(tmp_path)
    with pytest.raises(TraceDiffError, match=r"^golden_trace.check: name='a/b' must be a non-empty "
                       r"string of letters, digits and _ \. \+ = , \(it becomes part of a file name\)$"):
        golden.check(two_layers, X, name="a/b")
    golden.check(two_layers, X, name="first")
    assert golden.path("first") == str(tmp_path / "test_mod" / "test_case-first.h5")
    with pytest.raises(TraceDiffError, match=r"^golden_trace.check called twice with name='first' "
                       r"in one test .*; give each check its own name=$"):
        golden.check(two_layers, X, name="first")


def test_renamed_layer_fails_listing_the_records_on_each_side(tmp_path):
    checker(tmp_path)[0].check(two_layers, X)
    golden, messages = checker(tmp_path)
    golden.check(renamed, X)
    (text,) = messages
    lines = text.splitlines()
    assert lines[0] == f"golden trace {tmp_path / 'test_mod' / 'test_case.h5'} does not match " \
                       "this run (the records differ)"
    assert "records only in this run: forward fc2b" in lines
    assert "records only in the golden trace: forward fc2" in lines


def test_unreadable_golden_trace_fails_and_regen_rewrites_it(tmp_path):
    path = tmp_path / "test_mod" / "test_case.h5"
    path.parent.mkdir()
    path.write_bytes(b"not a trace")
    golden, messages = checker(tmp_path)
    golden.check(two_layers, X)
    (text,) = messages
    assert text.startswith(f"golden trace {path} cannot be compared with this run: ")
    assert text.endswith("if the change is intended, rewrite it with pytest --tracediff-regen")
    assert path.read_bytes() == b"not a trace"

    regen, messages = checker(tmp_path, Mode.REGEN)
    regen.check(two_layers, X)
    assert messages[0].endswith(f"golden trace rewritten from this run (--tracediff-regen): "
                                f"review and commit {path}")
    again, messages = checker(tmp_path)
    assert again.check(two_layers, X).ok and messages == []


def test_importing_the_plugin_loads_neither_numpy_nor_h5py():
    code = ("import sys, tracediff.pytest_plugin; "
            "print(sorted(m for m in ('numpy', 'h5py', 'tracediff.golden') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_torch_gradients_from_earlier_runs_neither_leak_in_nor_get_lost(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.from_numpy(X).float()

    def loss(out):
        return (out ** 2).sum()

    loss(model(x)).backward()                    # a training loop left gradients behind
    stale = [p.grad.clone() for p in model.parameters()]
    for _ in range(2):                           # write, then match: torch would add into .grad
        golden, messages = checker(tmp_path)
        golden.check(model, x, loss_fn=loss)
    assert len(messages) == 0, messages
    with td.open(golden.path()) as trace:
        recorded = trace.get("0.weight", kind="param_grad").read()
    np.testing.assert_array_equal(recorded, stale[0].numpy())      # this run's gradient only
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), stale))
