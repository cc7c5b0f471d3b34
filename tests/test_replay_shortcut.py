"""Replay takes a layer's local result from the recording where its inputs and output are
bit-identical to the reference's (it would compute the same again), says so, and still runs
every layer after the first difference; with a loss, the dL/d of a record whose consumers are
all unchanged too, so a clean replay runs no VJP in any framework and judges what a replay
with the shortcut off judges."""
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
    # dL/d of consumed records too: each consumer is unchanged, with the reference's dL/d(output)
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
    # the bug's error reaches every dL/d: each is replayed by its consumer's VJP, and right
    backward = {(p.a_name, p.a_call): p.local for p in report.pairs if p.kind == "backward"
                and p.local is not None}
    assert set(backward) == {(p.a_name, p.a_call) for p in clean.pairs if p.kind == "backward"
                             and p.local is not None} and backward
    assert all(local["status"] == "ok" and local.get("from") is None
               for local in backward.values())
    grads = {p.a_name: p.local for p in report.pairs if p.kind == "param_grad"}
    # the first Linear's gradient flows back through the bug: it is run, and right
    assert grads["0.weight"].get("from") is None and grads["0.weight"]["status"] == "ok"


class Fan(torch.nn.Module):
    """A record two layers consume (their dL/d shares sum), and a root whose own op (the
    ``+``) sends dL/d to both branches: its VJP runs even on a clean replay."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.act = torch.nn.Linear(7, 11), torch.nn.Tanh()
        self.a, self.b = torch.nn.Linear(11, 5), torch.nn.Linear(11, 5)

    def forward(self, x):
        h = self.act(self.lin(x))
        return self.a(h) + self.b(h)


def vjp_runs(monkeypatch):
    """Counts the torch replay's VJP passes (one per replay with a loss that runs any)."""
    from tracediff.adapters.torch import replay_vjp
    runs = []
    real = replay_vjp.Backward.run

    def counted(self, *args, **kwargs):
        runs.append(len(self.calls))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(replay_vjp.Backward, "run", counted)
    return runs


def judged_backward(report):
    return {(p.a_name, p.a_call): (p.local["status"], p.local.get("by"))
            for p in report.pairs if p.kind == "backward" and p.local is not None}


def test_a_clean_self_replay_with_a_loss_takes_every_gradient_from_the_recording(
        tmp_path, monkeypatch):
    from tracediff.replays import shortcut
    model = mlp()
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    tdt.record(model, x, tmp_path / "ref.h5", loss_fn=loss_fn)
    runs = vjp_runs(monkeypatch)
    clean = td.replay(model, tmp_path / "ref.h5", loss_fn=loss_fn)
    assert runs == []       # no layer, forward or backward, ran again
    judged = judged_backward(clean)
    # dL/d of every Linear's and Tanh's output but the last is judged by the layer after it
    assert judged == {(str(i), 0): ("ok", str(i + 1)) for i in range(4)}
    assert all(p.local.get("from") == "recorded" for p in clean.pairs
               if p.kind == "backward" and p.local is not None)

    monkeypatch.setattr(shortcut, "ENABLED", False)
    run = td.replay(model, tmp_path / "ref.h5", loss_fn=loss_fn)
    assert len(runs) == 1 and run.root_causes == []
    assert judged_backward(run) == judged
    assert not any(p.local and p.local.get("from") for p in run.pairs)


def test_a_fan_out_is_judged_as_the_vjp_path_judges_it_and_a_container_op_still_runs(
        tmp_path, monkeypatch):
    from tracediff.replays import shortcut
    model = Fan()
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    tdt.record(model, x, tmp_path / "ref.h5", loss_fn=loss_fn)
    runs = vjp_runs(monkeypatch)
    clean = td.replay(model, tmp_path / "ref.h5", loss_fn=loss_fn)
    monkeypatch.setattr(shortcut, "ENABLED", False)
    run = td.replay(model, tmp_path / "ref.h5", loss_fn=loss_fn)
    assert len(runs) == 2       # the root's ``+`` is no record: only its VJP finds dL/d(a), dL/d(b)
    assert clean.root_causes == run.root_causes == []
    assert judged_backward(clean) == judged_backward(run) == {
        ("lin", 0): ("ok", "act"), ("act", 0): ("ok", ["a", "b"]),
        ("a", 0): ("ok", "<root>"), ("b", 0): ("ok", "<root>")}
    recorded = {(p.a_name, p.a_call) for p in clean.pairs
                if p.kind == "backward" and p.local and p.local.get("from") == "recorded"}
    assert recorded == {("lin", 0), ("act", 0)}


