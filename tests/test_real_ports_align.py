"""Issue 19, no false pairs and no hidden shape bugs: records with no counterpart (a Keras
residual ``Add``) stay unmatched without shifting the pairs around them; structural and order
matching refuse sizes no layout reconciles; a same-name pair is refused only when it is one of
several candidates; a unique same-name pair with a real shape bug still exits 1 at its layer."""
import json

import numpy as np
import pytest

import tracediff as td
from tracediff.cli import main

from diff_helpers import rng, write

torch = pytest.importorskip("torch")


def test_keras_residual_add_stays_unmatched_and_shifts_nothing(tmp_path):
    pytest.importorskip("tensorflow")
    from real_ports import ResidualCNN, keras_cnn, record_keras, record_torch

    reference = ResidualCNN().eval()
    torch_path = record_torch(reference, tmp_path / "torch.h5")
    port = keras_cnn(reference, residual=True, names=False)     # Keras' own names: conv2d_1, add, ...
    report = td.diff(record_keras(port, tmp_path / "keras.h5"), torch_path)
    assert report.ok
    forward = {p.a_name: p.b_name for p in report.pairs if p.kind == "forward"}
    layers = [layer.name for layer in port.layers if type(layer).__name__ not in ("InputLayer", "Add")]
    torch_order = ["conv1", "relu1", "conv2", "relu2", "conv3", "relu3", "pool", "flat", "fc1", "relu4", "fc2"]
    assert forward == {**dict(zip(layers, torch_order)), "<root>": "<root>"}
    add = next(layer.name for layer in port.layers if type(layer).__name__ == "Add")
    # the add (forward and gradient) has no torch module; torch's shortcut Identity no Keras layer
    assert report.unmatched == {"a": [add, add], "b": ["shortcut", "shortcut"]}


def test_structure_refuses_sizes_no_layout_reconciles(tmp_path):
    g = rng(1)
    x = g.standard_normal((3, 7))
    # same family, similar statistics, sizes 11 vs 13: a false pair before issue 19
    a = write(tmp_path / "a.h5", [("forward", "x", x), ("forward", "dense", g.standard_normal((3, 11)), {"op_type": "Dense"})])
    b = write(tmp_path / "b.h5", [("forward", "x", x), ("forward", "fc", g.standard_normal((3, 13)), {"op_type": "Linear"})])
    report = td.diff(a, b)
    assert [p.b_name for p in report.pairs] == ["x"]
    assert report.unmatched == {"a": ["dense"], "b": ["fc"]}


def test_order_alignment_refuses_sizes_and_does_not_shift(tmp_path):
    g = rng(2)
    h1, h2 = g.standard_normal((3, 7)), g.standard_normal((3, 5))
    a = write(tmp_path / "a.h5", [("forward", "l1", h1), ("forward", "extra", g.standard_normal((3, 11))),
                                  ("forward", "l3", h2)])
    b = write(tmp_path / "b.h5", [("forward", "m1", h1), ("forward", "m2", g.standard_normal((3, 13))),
                                  ("forward", "m3", h2)])
    report = td.diff(a, b, align="order")
    assert [(p.a_name, p.b_name, p.status) for p in report.pairs] == [("l1", "m1", "ok"), ("l3", "m3", "ok")]
    assert report.unmatched == {"a": ["extra"], "b": ["m2"]}


def test_generic_same_name_of_another_size_is_refused_and_the_right_one_found(tmp_path):
    g = rng(3)
    small, large = g.standard_normal((1, 4, 6, 6)), g.standard_normal((1, 4, 12, 12))
    bn = {"op_type": "BatchNormalization"}
    a = write(tmp_path / "a.h5", [("forward", "BatchNormalization_1", small, bn)], dims={})
    b = write(tmp_path / "b.h5", [("forward", "BatchNormalization_1", large, bn),
                                  ("forward", "BatchNormalization_2", small, bn)], dims={})
    report = td.diff(a, b)
    assert [(p.a_name, p.b_name, p.status) for p in report.pairs] == \
        [("BatchNormalization_1", "BatchNormalization_2", "ok")]


def test_repeated_calls_pick_the_call_of_the_same_size(tmp_path):
    g = rng(4)
    s7, s11 = g.standard_normal((3, 7)), g.standard_normal((3, 11))
    a = write(tmp_path / "a.h5", [("forward", "act", s7), ("forward", "act", s11)])
    b = write(tmp_path / "b.h5", [("forward", "act", s11), ("forward", "act", s7)])   # called in another order
    report = td.diff(a, b)
    assert [(p.a_call, p.b_call, p.status) for p in report.pairs] == [(1, 0, "ok"), (0, 1, "ok")]


def test_folded_parameters_never_pair(tmp_path):
    g = rng(5)
    x, w = g.standard_normal((3, 7)), g.standard_normal((7, 7))
    a = write(tmp_path / "a.h5", [("forward", "conv", x), ("param", "conv.weight", w, {"folded": "BatchNormalization"})])
    b = write(tmp_path / "b.h5", [("forward", "conv", x), ("param", "conv.weight", w * 1.5)])
    report = td.diff(a, b)
    assert report.ok and [p.kind for p in report.pairs] == ["forward"]
    assert report.unmatched == {"a": ["conv.weight"], "b": ["conv.weight"]}


class Net(torch.nn.Module):
    def __init__(self, stride):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.relu = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, stride=stride)
        self.pool, self.flat, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.conv2(self.relu(self.conv1(x))))))


def test_unique_same_name_pair_with_a_wrong_stride_exits_1_naming_the_layer(tmp_path, capsys):
    from tracediff.adapters import torch as tdt

    x = torch.from_numpy(rng(6).standard_normal((2, 3, 6, 6)).astype(np.float32))
    tdt.record(Net(1).eval(), x, tmp_path / "ref.h5")
    tdt.record(Net(2).eval(), x, tmp_path / "port.h5")      # the port's conv2 has stride 2
    out = tmp_path / "r.json"
    assert main(["diff", str(tmp_path / "port.h5"), str(tmp_path / "ref.h5"), "--json", str(out), "--quiet"]) == 1
    first = json.loads(out.read_text())["first_divergence"]["forward"]
    assert (first["b_name"], first["status"]) == ("conv2", "shape_mismatch")
    assert first["shape_a"] == [2, 8, 3, 3] and first["shape_b"] == [2, 8, 6, 6]


def test_an_explicit_pair_keeps_its_shape_mismatch(tmp_path):
    g = rng(7)
    x = g.standard_normal((3, 7))
    a = write(tmp_path / "a.h5", [("forward", "x", x), ("forward", "dense_a", g.standard_normal((3, 11)))])
    b = write(tmp_path / "b.h5", [("forward", "x", x), ("forward", "fc_b", g.standard_normal((3, 13)))])
    report = td.diff(a, b, rename={"pair": [{"a": "dense_a", "b": "fc_b"}]})
    first = report.first_divergence.forward
    assert (first.a_name, first.b_name, first.status, first.match) == ("dense_a", "fc_b", "shape_mismatch", "rule")
