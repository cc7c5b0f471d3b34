"""The torch adapter on the architectures it must handle: every module output is recorded under
its named_modules() name, and every backward record is dL/d(that output, that call)."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

B, IN, HID, OUT = 3, 5, 7, 11          # prime sizes: any axis is identified by its size


def outputs_by_call(model, run):
    """A plain run's module outputs, per (record name, call), taken with test-side hooks."""
    seen, counts, handles = {}, {}, []
    for path, module in model.named_modules():
        def hook(mod, args, out, name=path or "<root>"):
            call = counts.get(name, 0)
            counts[name] = call + 1
            for rname, t in _flat(out, name):
                seen[(rname, call)] = t
        handles.append(module.register_forward_hook(hook))
    try:
        loss = run()
    finally:
        for h in handles:
            h.remove()
    return loss, seen


def _flat(value, name):
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _flat(v, f"{name}:{k}")
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _flat(v, f"{name}:{i}")


def assert_trace_matches_autograd(trace, model, run):
    """Forward records equal the plain run's outputs; backward records equal
    torch.autograd.grad(loss, output) for the same call."""
    loss, seen = outputs_by_call(model, run)
    keys = [k for k, t in seen.items() if t.requires_grad]
    grads = torch.autograd.grad(loss, [seen[k] for k in keys], allow_unused=True)
    expected_grad = {k: g for k, g in zip(keys, grads) if g is not None}
    forward = {(r.name, r.call): r for r in trace.records("forward")}
    backward = {(r.name, r.call): r for r in trace.records("backward")}
    assert set(forward) == set(seen)
    for key, t in seen.items():
        np.testing.assert_array_equal(forward[key].read(), t.detach().numpy(), err_msg=str(key))
    assert set(backward) == set(expected_grad)
    for key, g in expected_grad.items():
        np.testing.assert_allclose(backward[key].read(), g.numpy(), rtol=1e-6, atol=1e-7, err_msg=str(key))
    assert trace.get("loss", kind="loss").read() == pytest.approx(loss.item())


def seeded(build):
    torch.manual_seed(0)
    return build()


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(IN, HID), nn.Tanh(), nn.Linear(HID, OUT)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(5 * 3 * 3, OUT)

    def forward(self, x):
        h = self.pool(F.relu(self.bn(self.conv(x))))
        return self.head(h.flatten(1))


