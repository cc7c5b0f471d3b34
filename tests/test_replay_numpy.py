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
