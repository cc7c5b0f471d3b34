"""Layer replay of a hand-written NumPy port with its own backward: each layer's forward and
backward run on the torch reference's values, so a wrong hand-written gradient is named at its
layer even though every dL/d(output) before it is right."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

LABELS = np.array([0, 4, 2])


class Linear:
    def __init__(self, name, weight, bias, grad_scale=1.0):
        self.name, self.w, self.b, self.grad_scale = name, weight, bias, grad_scale

    def forward(self, x):
        self.x = x
        return x @ self.w.T + self.b

    def backward(self, dy):
        grads = {f"{self.name}.weight": self.grad_scale * dy.T @ self.x,
                 f"{self.name}.bias": dy.sum(0)}
        return dy @ self.w, grads


class ReLU:
    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask, {}


def port(model, grad_scale=1.0):
    """The NumPy port of ``model`` (Linear, ReLU, Linear) and its layers, by torch's names."""
    w1, b1, w2, b2 = (p.detach().double().numpy() for p in model.parameters())
    layers = {"0": Linear("0", w1, b1), "1": ReLU(), "2": Linear("2", w2, b2, grad_scale)}

    def run(rec, x):
        h = x
        for name, layer in layers.items():
            h = layer.forward(h)
            rec.forward(name, h)
        shifted = h - h.max(1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
        rec.loss(-np.log(p[np.arange(3), LABELS]).mean())
        dy = (p - np.eye(5)[LABELS]) / 3
        for name in reversed(layers):
            rec.backward(name, dy)
            dy, grads = layers[name].backward(dy)
            for param, grad in grads.items():
                rec.param(param, getattr(layers[name], "w" if param.endswith("weight") else "b"),
                          grad=grad)
        return h

    return run, layers


def test_a_wrong_hand_written_weight_gradient_is_its_own_root_cause(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.ReLU(), torch.nn.Linear(11, 5))
    x = np.random.default_rng(8).standard_normal((3, 7))
    tdt.record(model, torch.tensor(x, dtype=torch.float32), tmp_path / "ref.h5",
               loss_fn=lambda out: F.cross_entropy(out, torch.from_numpy(LABELS)))
    good, good_layers = port(model)
    assert td.replay(good, tmp_path / "ref.h5", layers=good_layers).root_causes == []
    bad, bad_layers = port(model, grad_scale=2.0)     # the bug: dW of the last layer doubled
    report = td.replay(bad, tmp_path / "ref.h5", layers=bad_layers)
    assert [(c["kind"], c["b_name"]) for c in report.root_causes] == [("param_grad", "2.weight")]
    assert report.root_causes[0]["hint"].startswith("a = 2 x b")
    first = next(p for p in report.pairs if p.kind == "param_grad" and p.b_name == "0.weight")
    assert first.local["status"] == "ok"


# -- the demo's planted-bug catalogue through replay -----------------------------------------
from tracediff.demo import bugs as catalogue  # noqa: E402
from tracediff.demo import numpy_nets, torch_nets  # noqa: E402


class DemoLayer:
    """A demo layer (``backward(d) -> dx``, gradients left in ``.grads``) in replay's
    convention: ``backward(d) -> (dx, {parameter record name: gradient})``."""

    def __init__(self, name, layer):
        self.name, self.layer = name, layer

    def forward(self, *inputs):
        return self.layer.forward(*inputs)

    def backward(self, d):
        dx = self.layer.backward(d)
        return dx, {f"{self.name}.{attr}": g for attr, g in self.layer.grads.items()}


def demo_case(net, bugs, tmp_path):
    x, y = numpy_nets.make_inputs(net)
    model = torch_nets.build(net)
    torch_nets.record(model, net, x, y, tmp_path / f"{net}.h5")
    port = {"mlp": numpy_nets.MLP, "cnn": numpy_nets.CNN}[net](
        torch_nets.state_dict_float64(model), bugs=bugs)
    layers = {name: DemoLayer(name, layer) for name, layer in port.layers.items()}
    report = td.replay(lambda rec, inputs: port.record(InputRecorded(rec), inputs, y),
                       tmp_path / f"{net}.h5", inputs=x.astype(np.float64), layers=layers)
    return report


class InputRecorded:
    """The recorder a demo net writes to under replay: the adapter has recorded the input
    already, so the net's own ``rec.input`` is left out."""

    def __init__(self, rec):
        self.rec = rec

    def input(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return getattr(self.rec, name)


REPLAYABLE = [b for b in catalogue.CATALOGUE if b.net in ("mlp", "cnn")
              and b.id != "transposed_output"]     # a bug in how it records, not in a layer


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_the_correct_demo_ports_have_no_root_cause(net, tmp_path):
    assert demo_case(net, (), tmp_path).root_causes == []


@pytest.mark.parametrize("bug", REPLAYABLE, ids=[b.id for b in REPLAYABLE])
def test_each_planted_bug_is_the_only_root_cause(bug, tmp_path):
    report = demo_case(bug.net, (bug.id,), tmp_path)
    kind = {"forward": "forward", "backward": "backward", "param_grad": "param_grad"}[bug.where]
    assert [(c["kind"], c["b_name"]) for c in report.root_causes] == [(kind, bug.layer)]


# -- a residual block: one record, two consumers --------------------------------------------
class Add(torch.nn.Module):
    def forward(self, a, b):
        return a + b


class ResidualNet(torch.nn.Module):
    """fc -> tanh -> add(tanh, fc) -> head: ``fc``'s output feeds both ``act`` and ``add``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.act, self.add, self.head = (torch.nn.Linear(7, 6), torch.nn.Tanh(), Add(),
                                                  torch.nn.Linear(6, 5))

    def forward(self, x):
        h = self.fc(x)
        return self.head(self.add(self.act(h), h))


class Tanh:
    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, dy):
        return dy * (1 - self.y ** 2), {}


class Sum:
    def __init__(self, skip_scale=1.0):
        self.skip_scale = skip_scale

    def forward(self, a, b):
        return a + b

    def backward(self, dy):
        return (dy, self.skip_scale * dy), {}


def residual_port(model, skip_scale=1.0):
    params = {n: p.detach().double().numpy() for n, p in model.named_parameters()}
    layers = {"fc": Linear("fc", params["fc.weight"], params["fc.bias"]), "act": Tanh(),
              "add": Sum(skip_scale), "head": Linear("head", params["head.weight"],
                                                     params["head.bias"])}
    edge = {n: {"kind": "forward", "name": n, "call": 0} for n in layers}

    def run(rec, x):
        h = layers["fc"].forward(x)
        rec.forward("fc", h, inputs=[{"kind": "input", "name": "input", "call": 0}])
        a = layers["act"].forward(h)
        rec.forward("act", a, inputs=[edge["fc"]])
        s = layers["add"].forward(a, h)
        rec.forward("add", s, inputs=[edge["act"], edge["fc"]])
        out = layers["head"].forward(s)
        rec.forward("head", out, inputs=[edge["add"]])
        shifted = out - out.max(1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
        rec.loss(-np.log(p[np.arange(3), LABELS]).mean())
        d_out = (p - np.eye(5)[LABELS]) / 3
        rec.backward("head", d_out)
        d_s, grads = layers["head"].backward(d_out)
        rec.backward("add", d_s)
        (d_a, d_skip), _ = layers["add"].backward(d_s)
        rec.backward("act", d_a)
        d_h = layers["act"].backward(d_a)[0] + d_skip
        rec.backward("fc", d_h)
        for name in ("fc", "head"):
            grads.update(layers[name].backward(d_out if name == "head" else d_h)[1])
        for param, grad in grads.items():
            layer = layers[param.split(".")[0]]
            rec.param(param, layer.w if param.endswith("weight") else layer.b, grad=grad)
        return out

    return run, layers


def test_a_fan_out_is_judged_by_the_sum_of_its_consumers_backwards(tmp_path):
    """``fc``'s dL/d is the sum of what ``act`` and ``add`` send back: judged as that sum (ok
    for a correct port), and a hand-written ``add`` backward that drops the skip gradient is
    named there, by ``add`` and ``act`` together, and nowhere else."""
    model = ResidualNet()
    x = np.random.default_rng(9).standard_normal((3, 7))
    tdt.record(model, torch.tensor(x, dtype=torch.float32), tmp_path / "ref.h5",
               loss_fn=lambda out: F.cross_entropy(out, torch.from_numpy(LABELS)))
    good, good_layers = residual_port(model)
    report = td.replay(good, tmp_path / "ref.h5", layers=good_layers)
    assert report.root_causes == []
    fc = next(p for p in report.pairs if p.kind == "backward" and p.a_name == "fc")
    assert fc.local["status"] == "ok" and fc.local["by"] == ["act", "add"]
    bad, bad_layers = residual_port(model, skip_scale=0.0)
    causes = td.replay(bad, tmp_path / "ref.h5", layers=bad_layers).root_causes
    assert [(c["kind"], c["a_name"], c["by"]) for c in causes] == [
        ("backward", "fc", ["act", "add"])]
