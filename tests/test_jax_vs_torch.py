"""Flax ports of PyTorch models (weights copied torch -> Flax: Dense kernel = W.T, Conv kernel
OIHW -> HWIO, NHWC inputs), recorded with tracediff.adapters.jax and diffed against the torch
trace: a correct port reports nothing through channels-last activations and the flatten, and a
planted bug (a wrong activation, a missing bias, a wrong hand-written gradient) is named at its
layer."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
flax = pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import jax as tdj  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from torch_references import (C, DIMS, H, K, LABELS, N, W, cnn_reference,  # noqa: E402,F401
                              diverging, features, images, mlp_reference, numpy_of, values_differ)


def jax_loss(output):
    log_probs = jax.nn.log_softmax(output, axis=-1)
    return -jnp.take_along_axis(log_probs, jnp.asarray(LABELS)[:, None], axis=-1).mean()


@jax.custom_vjp
def relu_wrong_grad(x):
    return jax.nn.relu(x)


def _relu_fwd(x):
    return jax.nn.relu(x), x


def _relu_bwd(x, g):
    return (g * (x > 0) * 0.5,)   # the planted bug: half the true gradient


relu_wrong_grad.defvjp(_relu_fwd, _relu_bwd)


# -- the Flax ports -----------------------------------------------------------------------
class Act(nn.Module):
    fn: object = jax.nn.relu

    def __call__(self, x):
        return self.fn(x)


class Pool(nn.Module):
    def __call__(self, x):
        return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


class Flatten(nn.Module):
    def __call__(self, x):
        return x.reshape(x.shape[0], -1)


class LinenMLP(nn.Module):
    activation: object = jax.nn.relu
    fc1_bias: bool = True

    @nn.compact
    def __call__(self, x):
        h = Act(self.activation, name="act")(nn.Dense(H, use_bias=self.fc1_bias, name="fc1")(x))
        return nn.Dense(K, name="fc2")(h)


class LinenCNN(nn.Module):
    activation: object = jax.nn.relu

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(C, (3, 5), padding=((1, 1), (2, 2)), name="conv")(x)
        h = nn.BatchNorm(use_running_average=True, epsilon=1e-5, momentum=0.9, name="bn")(h)
        h = Flatten(name="flat")(Pool(name="pool")(Act(self.activation, name="act")(h)))
        return nn.Dense(K, name="fc")(h)


def dense(linear):
    return {"kernel": numpy_of(linear.weight).T, "bias": numpy_of(linear.bias)}


def linen_mlp_variables(reference, fc1_bias=True):
    fc1 = dense(reference.fc1)
    if not fc1_bias:
        del fc1["bias"]
    return {"params": {"fc1": fc1, "fc2": dense(reference.fc2)}}


def linen_cnn_variables(reference, reorder_flatten=True):
    conv, bn, fc = reference.conv, reference.bn, reference.fc
    # Flax flattens NHWC activations in H, W, C order: reorder the kernel's rows to match.
    kernel = numpy_of(fc.weight).reshape(K, C, H, W).transpose(2, 3, 1, 0).reshape(H * W * C, K)
    if not reorder_flatten:
        kernel = numpy_of(fc.weight).T               # the classic porting bug
    return {"params": {"conv": {"kernel": numpy_of(conv.weight).transpose(2, 3, 1, 0),  # OIHW->HWIO
                                "bias": numpy_of(conv.bias)},
                       "bn": {"scale": numpy_of(bn.weight), "bias": numpy_of(bn.bias)},
                       "fc": {"kernel": kernel, "bias": numpy_of(fc.bias)}},
            "batch_stats": {"bn": {"mean": numpy_of(bn.running_mean),
                                   "var": numpy_of(bn.running_var)}}}


class NnxAct(nnx.Module):
    def __call__(self, x):
        return jax.nn.relu(x)


class NnxMLP(nnx.Module):
    def __init__(self, reference):
        rngs = nnx.Rngs(0)
        self.fc1, self.act, self.fc2 = nnx.Linear(W, H, rngs=rngs), NnxAct(), nnx.Linear(H, K, rngs=rngs)
        for name in ("fc1", "fc2"):
            linear, copied = getattr(self, name), dense(getattr(reference, name))
            linear.kernel[...] = jnp.asarray(copied["kernel"])
            linear.bias[...] = jnp.asarray(copied["bias"])

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


# -- fixtures and helpers ------------------------------------------------------------------
def record_linen_mlp(reference, features, tmp_path, name, **options):
    fc1_bias = options.get("fc1_bias", True)
    path = tmp_path / f"{name}.h5"
    output = tdj.record(LinenMLP(**options), features, path, params=linen_mlp_variables(
        reference, fc1_bias), loss_fn=jax_loss, dims=DIMS)
    return path, np.asarray(output)


def record_linen_cnn(reference, images, tmp_path, name, **options):
    path = tmp_path / f"{name}.h5"
    output = tdj.record(LinenCNN(**options), images.transpose(0, 2, 3, 1), path,
                        params=linen_cnn_variables(reference), loss_fn=jax_loss, dims=DIMS)
    return path, np.asarray(output)


# -- correct ports ------------------------------------------------------------------------
def test_correct_linen_mlp_port_reports_no_divergence(mlp_reference, features, tmp_path):
    reference, torch_path, torch_output = mlp_reference
    path, output = record_linen_mlp(reference, features, tmp_path, "mlp")
    np.testing.assert_allclose(output, torch_output, rtol=1e-5, atol=1e-6)
    report = td.diff(path, torch_path)
    assert diverging(report) == []
    assert report.ok and report.first_divergence.backward is None
    pairs = {(p.a_name, p.kind): p for p in report.pairs}
    assert {name: pairs[(name, "forward")].b_name for name in ("fc1", "act", "fc2", "<root>")} \
        == {"fc1": "fc1", "act": "act", "fc2": "fc2", "<root>": "<root>"}
    assert {name: pairs[(name, "backward")].status for name in ("fc1", "act", "fc2")} \
        == {"fc1": "ok", "act": "ok", "fc2": "ok"}
    kernel = pairs[("fc1.kernel", "param_grad")]
    assert (kernel.b_name, kernel.status, kernel.diverged) == ("fc1.weight", "layout", False)
    assert pairs[("fc2.bias", "param_grad")].b_name == "fc2.bias"


def test_correct_nnx_mlp_port_reports_no_divergence(mlp_reference, features, tmp_path):
    reference, torch_path, torch_output = mlp_reference
    path = tmp_path / "nnx.h5"
    output = tdj.record(NnxMLP(reference), features, path, loss_fn=jax_loss, dims=DIMS)
    np.testing.assert_allclose(np.asarray(output), torch_output, rtol=1e-5, atol=1e-6)
    report = td.diff(path, torch_path)
    assert diverging(report) == [] and report.ok
    assert {p.a_name for p in report.pairs if p.kind == "backward"} == {"fc1", "act", "fc2", "<root>"}
    assert report.unmatched == {"a": [], "b": []}


def test_correct_cnn_port_matches_every_record_up_to_layout(cnn_reference, images, tmp_path):
    reference, torch_path, torch_output = cnn_reference
    path, output = record_linen_cnn(reference, images, tmp_path, "cnn")
    np.testing.assert_allclose(output, torch_output, rtol=1e-4, atol=1e-5)
    report = td.diff(path, torch_path)
    assert diverging(report) == [] and report.ok
    assert report.first_divergence.forward is None and report.first_divergence.backward is None
    assert report.unmatched == {"a": [], "b": ["bn.num_batches_tracked"]}
    forward = {p.a_name: p for p in report.pairs if p.kind == "forward"}
    for name in ("conv", "bn", "act", "pool"):
        assert (forward[name].b_name, forward[name].status) == (name, "layout"), name
    assert forward["flat"].status == "layout"
    assert "flattened from [batch, height, width, channels]" in forward["flat"].hint
    params = {(p.a_name, p.kind): p for p in report.pairs if p.kind in ("param", "param_grad")}
    kernel = params[("conv.kernel", "param_grad")]
    assert (kernel.b_name, kernel.status, kernel.diverged) == ("conv.weight", "layout", False)
    assert params[("bn.var", "param")].b_name == "bn.running_var"
    layouts = {(r.kind, r.name): r.meta.get("layout") for r in td.open(path)}
    assert layouts[("forward", "conv")] == layouts[("input", "input")] == "NHWC"
    assert layouts[("param", "conv.kernel")] == "HWIO"
    assert layouts[("forward", "flat")] == "N(HWC)"


# -- planted bugs ---------------------------------------------------------------------------
def test_mlp_port_with_the_wrong_activation_is_named(mlp_reference, features, tmp_path):
    reference, torch_path, _ = mlp_reference
    path, _ = record_linen_mlp(reference, features, tmp_path, "mlp_tanh", activation=jnp.tanh)
    report = td.diff(path, torch_path)
    assert not report.ok
    first = report.first_divergence.forward
    assert (first.a_name, first.b_name, first.status) == ("act", "act", "diverged")
    statuses = {(p.kind, p.a_name): p.status for p in report.pairs}
    assert statuses[("forward", "fc1")] == "ok"
    # backward: the loss sees a different output, so the first gradient from the loss already
    # differs; the report traces it back to the activation
    backward = report.first_divergence.backward
    assert (backward.a_name, backward.introduced["verdict"]) == ("fc2", "inherited")
    assert "the forward pass already diverges at act" in backward.introduced["reason"]
    assert statuses[("backward", "fc1")] == "diverged"


def test_mlp_port_missing_a_bias_is_named_at_that_dense(mlp_reference, features, tmp_path):
    reference, torch_path, _ = mlp_reference
    path, _ = record_linen_mlp(reference, features, tmp_path, "mlp_nobias", fc1_bias=False)
    report = td.diff(path, torch_path)
    first = report.first_divergence.forward
    assert (first.a_name, first.status) == ("fc1", "diverged")
    assert "fc1.bias" in report.unmatched["b"]
    assert "the forward pass already diverges at fc1" in \
        report.first_divergence.backward.introduced["reason"]


def test_wrong_hand_written_gradient_is_named_backward_only(mlp_reference, features, tmp_path):
    """A custom_vjp activation with the right forward and half the gradient: the forward pass
    matches, and the first wrong gradient is the one the activation hands back to fc1."""
    reference, torch_path, _ = mlp_reference
    path, _ = record_linen_mlp(reference, features, tmp_path, "mlp_vjp", activation=relu_wrong_grad)
    report = td.diff(path, torch_path)
    assert report.first_divergence.forward is None
    backward = report.first_divergence.backward
    assert (backward.a_name, backward.status) == ("fc1", "diverged")
    assert backward.introduced["verdict"] == "introduced here"
    assert "a = 0.5 x b: a constant scale factor" in backward.hint
    statuses = {(p.kind, p.a_name): p.status for p in report.pairs}
    assert statuses[("backward", "act")] == "ok"
    assert statuses[("param_grad", "fc1.kernel")] != "ok"


def test_cnn_port_with_the_wrong_activation_is_named(cnn_reference, images, tmp_path):
    reference, torch_path, _ = cnn_reference
    path, _ = record_linen_cnn(reference, images, tmp_path, "cnn_bad", activation=jax.nn.sigmoid)
    report = td.diff(path, torch_path)
    assert not report.ok
    assert values_differ(report)[0] == "act"
    first = report.first_divergence.forward
    assert first.a_name == "act"
    assert "values differ even after permuting" in first.hint


# -- the pre-LayerNorm transformer block of the planted-bug suite (tests/diff_nets.py) -------
SEQ, D, HIDDEN, CLASSES = 13, 17, 29, 5
BLOCK_LABELS = np.array([1, 4, 0])


class Identity(nn.Module):
    def __call__(self, x):
        return x


class Softmax(nn.Module):
    def __call__(self, x):
        return jax.nn.softmax(x, axis=-1)


class Attention(nn.Module):
    scale: bool = True

    @nn.compact
    def __call__(self, x):
        q, k, v = (nn.Dense(D, name=n)(x) for n in ("q", "k", "v"))
        s = q @ jnp.swapaxes(k, -1, -2)
        if self.scale:
            s = s / np.sqrt(D).astype(np.float32)
        return nn.Dense(D, name="o")(Softmax(name="softmax")(Identity(name="scores")(s)) @ v)


class Block(nn.Module):
    scale: bool = True
    gelu_tanh: bool = False

    @nn.compact
    def __call__(self, x):
        x = x + Attention(self.scale, name="attn")(nn.LayerNorm(epsilon=1e-5, name="ln1")(x))
        h = nn.Dense(HIDDEN, name="fc1")(nn.LayerNorm(epsilon=1e-5, name="ln2")(x))
        x = x + nn.Dense(D, name="fc2")(Act(lambda h: nn.gelu(h, approximate=self.gelu_tanh),
                                            name="act")(h))
        return nn.Dense(CLASSES, name="head")(x.mean(axis=1))


def block_variables(reference):
    params = {name: dense(getattr(reference, name)) for name in ("fc1", "fc2", "head")}
    params["attn"] = {name: dense(getattr(reference.attn, name)) for name in ("q", "k", "v", "o")}
    for name in ("ln1", "ln2"):
        norm = getattr(reference, name)
        params[name] = {"scale": numpy_of(norm.weight), "bias": numpy_of(norm.bias)}
    return {"params": params}


@pytest.fixture(scope="module")
def block_reference(tmp_path_factory):
    from diff_nets import Block as TorchBlock
    torch.manual_seed(4)
    model = TorchBlock(D).eval()
    tokens = np.random.default_rng(5).standard_normal((N, SEQ, D)).astype(np.float32)
    path = tmp_path_factory.mktemp("torch") / "block.h5"
    tdt.record(model, torch.from_numpy(tokens), path, dims={"batch": N, "seq": SEQ, "model": D},
               loss_fn=lambda out: torch.nn.functional.cross_entropy(out, torch.from_numpy(BLOCK_LABELS)))
    return model, tokens, path


def block_report(block_reference, tmp_path, name, **options):
    reference, tokens, torch_path = block_reference
    path = tmp_path / f"{name}.h5"

    def loss(out):
        log_probs = jax.nn.log_softmax(out, axis=-1)
        return -jnp.take_along_axis(log_probs, jnp.asarray(BLOCK_LABELS)[:, None], axis=-1).mean()

    tdj.record(Block(**options), tokens, path, params=block_variables(reference), loss_fn=loss,
               dims={"batch": N, "seq": SEQ, "model": D})
    return td.diff(path, torch_path)


def test_correct_transformer_block_port_reports_no_divergence(block_reference, tmp_path):
    report = block_report(block_reference, tmp_path, "block")
    assert diverging(report) == [] and report.ok
    names = {p.a_name for p in report.pairs if p.kind == "backward"}
    assert {"ln1", "attn.q", "attn.scores", "attn.softmax", "attn", "ln2", "fc1", "act", "fc2",
            "head"} <= names


def test_block_port_without_the_attention_scale_is_named_at_the_scores(block_reference, tmp_path):
    report = block_report(block_reference, tmp_path, "noscale", scale=False)
    first = report.first_divergence.forward
    assert (first.a_name, first.status) == ("attn.scores", "diverged")
    assert "constant scale factor" in first.hint


def test_block_port_with_flax_default_tanh_gelu_is_named_at_the_activation(block_reference, tmp_path):
    """Flax's nn.gelu is the tanh approximation by default; torch's nn.GELU is exact."""
    report = block_report(block_reference, tmp_path, "tanh", gelu_tanh=True)
    assert report.first_divergence.forward.a_name == "act"
