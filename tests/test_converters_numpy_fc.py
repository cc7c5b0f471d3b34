"""A hand-written NumPy library's layers against torch: its ``FullyConnected`` layers (numpy-ml's
name, MXNet's; numpy-ml itself no longer imports on Python 3.11) are linear layers, so each pairs
with its torch ``Linear`` -- the last one too, not the torch model's ``<root>`` output -- and
their ``W`` (in, out) and ``b`` pair with ``weight`` and ``bias`` through the declared role and
layout (docs/conventions.md: a Recorder user declares ``op_type``, ``role`` and ``layout``)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402


class FullyConnected:
    """numpy-ml's layer: ``Y = X @ W + b``, W stored (in, out)."""

    def __init__(self, W, b):
        self.parameters = {"W": W, "b": b}

    def forward(self, X):
        return X @ self.parameters["W"] + self.parameters["b"]


class ReLU:
    parameters = {}

    def forward(self, X):
        return np.maximum(X, 0)


def _torch_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.ReLU(), torch.nn.Linear(11, 13),
                               torch.nn.ReLU(), torch.nn.Linear(13, 5))


def _record_numpy(model, x, path, planted=None):
    layers = [FullyConnected(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
              if isinstance(m, torch.nn.Linear) else ReLU() for m in model]
    if planted is not None:
        W = layers[planted].parameters["W"]
        W *= 1 + 0.01 * np.random.default_rng(1).standard_normal(W.shape).astype(np.float32)
    with td.Recorder(path, framework="numpy") as rec:
        rec.input("X", x)
        h = x
        for k, layer in enumerate(layers):
            h = layer.forward(h)
            name = f"{type(layer).__name__}_{k}"
            rec.forward(name, h, op_type=type(layer).__name__)
            if layer.parameters:
                rec.param(f"{name}/W", layer.parameters["W"], module=name, role="weight", layout="IO")
                rec.param(f"{name}/b", layer.parameters["b"], module=name, role="bias")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("numpy-fc")
    model = _torch_mlp().eval()
    x = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)
    tdt.record(model, torch.from_numpy(x), str(out / "torch.h5"))
    return out, model, x


def test_fully_connected_pairs_with_torch_linear(reference):
    out, model, x = reference
    _record_numpy(model, x, str(out / "numpy.h5"))
    report = td.diff(str(out / "numpy.h5"), str(out / "torch.h5"))
    assert report.ok, report.first_divergence
    forward = {p.a_name: p.b_name for p in report.pairs if p.kind == "forward"}
    assert forward["FullyConnected_4"] == "4"            # the last Linear, not <root>
    params = {p.a_name: (p.b_name, p.status) for p in report.pairs if p.kind == "param"}
    assert params == {"FullyConnected_0/W": ("0.weight", "layout"), "FullyConnected_0/b": ("0.bias", "ok"),
                      "FullyConnected_2/W": ("2.weight", "layout"), "FullyConnected_2/b": ("2.bias", "ok"),
                      "FullyConnected_4/W": ("4.weight", "layout"), "FullyConnected_4/b": ("4.bias", "ok")}


def test_fully_connected_weight_bug_is_named(reference):
    out, model, x = reference
    _record_numpy(model, x, str(out / "bug.h5"), planted=2)
    report = td.diff(str(out / "bug.h5"), str(out / "torch.h5"))
    assert report.first_divergence.forward.a_name == "FullyConnected_2"
    assert [p.a_name for p in report.pairs if p.kind == "param" and p.diverged] == ["FullyConnected_2/W"]