def keras_fan_out(tmp_path):
    """A Keras model whose ``fc`` feeds both ``act`` and ``add``, against its own trace."""
    keras = pytest.importorskip("keras")
    import numpy as np
    import tensorflow as tf
    from tracediff.adapters import tensorflow as tdtf
    from tracediff.adapters.tensorflow import replay as entry
    x = keras.Input((5,))
    h = keras.layers.Dense(6, name="fc")(x)
    s = keras.layers.Add(name="add")([keras.layers.Activation("tanh", name="act")(h), h])
    model = keras.Model(x, keras.layers.Dense(3, name="head")(s))

    def loss(out):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            np.array([0, 1, 2]), out, from_logits=True))

    features = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    tdtf.record(model, features, tmp_path / "ref.h5", loss_fn=loss)
    return model, {"loss_fn": loss}, entry, "_differentiate"


def flax_mlp(tmp_path):
    """A Flax MLP of modules only (no plain code between them), against its own trace."""
    pytest.importorskip("flax")
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tracediff.adapters import jax as tdj
    from tracediff.adapters.jax import replay_vjp as entry

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, name="fc3")(nn.Dense(6, name="fc2")(nn.Dense(6, name="fc1")(x)))

    def loss(out):
        return -jnp.take_along_axis(jax.nn.log_softmax(out), jnp.array([[0], [1], [2]]),
                                    axis=-1).mean()

    model, x = MLP(), np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    tdj.record(model, x, tmp_path / "ref.h5", loss_fn=loss, params=variables)
    return model.bind(variables), {"loss_fn": loss}, entry, "local_backward"


def onnx_export(tmp_path):
    """An exported torch MLP recorded with the ONNX adapter's cross-entropy loss."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    from tracediff.adapters import onnx as tdo
    from tracediff.adapters.onnx import replay as entry
    from tracediff.adapters.onnx.replay import graph_inputs
    from test_replay_onnx import export
    model, x = mlp(), torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    path = str(export(model, x, tmp_path / "mlp.onnx"))
    labels = np.array([0, 3, 1])
    tdo.record(path, {graph_inputs(path)[0]: x.numpy()}, tmp_path / "ref.h5",
               loss="cross_entropy", target=labels)
    return path, {"loss_fn": "cross_entropy", "target": labels}, entry, "local_backward"


@pytest.mark.parametrize("candidate", [keras_fan_out, flax_mlp, onnx_export])
def test_a_clean_self_replay_with_a_loss_runs_no_vjp_in_any_framework(
        candidate, tmp_path, monkeypatch):
    from tracediff.replays import shortcut
    model, options, entry, name = candidate(tmp_path)
    runs, real = [], getattr(entry, name)
    monkeypatch.setattr(entry, name, lambda *a, **k: runs.append(1) or real(*a, **k))
    clean = td.replay(model, tmp_path / "ref.h5", **options)
    assert runs == [] and clean.root_causes == []
    monkeypatch.setattr(shortcut, "ENABLED", False)
    run = td.replay(model, tmp_path / "ref.h5", **options)
    assert runs and run.root_causes == []
    assert judged_backward(clean) == judged_backward(run) and judged_backward(clean)


class Staged(torch.nn.Module):
    """Stages as ``nn.Sequential`` (a ResNet's shape): each stage returns its last layer's
    output, one tensor under two names, and the next stage or the head consumes it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.Tanh())
        self.stages = torch.nn.Sequential(
            torch.nn.Sequential(torch.nn.Linear(11, 13), torch.nn.Tanh()),
            torch.nn.Sequential(torch.nn.Linear(13, 13), torch.nn.Tanh()))
        self.head = torch.nn.Linear(13, 5)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def test_stages_returning_their_last_layers_output_are_taken_from_the_recording(
        tmp_path, monkeypatch):
    """A record and the stage that returns it are one tensor: their dL/d is one sum over
    everything that consumed either name. Clean, no VJP runs and both names take the
    recorded dL/d; with every layer run, the same pairs are judged, by the same layers."""
    from tracediff.replays import shortcut
    model = Staged()
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    tdt.record(model, x, tmp_path / "ref.h5", loss_fn=loss_fn)
    runs = vjp_runs(monkeypatch)
    clean = td.replay(model, tmp_path / "ref.h5", loss_fn=loss_fn)
    assert runs == [] and clean.root_causes == []
    judged = judged_backward(clean)
    assert judged[("stem.1", 0)] == judged[("stem", 0)] == ("ok", "stages.0.0")
    assert judged[("stages.1.1", 0)] == judged[("stages", 0)] == ("ok", "head")
    monkeypatch.setattr(shortcut, "ENABLED", False)
    run = td.replay(model, tmp_path / "ref.h5", loss_fn=loss_fn)
    assert len(runs) == 1 and run.root_causes == []
    assert judged_backward(run) == judged

    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.stages[1][0].bias.add_(1e-3)
    monkeypatch.setattr(shortcut, "ENABLED", True)
    report = td.replay(bad, tmp_path / "ref.h5", loss_fn=loss_fn)
    assert [(c["kind"], c["b_name"]) for c in report.root_causes] == [("forward", "stages.1.0")]
