"""Replay takes a layer's local result from the recording where its inputs and output are
bit-identical to the reference's (it would compute the same again), says so, and still runs
every layer after the first difference."""
import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

LABELS = torch.tensor([0, 3, 1])


def loss_fn(out):
    return F.cross_entropy(out, LABELS)


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.Tanh(), torch.nn.Linear(11, 13),
                               torch.nn.Tanh(), torch.nn.Linear(13, 5))


def test_an_unchanged_prefix_is_taken_from_the_recording_and_the_rest_is_run(tmp_path):
    model = mlp()
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    tdt.record(model, x, tmp_path / "ref.h5", loss_fn=loss_fn)
    clean = td.replay(model, tmp_path / "ref.h5", loss_fn=loss_fn)
    taken = [p for p in clean.pairs if p.kind in ("forward", "param_grad")]
    assert clean.root_causes == [] and taken
    assert all(p.local["status"] == "ok" and p.local.get("from") == "recorded"
               and p.local["rel_l2"] == 0.0 for p in taken)
    # dL/d of inputs, where the candidate's replay computes them, is run (shortcut.py)
    assert all(p.local["status"] == "ok" for p in clean.pairs if p.local is not None)
    assert clean.replay_summary()["skipped"] == 0

    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[2].bias.add_(1e-3)
    report = td.replay(bad, tmp_path / "ref.h5", loss_fn=loss_fn)
    forward = {p.a_name: p.local for p in report.pairs if p.kind == "forward"}
    assert {name: local.get("from") for name, local in forward.items()} == {
        "0": "recorded", "1": "recorded", "2": None, "3": None, "4": None, "<root>": None}
    assert [(c["kind"], c["b_name"]) for c in report.root_causes] == [("forward", "2")]
    grads = {p.a_name: p.local for p in report.pairs if p.kind == "param_grad"}
    # the first Linear's gradient flows back through the bug: it is run, and right
    assert grads["0.weight"].get("from") is None and grads["0.weight"]["status"] == "ok"
