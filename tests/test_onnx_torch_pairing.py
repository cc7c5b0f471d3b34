"""torch <-> ONNX pairing on transformer blocks with eval-mode Dropout, on aliased and merged
parameters and on constant-folded BatchNorm, through both exporters with and without folding:
forward AND backward diff clean, each torch module paired with the last node of its own scope,
and a perturbed initializer named at its module."""
from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import torch.nn.functional as F  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import onnx as tdo  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

EXPORTS = [(False, True), (False, False), (True, True), (True, False)]  # (dynamo, folding)
EXPORT_IDS = ["legacy-folded", "legacy", "dynamo-optimized", "dynamo"]
_FOLDER = tempfile.TemporaryDirectory(prefix="tracediff-pairing-")


class DropoutBlock(nn.Module):
    """A post-LN feed-forward block with an eval-mode Dropout between linear2 and the residual."""

    def __init__(self):
        super().__init__()
        self.linear1, self.act, self.linear2 = nn.Linear(8, 13), nn.ReLU(), nn.Linear(13, 8)
        self.dropout2, self.norm2, self.head = nn.Dropout(0.1), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.norm2(x + self.dropout2(self.linear2(self.act(self.linear1(x))))))


class Encoder(nn.Module):
    def __init__(self, norm_first):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 13, dropout=0.1, batch_first=True,
                                                norm_first=norm_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(x))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = nn.LSTM(8, 11, batch_first=True), nn.Linear(11, 3)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


class LogitsOnly(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, ids):
        return self.m(input_ids=ids, return_dict=False)[0]