class PreLNBlock(nn.Module):
    def __init__(self, d=14, heads=2):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class StepLSTM(nn.Module):
    """One LSTMCell called once per time step: its records get call indices 0..T-1."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(IN, HID)
        self.head = nn.Linear(HID, OUT)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], HID)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


class Reuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(HID, HID)
        self.inp, self.out = nn.Linear(IN, HID), nn.Linear(HID, OUT)

    def forward(self, x):
        return self.out(self.shared(torch.sin(self.shared(self.inp(x)))))


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, OUT)

    def forward(self, x):
        y = self.fc(x)
        return {"logits": y, "aux": (y.sum(1), y.mean(1)), "note": "not a tensor"}


def _record(model, x, tmp_path, loss_fn, **kw):
    path = tmp_path / "t.h5"
    tdt.record(model, x, path, loss_fn=loss_fn, **kw)
    return td.open(path)


@pytest.mark.parametrize("build,x_shape", [
    (MLP, (B, IN)), (PreLNBlock, (B, 5, 14)), (StepLSTM, (B, 5, IN)), (Reuse, (B, IN)),
])
def test_every_output_and_gradient_matches_autograd(tmp_path, build, x_shape):
    torch.manual_seed(1)
    x = torch.randn(*x_shape)
    model = seeded(build)

    def loss_fn(out):
        return (out * torch.linspace(-1, 1, out.shape[-1])).sum()

    trace = _record(model, x, tmp_path, loss_fn)
    assert_trace_matches_autograd(trace, model, lambda: loss_fn(model(x)))


def test_cnn_batchnorm_pooling_layouts_and_buffers(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(B, 3, 7, 7)
    y = torch.randint(0, OUT, (B,))
    model = seeded(CNN)
    trace = _record(model, x, tmp_path, lambda out: F.cross_entropy(out, y))
    for name in ("conv", "bn", "pool"):
        assert trace.get(name).meta["layout"] == "NCHW"
        assert trace.get(name, kind="backward").meta["layout"] == "NCHW"
    assert "layout" not in trace.get("head").meta
    assert trace.get("conv.weight", kind="param").meta["layout"] == "OIHW"
    assert trace.get("head.weight", kind="param").meta["layout"] == "OI"
    assert trace.get("bn").meta["op_type"] == "BatchNorm2d"
    assert trace.get("bn").meta["training"] is True
    assert [r.name for r in trace.records("param_grad")] == [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "head.weight", "head.bias"]
    fresh = seeded(CNN)
    assert_trace_matches_autograd(trace, fresh, lambda: F.cross_entropy(fresh(x), y))
    # running statistics are recorded after the forward pass updated them
    mean = trace.get("bn.running_mean", kind="param")
    assert mean.meta["role"] == "running_mean"
    np.testing.assert_array_equal(mean.read(), fresh.bn.running_mean.numpy())
    assert not np.array_equal(mean.read(), np.zeros(5, np.float32))
    assert trace.get("bn.running_var", kind="param").meta["role"] == "running_var"


def test_inplace_relu_gradient_is_taken_before_the_inplace_op(tmp_path):
    torch.manual_seed(1)
    model = seeded(lambda: nn.Sequential(nn.Linear(IN, HID), nn.ReLU(inplace=True), nn.Linear(HID, OUT)))
    x = torch.randn(B, IN)
    trace = _record(model, x, tmp_path, lambda out: out.square().sum())
    pre = x @ model[0].weight.T.detach() + model[0].bias.detach()
    # the Linear's output is recorded before ReLU overwrote it in place
    np.testing.assert_allclose(trace.get("0").read(), pre.numpy(), rtol=1e-6)
    assert trace.get("0").stats["min"] < 0 <= trace.get("1").stats["min"]
    relu_grad = torch.from_numpy(trace.get("1", kind="backward").read())
    expected = relu_grad * (pre > 0)
    np.testing.assert_array_equal(trace.get("0", kind="backward").read(), expected.numpy())


def test_lstm_cell_calls_pair_forward_and_gradient(tmp_path):
    torch.manual_seed(1)
    model = seeded(StepLSTM)
    x = torch.randn(B, 5, IN)
    trace = _record(model, x, tmp_path, lambda out: out.sum())
    calls = [r.call for r in trace.records("forward", name="cell:0")]
    assert calls == [0, 1, 2, 3, 4]
    # backward walks from the loss towards the input: the last call's gradient comes first
    assert [r.call for r in trace.records("backward", name="cell:0")] == [4, 3, 2, 1, 0]
    assert trace.get("cell.weight_hh", kind="param").meta["role"] == "recurrent_weight"
    assert trace.get("cell.weight_ih", kind="param").meta["role"] == "weight"
    assert trace.get("cell.bias_hh", kind="param").meta["role"] == "bias"


def test_parameter_roles_of_attention_and_norm(tmp_path):
    trace = _record(seeded(PreLNBlock), torch.randn(B, 5, 14), tmp_path, lambda out: out.sum())
    roles = {r.name: r.meta["role"] for r in trace.records("param")}
    assert roles["attn.in_proj_weight"] == "weight" and roles["attn.in_proj_bias"] == "bias"
    assert roles["ln1.weight"] == "weight" and roles["mlp.0.bias"] == "bias"
    assert trace.get("attn.out_proj.weight", kind="param").meta["layout"] == "OI"


def test_reused_module_gets_call_indices(tmp_path):
    torch.manual_seed(1)
    trace = _record(seeded(Reuse), torch.randn(B, IN), tmp_path, lambda out: out.sum())
    assert [(r.name, r.call) for r in trace.records("forward")] == [
        ("inp", 0), ("shared", 0), ("shared", 1), ("out", 0), ("<root>", 0)]


def test_dict_outputs_get_key_suffixes(tmp_path):
    torch.manual_seed(1)
    trace = _record(seeded(DictOut), torch.randn(B, IN), tmp_path, lambda out: out["logits"].sum())
    assert [r.name for r in trace.records("forward")] == [
        "fc", "<root>:logits", "<root>:aux:0", "<root>:aux:1"]
    # only the logits reach the loss: the aux outputs get no gradient record
    assert sorted(r.name for r in trace.records("backward")) == ["<root>:logits", "fc"]


def test_inputs_named_by_position_and_key_with_gradients(tmp_path):
    class Two(nn.Module):
        def forward(self, a, b, scale=1.0):
            return a * b * scale

    a = torch.randn(B, IN, requires_grad=True)
    b = torch.randn(B, IN)
    path = tmp_path / "pos.h5"
    tdt.record(Two(), (a, b), path, loss_fn=lambda out: out.sum(), params=False)
    trace = td.open(path)
    assert [r.name for r in trace.records("input")] == ["input:0", "input:1"]
    # only the input that requires grad gets a gradient record: dL/da = b
    (grad,) = trace.records("backward", name="input*")
    assert grad.name == "input:0"
    np.testing.assert_array_equal(grad.read(), b.numpy())
    assert a.grad is not None and not a._backward_hooks

    path = tmp_path / "kw.h5"
    tdt.record(Two(), {"a": a, "b": b, "scale": torch.tensor(2.0)}, path)
    assert [r.name for r in td.open(path).records("input")] == ["input:a", "input:b", "input:scale"]

    path = tmp_path / "one.h5"
    tdt.record(nn.Identity(), b, path)
    assert [r.name for r in td.open(path).records("input")] == ["input"]


@pytest.fixture(scope="module")
def gpt2():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=31, n_positions=13,
                                     bos_token_id=0, eos_token_id=0, use_cache=False)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_huggingface_gpt2_from_config(tmp_path, gpt2):
    ids = torch.randint(0, 31, (B, 13), generator=torch.Generator().manual_seed(3))
    path = tmp_path / "gpt2.h5"
    out = tdt.record(gpt2, {"input_ids": ids, "labels": ids}, path, loss_fn=lambda o: o.loss)
    trace = td.open(path)
    assert trace.framework == "torch" and trace.attrs["model"] == "GPT2LMHeadModel"
    forward_names = {r.name for r in trace.records("forward")}
    # transformer.h is a ModuleList (never called); SDPA attention never calls attn_dropout
    module_names = {n for n, _ in gpt2.named_modules()
                    if n and n not in ("transformer.h", "transformer.h.0.attn.attn_dropout")}
    assert module_names <= {n.split(":")[0] for n in forward_names}
    assert {"<root>:loss", "<root>:logits", "transformer:last_hidden_state"} <= forward_names
    np.testing.assert_array_equal(trace.get("<root>:logits").read(), out.logits.detach().numpy())
    assert trace.get("loss", kind="loss").read() == out.loss.item()
    backward_names = {r.name for r in trace.records("backward")}
    assert {"transformer.h.0.attn:0", "transformer.h.0.mlp.c_fc", "transformer.wte"} <= backward_names
    assert trace.get("transformer.wte.weight", kind="param").meta["role"] == "embedding"
    c_attn = trace.get("transformer.h.0.attn.c_attn.weight", kind="param")
    assert c_attn.meta["layout"] == "IO" and c_attn.shape == (16, 48)
    assert trace.get("transformer.h.0.attn:0").meta["training"] is False
    grads = {r.name for r in trace.records("param_grad")}
    assert grads == {n for n, p in gpt2.named_parameters()}
