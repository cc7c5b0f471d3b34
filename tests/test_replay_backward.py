"""Backward replay of torch candidates: each module's VJP run on the reference's dL/d(its
output) and inputs, so a wrong hand-written gradient (a custom ``torch.autograd.Function``) is
named at its layer, and a fan-out is judged by the sum over its consumers."""
import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

LABELS = torch.tensor([0, 1, 2])


def loss(out):
    return F.cross_entropy(out, LABELS)


class TanhFn(torch.autograd.Function):
    """tanh with a hand-written backward, ``scale`` times the true gradient."""

    @staticmethod
    def forward(ctx, x, scale):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return ctx.scale * dy * (1 - y * y), None


class LinearFn(torch.autograd.Function):
    """x @ W.T + b with a hand-written backward whose dW is ``scale`` times the true one."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale):
        ctx.save_for_backward(x, weight)
        ctx.scale = scale
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        return dy @ weight, ctx.scale * dy.T @ x, dy.sum(0), None


class CustomTanh(torch.nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return TanhFn.apply(x, self.scale)


class CustomLinear(torch.nn.Linear):
    scale = 1.0

    def forward(self, x):
        return LinearFn.apply(x, self.weight, self.bias, self.scale)


def model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 11), CustomTanh(), CustomLinear(11, 9),
                              torch.nn.Tanh(), torch.nn.Linear(9, 5))
    return net


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    net = model()
    path = tmp_path_factory.mktemp("replay-backward") / "ref.h5"
    tdt.record(net, torch.randn(3, 7, generator=torch.Generator().manual_seed(1)), path,
               loss_fn=loss)
    return net, path


def test_the_reference_replayed_against_its_own_trace_is_clean_backward_included(reference):
    net, path = reference
    report = td.replay(net, path, loss_fn=loss)
    assert report.ok and report.root_causes == []
    judged = {p.a_name: p.local["status"] for p in report.pairs
              if p.kind in ("backward", "param_grad") and p.local is not None}
    # every dL/d but the loss's own (the last layer's output) is a layer's VJP on the reference's
    assert judged == {"0": "ok", "1": "ok", "2": "ok", "3": "ok", "0.weight": "ok",
                      "0.bias": "ok", "2.weight": "ok", "2.bias": "ok", "4.weight": "ok",
                      "4.bias": "ok"}


def test_a_doubled_custom_gradient_is_named_at_its_layer(reference):
    """The activation's hand-written backward doubles dL/d(input): the forward is right, the
    whole cumulative backward below it is off, and replay names dL/d of its input, by it."""
    net, path = reference
    bad = copy.deepcopy(net)
    bad[1].scale = 2.0
    report = td.replay(bad, path, loss_fn=loss)
    assert report.first_divergence.forward is None
    assert [(c["kind"], c["a_name"], c["by"]) for c in report.root_causes] == [
        ("backward", "0", "1")]
    assert report.root_causes[0]["hint"].startswith("a = 2 x b")
    assert report.first_divergence.backward.introduced["verdict"] == "introduced here"
    from tracediff.report.terminal import replay_lines
    assert replay_lines(report)[2].startswith("  backward 0 by 1 local rel_l2 ")
    assert "- backward `0` by 1, local rel_l2 " in report.to_markdown()


def test_a_doubled_custom_weight_gradient_is_its_parameter_gradient(reference):
    net, path = reference
    bad = copy.deepcopy(net)
    bad[2].scale = 2.0
    report = td.replay(bad, path, loss_fn=loss)
    assert [(c["kind"], c["a_name"]) for c in report.root_causes] == [("param_grad", "2.weight")]


class Residual(torch.nn.Module):
    """y = fc2(tanh(fc1(x))) + proj(x): x feeds two layers and a functional add."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)
        self.proj = torch.nn.Linear(6, 6)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x))) + self.proj(x) + x


def test_a_residual_fan_out_is_judged_by_the_sum_over_its_consumers(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), Residual(), torch.nn.Linear(6, 3))
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    tdt.record(net, x, tmp_path / "ref.h5", loss_fn=loss)
    report = td.replay(net, tmp_path / "ref.h5", loss_fn=loss)
    assert report.root_causes == []
    fan_out = next(p for p in report.pairs if p.kind == "backward" and p.a_name == "0")
    # fc1, proj and the block's own glue (the ``+ x``) all consume it
    assert fan_out.local["status"] == "ok"
    assert sorted(fan_out.local["by"]) == ["1", "1.fc1", "1.proj"]
    bad = copy.deepcopy(net)
    with torch.no_grad():
        bad[1].fc2.weight.mul_(1.05)
    causes = td.replay(bad, tmp_path / "ref.h5", loss_fn=loss).root_causes
    assert [(c["kind"], c["a_name"]) for c in causes] == [("forward", "1.fc2")]