def _hf(name):
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name == "bert":
        config = transformers.BertConfig(
            vocab_size=53, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=19, max_position_embeddings=16, num_labels=3)
        return LogitsOnly(transformers.BertForSequenceClassification(config))
    config = transformers.GPT2Config(vocab_size=53, n_embd=16, n_layer=1, n_head=2,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    return LogitsOnly(transformers.GPT2LMHeadModel(config))


@functools.cache
def model(kind):
    """(eval-mode model, input, integer target for cross entropy over the last axis)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if kind in ("bert", "gpt2"):
        ids = torch.randint(0, 53, (2, 7), generator=torch.Generator().manual_seed(1))
        target = rng.integers(0, 3, (2,)) if kind == "bert" else rng.integers(0, 53, (2, 7))
        return _hf(kind).eval(), ids, target
    x = torch.randn(3, 3, 5, 5) if kind == "cnn" else torch.randn(3, 5, 8)
    if kind == "cnn":
        net = ConvBN()
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        return net.eval(), x, rng.integers(0, 3, (3,))
    if kind == "lstm":
        return Recurrent().eval(), x, rng.integers(0, 3, (3, 5))
    net = DropoutBlock() if kind == "block" else Encoder(norm_first=kind == "encoder-norm-first")
    return net.eval(), x, rng.integers(0, 3, (3, 5))


@functools.cache
def exported(kind, dynamo, folding):
    net, x, _ = model(kind)
    path = os.path.join(_FOLDER.name, f"{kind}-{dynamo}-{folding}.onnx")
    options = {"dynamo": dynamo, "do_constant_folding": folding, "input_names": ["x"],
               "output_names": ["y"]}
    options.update({"optimize": folding, "verbose": False} if dynamo else {"opset_version": 18})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, **options)
    return path


def _loss(target):
    labels = torch.tensor(target).reshape(-1)
    return lambda out: F.cross_entropy(out.reshape(-1, out.shape[-1]), labels)


@functools.cache
def torch_trace(kind):
    net, x, target = model(kind)
    path = os.path.join(_FOLDER.name, f"torch-{kind}.h5")
    tdt.record(net, x, path, loss_fn=_loss(target))
    return path


def onnx_trace(kind, dynamo, folding, proto=None, tag=""):
    _, x, target = model(kind)
    path = os.path.join(_FOLDER.name, f"onnx-{kind}-{dynamo}-{folding}{tag}.h5")
    if not os.path.exists(path):
        tdo.record(proto or exported(kind, dynamo, folding), {"x": x.numpy()}, path,
                   loss="cross_entropy", target=target)
    return path


def _clean(report):
    assert report.first_divergence.forward is None, report.first_divergence.forward
    assert report.first_divergence.backward is None, report.first_divergence.backward
    assert report.ok, [(p.kind, p.a_name, p.b_name, p.status) for p in report.pairs if p.diverged]


# (torch module, the module whose last node it pairs with when it has no node of its own)
PAIRINGS = {
    "block": [("linear2", "linear2"), ("dropout2", "linear2"), ("norm2", "norm2"),
              ("head", "head")],
    "encoder": [("layer.self_attn:0", "layer.self_attn"), ("layer.dropout1", "layer.self_attn"),
                ("layer.linear2", "layer.linear2"), ("layer.dropout2", "layer.linear2"),
                ("layer.norm2", "layer.norm2"), ("head", "head")],
    "encoder-norm-first": [("layer.linear2", "layer.linear2"), ("layer.dropout2", "layer.linear2"),
                           ("layer.norm2", "layer.norm2"), ("head", "head")],
}


@pytest.mark.parametrize("kind", list(PAIRINGS))
@pytest.mark.parametrize("dynamo,folding", EXPORTS, ids=EXPORT_IDS)
def test_eval_dropout_pairs_with_the_tensor_it_passes_and_shifts_nothing(kind, dynamo, folding):
    path = onnx_trace(kind, dynamo, folding)
    report = td.diff(path, torch_trace(kind))
    _clean(report)
    paired = {p.b_name: p.a_name for p in report.pairs if p.kind == "forward"}
    trace = td.open(path)
    for torch_name, passes in PAIRINGS[kind]:
        # its own scope's last node where the export kept one (dynamo: a Dropout's clone)
        own = [r.name for r in trace.records("forward")
               if r.meta.get("scope") == torch_name.split(":")[0]]
        last = own[-1] if own else \
            [r.name for r in trace.records("forward") if r.meta.get("scope") == passes][-1]
        assert paired[torch_name] == last, (torch_name, paired[torch_name], last)
    backward = {p.b_name: p.a_name for p in report.pairs if p.kind == "backward"}
    for torch_name, _ in PAIRINGS[kind]:
        assert backward[torch_name] == paired[torch_name]


@pytest.mark.parametrize("dynamo,folding", EXPORTS, ids=EXPORT_IDS)
def test_tuple_output_pairs_as_its_module_and_never_with_a_neighbours_node(dynamo, folding):
    report = td.diff(onnx_trace("lstm", dynamo, folding), torch_trace("lstm"))
    _clean(report)
    trace = td.open(onnx_trace("lstm", dynamo, folding))
    paired = {p.b_name: trace.get(p.a_name).meta.get("scope")
              for p in report.pairs if p.kind == "forward"}
    assert paired["lstm:0"] == "lstm"
    # h_n, c_n: no ONNX record of theirs in some exports, and then no pair (not head's weight)
    assert all(scope == "lstm" for name, scope in paired.items() if name.startswith("lstm:"))


@pytest.mark.parametrize("dynamo,folding", EXPORTS, ids=EXPORT_IDS)
def test_perturbed_linear2_bias_is_named_at_linear2(dynamo, folding):
    proto = onnx.load(exported("encoder", dynamo, folding))
    bias = next(t for t in proto.graph.initializer if t.name == "layer.linear2.bias")
    values = numpy_helper.to_array(bias).copy()
    values[0] += 0.5
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    path = onnx_trace("encoder", dynamo, folding, proto=proto, tag="-bad")
    report = td.diff(path, torch_trace("encoder"))
    assert report.first_divergence.forward.b_name == "layer.linear2"
    assert report.first_divergence.backward is not None
    assert not report.ok


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("dynamo,folding", EXPORTS, ids=EXPORT_IDS)
def test_hugging_face_models_diff_clean_forward_and_backward(kind, dynamo, folding):
    report = td.diff(onnx_trace(kind, dynamo, folding), torch_trace(kind))
    _clean(report)
    assert {"<root>"} <= {p.b_name for p in report.pairs if p.kind == "backward"}
    assert any(p.kind == "param_grad" for p in report.pairs)


def test_legacy_aliased_parameters_get_param_records_and_line_up_with_torch():
    # a fresh model's LayerNorms hold equal ones/zeros: the legacy exporter stores them once
    path = onnx_trace("encoder", False, False)
    trace = td.open(path)
    params = {r.name: r for r in trace.records("param")}
    grads = {r.name for r in trace.records("param_grad")}
    assert {"layer.norm2.weight", "layer.norm2.bias"} <= set(params)
    assert params["layer.norm2.weight"].meta["module"] == "layer.norm2"
    np.testing.assert_array_equal(params["layer.norm2.weight"].read(), np.ones(8, np.float32))
    assert set(params) & {"layer.norm2.weight", "layer.norm2.bias"} <= grads
    report = td.diff(path, torch_trace("encoder"))
    unmatched = report.to_dict()["unmatched"]["b"]
    assert not [n for n in unmatched if n.startswith(("layer.norm", "head."))], unmatched


def test_dynamo_merged_parameters_each_get_their_own_gradient():
    # the dynamo optimizer merges equal-valued initializers without Identity copies
    path = onnx_trace("encoder", True, True)
    trace = td.open(path)
    grads = {r.name: r for r in trace.records("param_grad")}
    assert {"layer.norm1.weight", "layer.norm2.weight"} <= set(grads)
    torch_grads = {r.name: r for r in td.open(torch_trace("encoder")).records("param_grad")}
    for name in ("layer.norm1.weight", "layer.norm2.weight"):
        np.testing.assert_allclose(grads[name].read(), torch_grads[name].read(), rtol=1e-4,
                                   atol=1e-6)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy-folded", "dynamo-optimized"])
def test_batchnorm_folded_into_conv_diffs_clean_forward_and_backward(dynamo):
    path = onnx_trace("cnn", dynamo, True)
    trace = td.open(path)
    folded = set(json.loads(trace.attrs["meta"])["folded_initializers"])
    assert folded, "the export fused nothing: the test lost its subject"
    assert not folded & {r.name for r in trace.records(("param", "param_grad"))}
    report = td.diff(path, torch_trace("cnn"))
    _clean(report)
    backward = {p.b_name for p in report.pairs if p.kind == "backward"}
    assert {"bn", "relu", "head"} <= backward


HF_PERTURBED = {"bert": "m.bert.encoder.layer.0.intermediate.dense",
                "gpt2": "m.transformer.h.0.mlp.c_fc"}


@pytest.mark.parametrize("kind", list(HF_PERTURBED))
@pytest.mark.parametrize("dynamo,folding", EXPORTS, ids=EXPORT_IDS)
def test_hugging_face_perturbed_weight_is_named_at_its_module(kind, dynamo, folding):
    module = HF_PERTURBED[kind]
    proto = onnx.load(exported(kind, dynamo, folding))
    weight = _weight_of(proto, onnx_trace(kind, dynamo, folding), module)
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    path = onnx_trace(kind, dynamo, folding, proto=proto, tag="-bad")
    first = td.diff(path, torch_trace(kind)).first_divergence.forward
    assert first is not None and first.b_name == module


def _weight_of(proto, trace_path, module):
    """``<module>.weight``, or the initializer its MatMul/Gemm multiplies by where the export
    pre-transposed and renamed it (folding, the dynamo optimizer)."""
    initializers = {t.name: t for t in proto.graph.initializer}
    if f"{module}.weight" in initializers:
        return initializers[f"{module}.weight"]
    tensors = {r.meta["onnx_output"] for r in td.open(trace_path).records("forward")
               if r.meta.get("scope") == module and r.meta["op_type"] in ("MatMul", "Gemm")}
    node = next(n for n in proto.graph.node if set(n.output) & tensors)
    return next(initializers[t] for t in node.input if t in initializers)
