"""End to end: torch model -> ONNX (both exporters) -> tracediff backward trace, diffed against
the torch adapter's trace of the same model: every backward and parameter gradient matches."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

import tracediff as td
from tracediff.adapters import onnx as tdo
from tracediff.adapters import torch as tdt

CLASSES = 5


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(6)
        self.avg = nn.AvgPool2d(2, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, CLASSES)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.avg(F.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


class Block(nn.Module):
    """Embedding, one post-norm transformer encoder layer (GELU), a classification head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                                activation="gelu")
        self.head = nn.Linear(16, CLASSES)

    def forward(self, tokens):
        return self.head(self.layer(self.emb(tokens)))


def _mlp():
    return nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, CLASSES))


def _built(name, fresh=False):
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(5)
    if name == "mlp":
        model, x = _mlp(), torch.randn(3, 7, generator=gen)
        target = torch.tensor([0, 4, 2])
    elif name == "cnn":
        model, x = CNN(), torch.randn(2, 3, 11, 13, generator=gen)
        target = torch.tensor([1, 3])
    else:
        model, x = Block(), torch.randint(0, 11, (2, 7), generator=gen)
        target = torch.randint(0, CLASSES, (2, 7), generator=gen)
    if fresh:
        return model.eval(), x, target
    with torch.no_grad():
        # distinct values: the legacy exporter merges identical initializers (ones, zeros)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval(), x, target


def _export(model, x, path, exporter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Both exporters' optimizers fold eval-mode BatchNorm into the conv weights, which then
        # are no longer torch's parameters: keep folding off so the parameters stay comparable.
        if exporter == "legacy":
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"],
                              opset_version=18, do_constant_folding=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=True, input_names=["x"],
                              optimize=False, verbose=False)


def _loss_fn(target):
    return lambda out: F.cross_entropy(out.reshape(-1, CLASSES), target.reshape(-1))


@pytest.fixture(scope="module")
def torch_traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch")
    out = {}
    for name in ("mlp", "cnn", "block"):
        model, x, target = _built(name)
        tdt.record(model, x, folder / f"{name}.h5", loss_fn=_loss_fn(target))
        out[name] = folder / f"{name}.h5"
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in ("mlp", "cnn", "block"):
        for exporter in ("legacy", "dynamo"):
            model, x, target = _built(name)
            path = folder / f"{name}_{exporter}.onnx"
            _export(model, x, path, exporter)
            out[name, exporter] = (path, x.numpy(), target.numpy(), model)
    return out


def _pairs(report, kind):
    return [p for p in report.pairs if p.kind == kind]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "block"])
def test_onnx_gradients_match_torch(name, exporter, exported, torch_traces, tmp_path):
    path, x, target, model = exported[name, exporter]
    onnx_trace = tmp_path / "onnx.h5"
    tdo.record(path, {"x": x}, onnx_trace, loss="cross_entropy", target=target)
    report = td.diff(onnx_trace, torch_traces[name])
    assert [p.status for p in _pairs(report, "loss")] == ["ok"]
    grads = {p.b_name: p.status for p in _pairs(report, "param_grad")}
    assert grads == {n: "ok" for n, _ in model.named_parameters()}
    # A backward record matches wherever its forward record does: a pair whose forward values
    # already differ was matched to the wrong ONNX node (module decoding), not mis-differentiated.
    forward = {(p.a_name, p.b_name): p.status for p in _pairs(report, "forward")}
    backward = _pairs(report, "backward")
    assert len(backward) >= 3
    wrong = [(p.a_name, p.b_name, p.status) for p in backward
             if p.status != forward.get((p.a_name, p.b_name))
             and not (p.status == "ok" and forward.get((p.a_name, p.b_name)) == "diverged")]
    assert wrong == []
    if name != "block":  # the transformer's node-to-module pairing is the forward adapter's
        assert report.first_divergence.forward is None
        assert report.first_divergence.backward is None


@pytest.mark.parametrize("exporter,max_memory", [("legacy", None), ("dynamo", None),
                                                  ("legacy", 1000)])
def test_planted_initializer_change_is_named_in_the_backward_pass(exporter, max_memory, exported,
                                                                  torch_traces, tmp_path):
    path, x, target, _ = exported["cnn", exporter]
    model = onnx.load(path)
    planted = "conv2.weight"
    for init in model.graph.initializer:
        if init.name == planted:
            value = numpy_helper.to_array(init).copy()
            value[0] *= 1.5
            init.CopyFrom(numpy_helper.from_array(value, planted))
    onnx_trace = tmp_path / "planted.h5"
    tdo.record(model, {"x": x}, onnx_trace, loss="cross_entropy", target=target,
               max_memory=max_memory)  # 1000 bytes: the backward in groups
    report = td.diff(onnx_trace, torch_traces["cnn"])
    assert report.first_divergence.forward.b_name == "conv2"
    backward = report.first_divergence.backward
    assert backward is not None
    assert "conv2" in backward.introduced["reason"]
    grads = {p.b_name: p.status for p in _pairs(report, "param_grad")}
    assert grads[planted] == "diverged"
    assert grads["conv1.weight"] == "diverged"  # upstream of the change: through the backward


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_saved_gradient_model_passes_the_checker_and_reproduces_the_trace(
        exporter, exported, tmp_path):
    import json

    import onnxruntime as ort

    path, x, target, _ = exported["block", exporter]
    tdo.record(path, {"x": x}, tmp_path / "t.h5", loss="cross_entropy", target=target,
               save_grad_model=tmp_path / "grad.onnx")
    saved = onnx.load(tmp_path / "grad.onnx")
    onnx.checker.check_model(saved, full_check=True)
    mapping = json.loads({p.key: p.value for p in saved.metadata_props}["tracediff.gradients"])
    session = ort.InferenceSession(saved.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in saved.graph.output]
    values = dict(zip(outputs, session.run(None, {"x": x, mapping["target"]: target})))
    trace = td.open(tmp_path / "t.h5")
    assert values[mapping["loss"]] == trace.get("loss", kind="loss").read()
    for init, out in mapping["param_grads"]:
        np.testing.assert_array_equal(values[out], trace.get(init, kind="param_grad").read())


