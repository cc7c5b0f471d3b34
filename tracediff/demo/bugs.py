"""The catalogue of planted bugs: each is a flag one of the NumPy nets accepts, with the record
the diff engine must name for it.

``layer`` is the reference's (torch) name of the record that first goes wrong; ``where`` says
which part of the report names it: ``forward`` (first_divergence.forward), ``backward``
(first_divergence.backward: a layer's backward bug shows in the gradient of that layer's
*input*, i.e. the record of the layer before it) or ``param_grad`` (a diverged parameter-gradient
pair while every activation and activation gradient matches).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import TraceDiffError


@dataclass(frozen=True)
class Bug:
    id: str
    net: str      # "mlp" | "cnn" | "transformer"
    where: str    # "forward" | "backward" | "param_grad"
    layer: str    # reference name of the record that must be named
    summary: str


CATALOGUE = (
    # forward bugs
    Bug("missing_bias", "mlp", "forward", "fc2", "fc2 forgets to add its bias"),
    Bug("wrong_activation", "mlp", "forward", "act2", "act2 applies tanh where the reference has ReLU"),
    Bug("wrong_padding", "cnn", "forward", "conv2",
        "conv2 pads 2 columns on the left and none on the right (same shape, shifted by one column)"),
    Bug("flipped_kernel", "cnn", "forward", "conv1",
        "conv1 convolves with the kernel rotated by 180 degrees (convolution vs cross-correlation)"),
    Bug("wrong_flatten_order", "cnn", "forward", "flatten",
        "flatten reads the feature map channels-last (NHWC) where the reference flattens NCHW"),
    Bug("layernorm_eps", "transformer", "forward", "ln2", "ln2 uses eps=1e-3 instead of 1e-5"),
    Bug("gelu_tanh", "transformer", "forward", "act",
        "the feed-forward GELU uses the tanh approximation instead of the exact erf form"),
    Bug("missing_attention_scaling", "transformer", "forward", "attn.scores",
        "attention scores are not divided by sqrt(d_model)"),
    # shape bug
    Bug("transposed_output", "mlp", "forward", "fc1",
        "fc1 and act1 keep their output feature-major, [hidden, batch] instead of [batch, hidden]"),
    # backward bugs
    Bug("wrong_activation_derivative", "mlp", "backward", "fc1",
        "act1's backward multiplies by relu(x) instead of the step 1[x > 0]"),
    Bug("skipped_residual_gradient", "transformer", "backward", "res1",
        "res2's backward drops the skip path, so dL/d res1 misses a term"),
    Bug("pool_gradient_spread", "cnn", "backward", "act1",
        "pool1's backward spreads the gradient over each window instead of routing it to the max"),
    # weight-gradient bugs
    Bug("weight_grad_double_mean", "mlp", "param_grad", "fc2.weight",
        "fc2's weight gradient divides by the batch size a second time"),
    Bug("weight_grad_transposed", "mlp", "param_grad", "fc1.weight",
        "fc1's weight gradient is x^T dy, [in, out]: the transpose is missing"),
    Bug("square_weight_grad_transposed", "transformer", "param_grad", "attn.o.weight",
        "attn.o's (square) weight gradient is transposed"),
    Bug("flipped_weight_grad", "cnn", "param_grad", "conv2.weight",
        "conv2's kernel gradient comes out rotated by 180 degrees"),
)

BY_ID = {bug.id: bug for bug in CATALOGUE}
NETS = ("mlp", "cnn", "transformer")


def get(bug_id: str) -> Bug:
    try:
        return BY_ID[bug_id]
    except KeyError:
        raise TraceDiffError(
            f"unknown planted bug {bug_id!r}: choose one of {', '.join(BY_ID)}") from None


def for_net(net: str) -> list:
    return [bug for bug in CATALOGUE if bug.net == net]


def check(net: str, bug_ids) -> frozenset:
    """The bug ids as a set, refusing ids that are unknown or belong to another net."""
    ids = frozenset(bug_ids or ())
    for bug_id in ids:
        bug = get(bug_id)
        if bug.net != net:
            raise TraceDiffError(
                f"planted bug {bug_id!r} belongs to the {bug.net} net, not {net}: "
                f"the {net} net accepts {', '.join(b.id for b in for_net(net))}")
    return ids
