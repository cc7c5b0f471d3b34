"""Filters, stats-only traces, bit-exact half precision, op-level names, and ``recording`` for a
user's own training loop."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.format import tensor_hash  # noqa: E402
from tracediff.stats import summarize  # noqa: E402


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 11))


def names(path, kind=None):
    return [r.name for r in td.open(path).records(kind)]


def test_include_exclude_and_kinds(tmp_path):
    x = torch.randn(3, 5)
    loss_fn = lambda out: out.sum()  # noqa: E731
    tdt.record(mlp(), x, tmp_path / "inc.h5", loss_fn=loss_fn, include=["0*", "2"])
    assert names(tmp_path / "inc.h5") == [
        "0", "2", "2", "0", "0.weight", "0.weight", "0.bias", "0.bias"]
    tdt.record(mlp(), x, tmp_path / "exc.h5", loss_fn=loss_fn, exclude="*.bias")
    assert not any(n.endswith(".bias") for n in names(tmp_path / "exc.h5"))
    assert "2.weight" in names(tmp_path / "exc.h5", "param_grad")
    tdt.record(mlp(), x, tmp_path / "kinds.h5", loss_fn=loss_fn, kinds=("backward", "loss"))
    trace = td.open(tmp_path / "kinds.h5")
    assert [(r.kind, r.name) for r in trace] == [
        ("loss", "loss"), ("backward", "2"), ("backward", "<root>"), ("backward", "1"), ("backward", "0")]


def test_include_matches_the_module_part_of_structured_names(tmp_path):
    lstm = nn.LSTM(5, 7, batch_first=True)
    tdt.record(lstm, torch.randn(3, 2, 5), tmp_path / "t.h5", kinds=["forward"], include="<root>")
    assert names(tmp_path / "t.h5") == ["<root>:0", "<root>:1:0", "<root>:1:1"]


def test_stats_only_keeps_statistics_sample_and_hash(tmp_path):
    x = torch.randn(3, 5)
    full, lite = tmp_path / "full.h5", tmp_path / "lite.h5"
    tdt.record(mlp(), x, full, loss_fn=lambda o: o.sum())
    tdt.record(mlp(), x, lite, loss_fn=lambda o: o.sum(), values=False)
    a, b = td.open(full), td.open(lite)
    assert [r.key for r in a] == [r.key for r in b]
    for ra, rb in zip(a, b):
        assert ra.stored and not rb.stored
        assert rb.stats == summarize(ra.read())
        idx, sample = rb.sample()
        np.testing.assert_array_equal(sample, ra.read().reshape(-1)[idx])
        assert rb.hash == ra.hash == tensor_hash(ra.read())
    with pytest.raises(td.TraceDiffError, match="holds statistics only"):
        b.get("2").read()


@pytest.mark.parametrize("dtype,name,bits", [
    (torch.bfloat16, "bfloat16", torch.int16), (torch.float16, "float16", torch.int16)])
def test_half_precision_round_trip_is_bit_exact(tmp_path, dtype, name, bits):
    model = mlp().to(dtype)
    x = torch.randn(3, 5).to(dtype)
    seen = {}
    model[0].register_forward_hook(lambda m, a, out: seen.setdefault("fc0", out))
    out = tdt.record(model, x, tmp_path / "t.h5", loss_fn=lambda o: o.float().square().sum())
    trace = td.open(tmp_path / "t.h5")
    for record, tensor in [(trace.get("<root>"), out), (trace.get("0"), seen["fc0"]),
                           (trace.get("0.weight", kind="param_grad"), model[0].weight.grad),
                           (trace.get("input", kind="input"), x)]:
        assert record.dtype == name
        assert record.meta["framework_dtype"] == str(dtype)
        array = record.read()
        assert array.dtype.name == name
        np.testing.assert_array_equal(array.view(np.int16), tensor.detach().view(bits).numpy())
    assert trace.get("0", kind="backward").dtype == name


class Encoder(nn.Module):
    def __init__(self, extra_op=False):
        super().__init__()
        self.extra_op = extra_op
        self.a = nn.Linear(5, 7)
        self.b = Block()

    def forward(self, x):
        h = self.a(x)
        if self.extra_op:
            h = h * 2          # one op inserted in module "" (the root)
        return self.b(h) + h


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(7, 7))

    def forward(self, h):
        return torch.relu(h @ self.w) @ self.w


def test_op_level_names_are_per_module_and_stable(tmp_path):
    torch.manual_seed(0)
    base, changed = tmp_path / "base.h5", tmp_path / "changed.h5"
    tdt.record(Encoder(), torch.randn(3, 5), base, level="op", loss_fn=lambda o: o.sum())
    tdt.record(Encoder(extra_op=True), torch.randn(3, 5), changed, level="op", loss_fn=lambda o: o.sum())
    ops = [n for n in names(base, "forward") if "/" in n]
    assert ops == ["a/linear#0", "b/matmul#0", "b/relu#0", "b/matmul#1", "<root>/add#0"]
    trace = td.open(base)
    op = trace.get("b/matmul#1")
    assert op.meta["op_type"] == "matmul" and op.meta["module"] == "b"
    assert trace.get("b/matmul#1", kind="backward").shape == (3, 7)
    # module-level records are kept alongside the ops
    assert {"a", "b", "<root>"} <= set(names(base, "forward"))
    changed_ops = [n for n in names(changed, "forward") if "/" in n]
    assert changed_ops == ["a/linear#0", "<root>/mul#0", "b/matmul#0", "b/relu#0", "b/matmul#1",
                           "<root>/add#0"]


def test_op_level_counts_calls_of_a_reused_module(tmp_path):
    block = Block()
    model = nn.Sequential(block, block)
    tdt.record(model, torch.randn(3, 7), tmp_path / "t.h5", level="op")
    got = [(r.name, r.call) for r in td.open(tmp_path / "t.h5").records("forward") if "/" in r.name]
    assert got == [("0/matmul#0", 0), ("0/relu#0", 0), ("0/matmul#1", 0),
                   ("0/matmul#0", 1), ("0/relu#0", 1), ("0/matmul#1", 1)]


def train(model, steps, session=None, zero_grad_first=True):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    used = []
    for step in range(steps):
        x = torch.randn(3, 5, generator=torch.Generator().manual_seed(step))
        if zero_grad_first:
            opt.zero_grad()
        used.append({n: p.detach().clone() for n, p in model.named_parameters()})
        loss = model(x).square().mean()
        if session is not None:
            session.loss(loss)
        loss.backward()
        used[-1].update({n + ".grad": p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        if not zero_grad_first:
            opt.zero_grad()
    return used


@pytest.mark.parametrize("zero_grad_first", [True, False])
def test_recording_every_n_steps(tmp_path, zero_grad_first):
    model = mlp()
    path = tmp_path / "train.h5"
    with tdt.recording(model, path, every=2) as session:
        used = train(model, 5, session, zero_grad_first)
    assert _hooks_left(model) == []
    trace = td.open(path)
    assert trace.complete and trace.steps == [0, 2, 4]
    assert trace.attrs["values"] is False or trace.attrs["values"] == 0
    for step in (0, 2, 4):
        records = trace.records(step=step)
        kinds = {r.kind for r in records}
        assert kinds == {"input", "forward", "loss", "backward", "param", "param_grad"}
        assert [r.name for r in trace.records("forward", step=step)] == ["0", "1", "2", "<root>"]
        for name in ("0.weight", "2.bias"):
            # the parameter as the step used it, and that step's gradient
            value = trace.get(name, kind="param", step=step)
            assert value.stats == summarize(used[step][name].numpy())
            grad = trace.get(name, kind="param_grad", step=step)
            assert grad.stats == summarize(used[step][name + ".grad"].numpy())
        loss = trace.get("loss", kind="loss", step=step)
        assert not loss.stored
    assert 1 not in trace.steps and 3 not in trace.steps


def test_recording_full_values_and_model_returned_loss(tmp_path):
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 7)

        def forward(self, x):
            out = self.fc(x)
            return {"loss": out.square().mean(), "logits": out}

    model = WithLoss()
    with tdt.recording(model, tmp_path / "t.h5", every=1, values=True, kinds=["loss", "forward"]) as session:
        for _ in range(2):
            out = model(torch.randn(3, 5))
            session.loss(out["loss"])      # already recorded from the output: one loss per step
            out["loss"].backward()
    trace = td.open(tmp_path / "t.h5")
    losses = trace.records("loss")
    assert [r.step for r in losses] == [0, 1]
    np.testing.assert_array_equal(losses[1].read(), out["loss"].detach().numpy())
    assert [r.name for r in trace.records("forward", step=1)] == ["fc", "<root>:loss", "<root>:logits"]


def test_recording_op_level_and_no_grad_steps(tmp_path):
    model = mlp()
    with tdt.recording(model, tmp_path / "t.h5", level="op") as session:
        with torch.no_grad():
            model(torch.randn(3, 5))
        model(torch.randn(3, 5)).sum().backward()
        assert session.steps_seen == 2
    assert len(torch.overrides._get_current_function_mode_stack()) == 0
    assert _hooks_left(model) == []
    trace = td.open(tmp_path / "t.h5")
    # a step without autograd records parameter values at the end of its forward
    assert [r.name for r in trace.records("param", step=0)] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert trace.records("param_grad", step=0) == []
    assert "1/tanh#0" in [r.name for r in trace.records("backward", step=1)]
    assert len(trace.records("param_grad", step=1)) == 4


def test_recording_closes_incomplete_when_the_loop_raises(tmp_path):
    model = mlp()
    with pytest.raises(KeyError):
        with tdt.recording(model, tmp_path / "t.h5"):
            model(torch.randn(3, 5))
            raise KeyError("stop")
    assert _hooks_left(model) == []
    with pytest.warns(td.IncompleteTraceWarning):
        assert td.open(tmp_path / "t.h5").complete is False


def _hooks_left(model):
    left = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    left += [n for n, p in model.named_parameters()
             if p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None)]
    return left


def test_loss_is_cross_entropy_of_recorded_logits(tmp_path):
    x, y = torch.randn(3, 5), torch.tensor([1, 0, 10])
    tdt.record(mlp(), x, tmp_path / "t.h5", loss_fn=lambda o: F.cross_entropy(o, y))
    trace = td.open(tmp_path / "t.h5")
    logits = torch.from_numpy(trace.get("<root>").read())
    assert trace.get("loss", kind="loss").read() == F.cross_entropy(logits, y).numpy()


def test_recording_survives_a_forward_that_raises_inside_the_loop(tmp_path):
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise ValueError("bad batch")
            return self.fc(x)

    model = Flaky()
    with tdt.recording(model, tmp_path / "t.h5", level="op"):
        for _ in range(3):
            try:
                model(torch.randn(3, 5)).sum().backward()
            except ValueError:
                pass
            # the op mode never outlives a forward, even one that raised
            assert len(torch.overrides._get_current_function_mode_stack()) == 0
    trace = td.open(tmp_path / "t.h5")
    assert trace.complete and trace.steps == [0, 1, 2]
    assert [r.name for r in trace.records("forward", step=2)] == ["fc/linear#0", "fc", "<root>"]
    assert trace.records("forward", step=1) == []
    assert _hooks_left(model) == []