@pytest.mark.parametrize("name", ["cnn", "block"])
def test_fresh_model_keeps_a_gradient_per_parameter_through_merged_initializers(name, tmp_path):
    """A fresh model's LayerNorm/BatchNorm ones and zeros are merged by the legacy exporter
    into shared initializers; every parameter still gets torch's gradient."""
    model, x, target = _built(name, fresh=True)
    _export(model, x, tmp_path / "m.onnx", "legacy")
    exported = onnx.load(tmp_path / "m.onnx")
    stored = {t.name for t in exported.graph.initializer}
    assert any(n.op_type == "Identity" and n.input[0] in stored for n in exported.graph.node)
    tdt.record(model, x, tmp_path / "torch.h5", loss_fn=_loss_fn(target))
    tdo.record(tmp_path / "m.onnx", {"x": x.numpy()}, tmp_path / "onnx.h5",
               loss="cross_entropy", target=target.numpy())
    report = td.diff(tmp_path / "onnx.h5", tmp_path / "torch.h5")
    grads = {p.b_name: p.status for p in _pairs(report, "param_grad")}
    assert grads == {n: "ok" for n, _ in model.named_parameters()}


class Upsampler(nn.Module):
    """Elu, nearest and bilinear F.interpolate (scale and size, align_corners both ways) and
    two einsums: the ops whose rules came last."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.query = nn.Linear(4, 6)
        self.key = nn.Linear(4, 6)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, x):
        h = F.elu(self.conv1(x), alpha=0.7)
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = F.interpolate(self.conv2(h), scale_factor=2, mode="bilinear", align_corners=False)
        h = F.interpolate(h, size=(7, 9), mode="bilinear", align_corners=True)
        tokens = h.flatten(2).transpose(1, 2)
        scores = torch.einsum("bqd,bkd->bqk", self.query(tokens), self.key(tokens))
        return self.head(torch.einsum("bqk,bkd->bqd", scores.softmax(-1), tokens).mean(1))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_elu_einsum_and_resize_gradients_match_torch(exporter, tmp_path):
    torch.manual_seed(0)
    model = Upsampler().eval()
    x = torch.randn(2, 3, 5, 3, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 4])
    tdt.record(model, x, tmp_path / "torch.h5", loss_fn=_loss_fn(target))
    _export(model, x, tmp_path / "m.onnx", exporter)
    ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    assert (ops.count("Elu"), ops.count("Resize"), ops.count("Einsum")) == (1, 3, 2)
    tdo.record(tmp_path / "m.onnx", {"x": x.numpy()}, tmp_path / "onnx.h5",
               loss="cross_entropy", target=target.numpy())
    report = td.diff(tmp_path / "onnx.h5", tmp_path / "torch.h5")
    grads = {p.b_name: p.status for p in _pairs(report, "param_grad")}
    assert grads == {n: "ok" for n, _ in model.named_parameters()}
    assert report.first_divergence.forward is None
    assert report.first_divergence.backward is None


class Recurrent(nn.Module):
    """Two stacked LSTM layers and a bidirectional GRU (linear_before_reset, as torch)."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True)
        self.gru = nn.GRU(7, 3, batch_first=True, bidirectional=True)
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x):
        return self.head(self.gru(self.lstm(x)[0])[0])


@pytest.mark.parametrize("exporter,max_memory", [("legacy", None), ("dynamo", None),
                                                  ("dynamo", 300)])
def test_lstm_and_gru_gradients_match_torch(exporter, max_memory, tmp_path):
    torch.manual_seed(0)
    model = Recurrent().eval()
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([[1, 4, 0], [2, 2, 3]])
    tdt.record(model, x, tmp_path / "torch.h5", loss_fn=_loss_fn(target))
    _export(model, x, tmp_path / "m.onnx", exporter)
    ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    assert (ops.count("LSTM"), ops.count("GRU")) == (2, 1)
    tdo.record(tmp_path / "m.onnx", {"x": x.numpy()}, tmp_path / "onnx.h5",
               loss="cross_entropy", target=target.numpy(), max_memory=max_memory)
    groups = td.open(tmp_path / "onnx.h5").get("loss", kind="loss").meta["gradient_groups"]
    assert (groups > 1) == (max_memory is not None)  # 300 bytes: the unrolled backward in groups
    report = td.diff(tmp_path / "onnx.h5", tmp_path / "torch.h5")
    grads = {p.b_name: p.status for p in _pairs(report, "param_grad")}
    assert grads == {n: "ok" for n, _ in model.named_parameters()}
    forward = {(p.a_name, p.b_name): p.status for p in _pairs(report, "forward")}
    backward = _pairs(report, "backward")
    assert len(backward) >= 3
    assert [(p.a_name, p.b_name) for p in backward
            if p.status != forward.get((p.a_name, p.b_name))] == []
