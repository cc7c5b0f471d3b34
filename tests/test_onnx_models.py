"""Torch models exported to ONNX by both exporters, with and without constant folding: the
module paths the ONNX adapter decodes are torch's ``named_modules()`` names, and the last
record of each module holds that module's output.

The exports are cached per process (``exported``) so the other ONNX test files reuse them.
"""
from __future__ import annotations

import functools
import os
import tempfile
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import onnx as tdo  # noqa: E402

EXPORTS = [(False, True), (False, False), (True, True), (True, False)]  # (dynamo, folding)
EXPORT_IDS = ["legacy-folded", "legacy", "dynamo-optimized", "dynamo"]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(7, 11)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(11, 5)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / x.shape[-1] ** 0.5
        return self.o(torch.softmax(scores, -1) @ self.v(x))


class Block(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 13), nn.GELU(), nn.Linear(13, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.layers = nn.ModuleList([Block(d), Block(d)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


MODELS = {"mlp": (MLP, (3, 7)), "cnn": (CNN, (3, 3, 5, 5)), "transformer": (Transformer, (3, 5, 8))}
_FOLDER = tempfile.TemporaryDirectory(prefix="tracediff-onnx-tests-")


@functools.cache
def torch_model(kind):
    """A seeded eval-mode model with non-trivial BatchNorm statistics, and its input."""
    cls, shape = MODELS[kind]
    torch.manual_seed(0)
    model = cls()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return model, x


@functools.cache
def exported(kind, dynamo, folding):
    """Path of ``kind`` exported by the dynamo or the legacy exporter (cached per process)."""
    model, x = torch_model(kind)
    path = os.path.join(_FOLDER.name, f"{kind}-{'dynamo' if dynamo else 'legacy'}-"
                                      f"{'fold' if folding else 'plain'}.onnx")
    options = {"dynamo": dynamo, "do_constant_folding": folding, "input_names": ["x"],
               "output_names": ["y"]}
    if dynamo:
        options["optimize"] = folding
        options["verbose"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, **options)
    return path


def torch_outputs(kind):
    """Output of every module of ``kind`` on its input (its first call), by qualified name
    (root: ``<root>``)."""
    model, x = torch_model(kind)
    outputs, handles = {}, []
    for name, module in model.named_modules():
        def hook(_module, _inputs, output, name=name or "<root>"):
            outputs.setdefault(name, output.detach().numpy().copy())
        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return outputs


@functools.cache
def onnx_trace(kind, dynamo, folding):
    _, x = torch_model(kind)
    path = os.path.join(_FOLDER.name, f"{kind}-{dynamo}-{folding}.h5")
    tdo.record(exported(kind, dynamo, folding), {"x": x.numpy()}, path)
    return path


def last_by_module(trace):
    out = {}
    for record in trace.records("forward"):
        if "module" in record.meta:
            out[record.meta["module"]] = record
    return out


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("dynamo,folding", EXPORTS, ids=EXPORT_IDS)
def test_last_record_of_each_module_is_that_modules_torch_output(kind, dynamo, folding):
    trace = td.open(onnx_trace(kind, dynamo, folding))
    names = {name or "<root>" for name, _ in torch_model(kind)[0].named_modules()}
    reference = torch_outputs(kind)
    paired = last_by_module(trace)
    scopes = {r.meta["scope"] for r in trace.records("forward") if "scope" in r.meta}
    assert scopes - names == set(), "decoded scopes that are not torch module names"
    assert set(paired) <= names
    for module, record in paired.items():
        np.testing.assert_allclose(record.read(), reference[module], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{module} <- {record.name}")


EXPECTED_MODULES = {
    "mlp": {"fc1", "act", "fc2"},
    "cnn": {"conv", "bn", "relu", "head"},
    "transformer": {"layers.0.ln1", "layers.0.attn.q", "layers.0.attn.k", "layers.0.attn.v",
                    "layers.0.attn.o", "layers.0", "layers.0.ln2", "layers.0.mlp.0",
                    "layers.0.mlp.1", "layers.0.mlp.2", "layers.1", "layers.1.attn.o",
                    "layers.1.mlp.2", "head"},
}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_every_module_with_a_node_is_paired_without_folding(kind, dynamo):
    paired = last_by_module(td.open(onnx_trace(kind, dynamo, False)))
    assert EXPECTED_MODULES[kind] <= set(paired)


def test_attention_block_ending_in_a_child_is_left_unpaired():
    # attn's own softmax/matmul come before its output projection attn.o: pairing torch's
    # `attn` with its last own node would be a false divergence
    for dynamo in (False, True):
        trace = td.open(onnx_trace("transformer", dynamo, False))
        own = [r for r in trace.records("forward") if r.meta.get("scope") == "layers.0.attn"]
        assert {r.meta["op_type"] for r in own} >= {"Softmax", "MatMul"}
        assert all("module" not in r.meta for r in own)


def test_legacy_folded_batchnorm_conv_is_not_paired_with_conv():
    trace = td.open(onnx_trace("cnn", False, True))
    conv = trace.get("/conv/Conv")
    assert conv.meta["folded"] == "BatchNormalization" and conv.meta["scope"] == "conv"
    assert "module" not in conv.meta
    np.testing.assert_allclose(conv.read(), torch_outputs("cnn")["bn"], rtol=1e-4, atol=1e-5)


def test_dynamo_fused_conv_is_filed_under_batchnorm():
    trace = td.open(onnx_trace("cnn", True, True))
    fused = [r for r in trace.records("forward") if r.meta["op_type"] == "Conv"]
    assert [r.meta.get("module") for r in fused] == ["bn"]


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_graph_output_is_last_record_and_matches_onnxruntime(dynamo):
    import onnxruntime as ort

    model, x = torch_model("transformer")
    path = exported("transformer", dynamo, True)
    expected = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    last = td.open(onnx_trace("transformer", dynamo, True)).records("forward")[-1]
    assert last.meta["graph_output"] is True and last.meta["module"] == "head"
    np.testing.assert_allclose(last.read(), expected, rtol=1e-6, atol=1e-6)


def test_params_keep_torch_names_with_roles_and_layouts():
    trace = td.open(onnx_trace("cnn", False, False))
    params = {r.name: r for r in trace.records("param")}
    model, _ = torch_model("cnn")
    for name, tensor in model.state_dict().items():
        if tensor.dtype.is_floating_point:
            np.testing.assert_array_equal(params[name].read(), tensor.numpy())
    assert params["conv.weight"].meta == {"onnx_output": "conv.weight", "module": "conv",
                                          "role": "weight", "layout": "OIHW"}
    assert params["bn.running_var"].meta["role"] == "running_var"
    assert params["head.weight"].meta["layout"] == "OI"
    assert params["head.bias"].meta["role"] == "bias"


class Residual(nn.Module):
    """One ReLU module called twice, as in torchvision's BasicBlock."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


MODELS["residual"] = (Residual, (2, 3, 5, 5))


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_a_module_called_twice_pairs_its_first_call(dynamo):
    model, x = torch_model("residual")
    first = {}

    def keep_first(_module, _inputs, output):
        first.setdefault("relu", output.detach().numpy().copy())

    handle = model.relu.register_forward_hook(keep_first)
    with torch.no_grad():
        model(x)
    handle.remove()
    trace = td.open(onnx_trace("residual", dynamo, False))
    relus = [r for r in trace.records("forward") if r.meta.get("scope") == "relu"]
    assert [(r.meta.get("module"), r.meta.get("module_call")) for r in relus] == \
        [("relu", None), (None, 1)]
    np.testing.assert_allclose(last_by_module(trace)["relu"].read(), first["relu"],
                               rtol=1e-5, atol=1e-6)
