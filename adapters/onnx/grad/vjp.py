"""Vector-Jacobian products of ONNX ops, one function per op type.

``RULES[op_type](g, node, dys) -> list`` receives the gradient emitter ``g`` (see
``graph.Emitter``), the forward node and the gradients of the node's outputs (``None`` where
an output does not reach the loss), and returns the gradients of the node's inputs by position
(``None`` where an input gets none). A rule only emits nodes through ``g``; to support a new op,
add one function decorated with ``@rule("OpType")``. Rules assume opset >= 18 semantics (the
builder converts older models first).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from onnx import helper

from ....errors import TraceDiffError

RULES = {}
# op type -> input positions whose values a rule reads (``g.value``): where such an input is
# computed (a Concat of constants, as the legacy exporter writes Resize scales), the builder
# evaluates it from the feeds first
NEEDS_VALUES = {"Resize": (2,)}


def rule(*op_types):
    def register(fn):
        for op_type in op_types:
            RULES[op_type] = fn
        return fn
    return register


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node, i):
    """The node's i-th input name, or '' when absent."""
    return node.input[i] if len(node.input) > i else ""


def _unsupported(node, why):
    return TraceDiffError(f"no gradient rule for op {node.op_type} (node {node.name}) {why}")


# -- pass-through and shape ops -----------------------------------------------------------------
@rule("Identity")
def identity(g, node, dys):
    return [dys[0]]


@rule("Dropout")
def dropout(g, node, dys):
    training = _input(node, 2)
    if training and not (g.value(training) is not None and not bool(g.value(training))):
        raise _unsupported(node, "in training mode: export the model in eval mode")
    return [dys[0], None, None]


@rule("Cast")
def cast(g, node, dys):
    x = node.input[0]
    return [g.op("Cast", [dys[0]], to=g.elem(x), like=x) if g.wants(x) else None]


@rule("CastLike")
def cast_like(g, node, dys):
    x = node.input[0]
    return [g.op("CastLike", [dys[0], x], like=x) if g.wants(x) else None, None]


@rule("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape_back(g, node, dys):
    x = node.input[0]
    return [g.op("Reshape", [dys[0], g.shape_of(x)], like=x)]


@rule("Transpose")
def transpose(g, node, dys):
    x = node.input[0]
    perm = attr(node, "perm") or list(reversed(range(g.rank(x))))
    return [g.op("Transpose", [dys[0]], perm=[int(i) for i in np.argsort(perm)], like=x)]


@rule("Expand")
def expand(g, node, dys):
    return [g.unbroadcast(dys[0], node.output[0], node.input[0]), None]


@rule("Concat")
def concat(g, node, dys):
    axis = attr(node, "axis") % g.rank(node.output[0])
    sizes = g.op("Concat", [g.op("Shape", [x], start=axis, end=axis + 1) for x in node.input],
                 axis=0)
    parts = g.op("Split", [dys[0], sizes], axis=axis, outputs=len(node.input))
    for x, part in zip(node.input, parts):
        g.same_type(part, x)
    return parts


@rule("Split")
def split(g, node, dys):
    x = node.input[0]
    axis = attr(node, "axis", 0)
    parts = [dy if dy is not None else g.zeros_like(y) for dy, y in zip(dys, node.output)]
    return [g.op("Concat", parts, axis=axis, like=x), None]


@rule("Slice")
def slice_(g, node, dys):
    picks = list(node.input[1:])
    return [g.scatter_back(node.input[0], dys[0], lambda idx: g.op("Slice", [idx] + picks))]


@rule("Gather")
def gather(g, node, dys):
    indices, axis = node.input[1], attr(node, "axis", 0)
    return [g.scatter_back(node.input[0], dys[0],
                           lambda idx: g.op("Gather", [idx, indices], axis=axis)), None]


@rule("GatherElements")
def gather_elements(g, node, dys):
    indices, axis = node.input[1], attr(node, "axis", 0)
    return [g.scatter_back(node.input[0], dys[0],
                           lambda idx: g.op("GatherElements", [idx, indices], axis=axis)), None]


# -- elementwise arithmetic (broadcasting) ------------------------------------------------------
@rule("Add")
def add(g, node, dys):
    y = node.output[0]
    return [g.unbroadcast(dys[0], y, x) for x in node.input]


@rule("Sum")
def sum_(g, node, dys):
    y = node.output[0]
    return [g.unbroadcast(dys[0], y, x) for x in node.input]


@rule("Sub")
def sub(g, node, dys):
    (a, b), y, dy = node.input, node.output[0], dys[0]
    return [g.unbroadcast(dy, y, a),
            g.unbroadcast(g.op("Neg", [dy], like=y), y, b) if g.wants(b) else None]


@rule("Mul")
def mul(g, node, dys):
    (a, b), y, dy = node.input, node.output[0], dys[0]
    return [g.unbroadcast(g.op("Mul", [dy, b], like=y), y, a) if g.wants(a) else None,
            g.unbroadcast(g.op("Mul", [dy, a], like=y), y, b) if g.wants(b) else None]


@rule("Div")
def div(g, node, dys):
    (a, b), y, dy = node.input, node.output[0], dys[0]
    da = g.op("Div", [dy, b], like=y) if g.wants(a) else None
    db = None
    if g.wants(b):
        db = g.op("Neg", [g.op("Div", [g.op("Mul", [dy, y], like=y), b], like=y)], like=y)
    return [g.unbroadcast(da, y, a) if da else None, g.unbroadcast(db, y, b) if db else None]


@rule("Neg")
def neg(g, node, dys):
    return [g.op("Neg", [dys[0]], like=node.input[0])]


@rule("Pow")
def pow_(g, node, dys):
    (a, b), y, dy = node.input, node.output[0], dys[0]
    exponent = b if g.elem(b) == g.elem(a) else g.op("Cast", [b], to=g.elem(a))
    da = db = None
    if g.wants(a):
        lowered = g.op("Pow", [a, g.op("Sub", [exponent, g.scalar(1.0, a)])])
        da = g.unbroadcast(g.op("Mul", [dy, g.op("Mul", [exponent, lowered])], like=y), y, a)
    if g.wants(b):
        db = g.unbroadcast(g.op("Mul", [g.op("Mul", [dy, y]), g.op("Log", [a])], like=y), y, b)
    return [da, db]


@rule("Where")
def where(g, node, dys):
    (cond, a, b), y, dy = node.input, node.output[0], dys[0]
    zero = g.scalar(0.0, y)
    return [None,
            g.unbroadcast(g.op("Where", [cond, dy, zero], like=y), y, a) if g.wants(a) else None,
            g.unbroadcast(g.op("Where", [cond, zero, dy], like=y), y, b) if g.wants(b) else None]


# -- elementwise functions ------------------------------------------------------------------------
@rule("Relu")
def relu(g, node, dys):
    y = node.output[0]  # sign(relu(x)) is the 0/1 slope, in one op (Where is slow in ORT)
    return [g.op("Mul", [dys[0], g.op("Sign", [y])], like=y)]


@rule("LeakyRelu")
def leaky_relu(g, node, dys):
    x, dy = node.input[0], dys[0]
    positive = g.op("Greater", [x, g.scalar(0.0, x)])
    leaked = g.op("Mul", [dy, g.scalar(attr(node, "alpha", 0.01), x)])
    return [g.op("Where", [positive, dy, leaked], like=x)]


@rule("Sigmoid")
def sigmoid(g, node, dys):
    y = node.output[0]
    slope = g.op("Mul", [y, g.op("Sub", [g.scalar(1.0, y), y])])
    return [g.op("Mul", [dys[0], slope], like=y)]


@rule("Tanh")
def tanh(g, node, dys):
    y = node.output[0]
    slope = g.op("Sub", [g.scalar(1.0, y), g.op("Mul", [y, y])])
    return [g.op("Mul", [dys[0], slope], like=y)]


@rule("Erf")
def erf(g, node, dys):
    x = node.input[0]
    bell = g.op("Exp", [g.op("Neg", [g.op("Mul", [x, x])])])
    return [g.op("Mul", [dys[0], g.op("Mul", [bell, g.scalar(2 / math.sqrt(math.pi), x)])],
                 like=x)]


@rule("Gelu")
def gelu(g, node, dys):
    x = node.input[0]
    half = g.scalar(0.5, x)
    if attr(node, "approximate", "none") == "tanh":
        c, k = math.sqrt(2 / math.pi), 0.044715
        x2 = g.op("Mul", [x, x])
        cubic = g.op("Add", [x, g.op("Mul", [g.scalar(k, x), g.op("Mul", [x2, x])])])
        t = g.op("Tanh", [g.op("Mul", [g.scalar(c, x), cubic])])
        slope_cubic = g.op("Add", [g.scalar(1.0, x), g.op("Mul", [g.scalar(3 * k, x), x2])])
        d_inner = g.op("Mul", [g.scalar(c, x), slope_cubic])
        left = g.op("Mul", [half, g.op("Add", [g.scalar(1.0, x), t])])
        sech2 = g.op("Sub", [g.scalar(1.0, x), g.op("Mul", [t, t])])
        right = g.op("Mul", [g.op("Mul", [half, x]), g.op("Mul", [sech2, d_inner])])
        slope = g.op("Add", [left, right])
    else:
        cdf = g.op("Mul", [half, g.op("Add", [g.scalar(1.0, x), g.op(
            "Erf", [g.op("Mul", [x, g.scalar(1 / math.sqrt(2), x)])])])])
        pdf = g.op("Mul", [g.scalar(1 / math.sqrt(2 * math.pi), x), g.op(
            "Exp", [g.op("Mul", [g.scalar(-0.5, x), g.op("Mul", [x, x])])])])
        slope = g.op("Add", [cdf, g.op("Mul", [x, pdf])])
    return [g.op("Mul", [dys[0], slope], like=x)]


@rule("Abs")
def abs_(g, node, dys):
    x = node.input[0]
    return [g.op("Mul", [dys[0], g.op("Sign", [x])], like=x)]


@rule("Reciprocal")
def reciprocal(g, node, dys):
    y = node.output[0]
    return [g.op("Neg", [g.op("Mul", [dys[0], g.op("Mul", [y, y])])], like=y)]


@rule("Softplus")
def softplus(g, node, dys):
    x = node.input[0]
    return [g.op("Mul", [dys[0], g.op("Sigmoid", [x])], like=x)]


def _hard_sigmoid_slope(g, x, alpha, beta):
    """alpha where 0 < alpha * x + beta < 1, else 0; and hard_sigmoid(x) itself."""
    inner = g.op("Add", [g.op("Mul", [x, g.scalar(alpha, x)]), g.scalar(beta, x)])
    inside = g.op("And", [g.op("Greater", [inner, g.scalar(0.0, x)]),
                          g.op("Less", [inner, g.scalar(1.0, x)])])
    slope = g.op("Where", [inside, g.scalar(alpha, x), g.scalar(0.0, x)])
    value = g.op("Clip", [inner, g.scalar(0.0, x), g.scalar(1.0, x)])
    return slope, value


@rule("HardSigmoid")
def hard_sigmoid(g, node, dys):
    x = node.input[0]
    slope, _ = _hard_sigmoid_slope(g, x, attr(node, "alpha", 0.2), attr(node, "beta", 0.5))
    return [g.op("Mul", [dys[0], slope], like=x)]


@rule("HardSwish")
def hard_swish(g, node, dys):
    x = node.input[0]
    slope, value = _hard_sigmoid_slope(g, x, 1 / 6, 0.5)
    return [g.op("Mul", [dys[0], g.op("Add", [value, g.op("Mul", [x, slope])])], like=x)]


@rule("Clip")
def clip(g, node, dys):
    """The gradient passes where min <= x <= max (torch.clamp's convention); a float bound
    takes the gradient of the elements clipped to it."""
    x, y, dy = node.input[0], node.output[0], dys[0]
    low, high = _input(node, 1), _input(node, 2)
    zero = g.scalar(0.0, x)
    passed = dy
    grads = [None, None, None]
    for i, (bound, outside_op) in enumerate(((low, "Less"), (high, "Greater")), start=1):
        if not bound:
            continue
        outside = g.op(outside_op, [x, bound])
        passed = g.op("Where", [outside, zero, passed])
        if g.wants(bound):
            grads[i] = g.unbroadcast(g.op("Where", [outside, dy, zero], like=y), y, bound)
    grads[0] = passed
    return grads


@rule("Max", "Min")
def max_min(g, node, dys):
    """Each input takes the gradient where it is the result (every tied input does)."""
    y, dy = node.output[0], dys[0]
    zero = g.scalar(0.0, y)
    return [g.unbroadcast(g.op("Where", [g.op("Equal", [x, y]), dy, zero], like=y), y, x)
            if g.wants(x) else None for x in node.input]


@rule("Sqrt")
def sqrt(g, node, dys):
    y = node.output[0]
    return [g.op("Div", [g.op("Mul", [dys[0], g.scalar(0.5, y)]), y], like=y)]


@rule("Exp")
def exp(g, node, dys):
    return [g.op("Mul", [dys[0], node.output[0]], like=node.output[0])]


@rule("Log")
def log(g, node, dys):
    return [g.op("Div", [dys[0], node.input[0]], like=node.input[0])]


@rule("Softmax")
def softmax(g, node, dys):
    y, dy = node.output[0], dys[0]
    dot = g.reduce("ReduceSum", g.op("Mul", [dy, y]), [attr(node, "axis", -1)], keepdims=1)
    return [g.op("Mul", [y, g.op("Sub", [dy, dot])], like=y)]


@rule("LogSoftmax")
def log_softmax(g, node, dys):
    y, dy = node.output[0], dys[0]
    total = g.reduce("ReduceSum", dy, [attr(node, "axis", -1)], keepdims=1)
    return [g.op("Sub", [dy, g.op("Mul", [g.op("Exp", [y]), total])], like=y)]


# -- reductions -----------------------------------------------------------------------------------
def _reduced_axes(g, node):
    """The axes tensor of a Reduce* node ('' for every axis), or None for a no-op reduction."""
    axes = _input(node, 1)
    if not axes and attr(node, "axes") is not None:  # before opset 18 axes were an attribute
        axes = g.int64s(attr(node, "axes"))
    if axes and g.value(axes) is not None and g.value(axes).size == 0:
        return None if attr(node, "noop_with_empty_axes", 0) else ""
    return axes


def _kept(g, node, axes, reduced):
    """A reduced tensor with its reduced axes back as size 1, to broadcast against the input."""
    return g.op("Unsqueeze", [reduced, axes]) if axes and not attr(node, "keepdims", 1) \
        else reduced


@rule("ReduceSum", "ReduceMean")
def reduce_(g, node, dys):
    x, y, dy = node.input[0], node.output[0], dys[0]
    axes = _reduced_axes(g, node)
    if axes is None:
        return [dy, None]
    dy = _kept(g, node, axes, dy)
    if node.op_type == "ReduceMean":
        dy = g.op("Div", [dy, g.count_ratio(x, y)])
    return [g.op("Expand", [dy, g.shape_of(x)], like=x), None]


@rule("ReduceMax", "ReduceMin")
def reduce_extreme(g, node, dys):
    """The gradient goes to the elements equal to the result, shared evenly between ties
    (as torch.amax/amin share it)."""
    x, y, dy = node.input[0], node.output[0], dys[0]
    axes = _reduced_axes(g, node)
    if axes is None:
        return [dy, None]
    hit = g.op("Cast", [g.op("Equal", [x, _kept(g, node, axes, y)])], to=g.elem(x))
    ties = g.op("ReduceSum", [hit] + ([axes] if axes else []), keepdims=1)
    share = g.op("Div", [_kept(g, node, axes, dy), ties])
    return [g.op("Mul", [hit, share], like=x), None]


@rule("GlobalAveragePool")
def global_average_pool(g, node, dys):
    x, y = node.input[0], node.output[0]
    return [g.op("Expand", [g.op("Div", [dys[0], g.count_ratio(x, y)]), g.shape_of(x)], like=x)]


# -- linear algebra -------------------------------------------------------------------------------
@rule("Gemm")
def gemm(g, node, dys):
    a, b = node.input[0], node.input[1]
    c, y, dy = _input(node, 2), node.output[0], dys[0]
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    ta, tb = attr(node, "transA", 0), attr(node, "transB", 0)
    da = db = dc = None
    if g.wants(a):
        da = (g.op("Gemm", [b, dy], alpha=alpha, transA=tb, transB=1, like=a) if ta else
              g.op("Gemm", [dy, b], alpha=alpha, transB=1 - tb, like=a))
    if g.wants(b):
        db = (g.op("Gemm", [dy, a], alpha=alpha, transA=1, transB=ta, like=b) if tb else
              g.op("Gemm", [a, dy], alpha=alpha, transA=1 - ta, like=b))
    if c and g.wants(c):
        scaled = dy if beta == 1.0 else g.op("Mul", [dy, g.scalar(beta, y)], like=y)
        dc = g.unbroadcast(scaled, y, c)
    return [da, db, dc]


@rule("MatMul")
def matmul(g, node, dys):
    (a, b), dy = node.input, dys[0]
    a_shape, b_shape = list(g.known_shape(a)), list(g.known_shape(b))
    a2, b2, dy2 = a, b, dy
    if len(a_shape) == 1:  # numpy semantics: a vector is a [1, K] matrix whose row is dropped
        a2, a_shape = g.op("Unsqueeze", [a, g.int64s([0])]), [1] + a_shape
        dy2 = g.op("Unsqueeze", [dy2, g.int64s([-2])])
    if len(b_shape) == 1:
        b2, b_shape = g.op("Unsqueeze", [b, g.int64s([1])]), b_shape + [1]
        dy2 = g.op("Unsqueeze", [dy2, g.int64s([-1])])
    batch = _broadcast(a_shape[:-2], b_shape[:-2])

    def summed(product, x, x2, x_shape):
        grad = g.unbroadcast(product, tuple(batch + x_shape[-2:]), x2, to_shape=tuple(x_shape))
        if x2 != x:
            grad = g.op("Reshape", [grad, g.shape_of(x)])
        return g.same_type(grad, x)

    da = db = None
    if g.wants(a):
        da = summed(g.op("MatMul", [dy2, _swap_last(g, b2, len(b_shape))]), a, a2, a_shape)
    if g.wants(b) and len(a_shape) > 2 and len(b_shape) == 2 and b2 == b:
        # a weight shared by every row: one [K, rows] @ [rows, N] GEMM rather than a batched
        # product reduced over the batch
        rows_a = g.op("Reshape", [a2, g.int64s([-1, a_shape[-1]])])
        rows_dy = g.op("Reshape", [dy2, g.int64s([-1, b_shape[-1]])])
        db = g.op("Gemm", [rows_a, rows_dy], transA=1, like=b)
    elif g.wants(b):
        db = summed(g.op("MatMul", [_swap_last(g, a2, len(a_shape)), dy2]), b, b2, b_shape)
    return [da, db]


def _swap_last(g, x, rank):
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return g.op("Transpose", [x], perm=perm)


def _broadcast(s1, s2):
    n = max(len(s1), len(s2))
    s1 = [1] * (n - len(s1)) + list(s1)
    s2 = [1] * (n - len(s2)) + list(s2)
    return [b if a == 1 else a for a, b in zip(s1, s2)]


# -- normalization --------------------------------------------------------------------------------
@rule("LayerNormalization")
def layer_norm(g, node, dys):
    if any(d is not None for d in dys[1:]):
        raise _unsupported(node, "through its Mean/InvStdDev outputs")
    x, scale, y, dy = node.input[0], node.input[1], node.output[0], dys[0]
    bias = _input(node, 2)
    rank = g.rank(x)
    axes = list(range(attr(node, "axis", -1) % rank, rank))
    mean = g.reduce("ReduceMean", x, axes, keepdims=1)
    centered = g.op("Sub", [x, mean])
    var = g.reduce("ReduceMean", g.op("Mul", [centered, centered]), axes, keepdims=1)
    rstd = g.op("Reciprocal", [g.op("Sqrt", [g.op(
        "Add", [var, g.scalar(attr(node, "epsilon", 1e-5), x)])])])
    xhat = g.op("Mul", [centered, rstd], like=x)
    dxhat = g.op("Mul", [dy, scale])
    inner = g.op("Sub", [g.op("Sub", [dxhat, g.reduce("ReduceMean", dxhat, axes, keepdims=1)]),
                         g.op("Mul", [xhat, g.reduce("ReduceMean", g.op("Mul", [dxhat, xhat]),
                                                     axes, keepdims=1)])])
    dx = g.op("Mul", [rstd, inner], like=x)
    dscale = g.unbroadcast(g.op("Mul", [dy, xhat], like=y), y, scale) if g.wants(scale) else None
    dbias = g.unbroadcast(dy, y, bias) if bias and g.wants(bias) else None
    return [dx, dscale, dbias]


@rule("BatchNormalization")
def batch_norm(g, node, dys):
    if attr(node, "training_mode", 0) or len([o for o in node.output if o]) > 1:
        raise _unsupported(node, "in training mode: export the model in eval mode")
    x, scale, bias, mean, var = node.input[:5]
    dy, rank = dys[0], g.rank(x)

    def per_channel(v):  # [C] -> [C, 1, ...] to broadcast against [N, C, ...]
        return g.op("Unsqueeze", [v, g.int64s(list(range(1, rank - 1)))]) if rank > 2 else v

    sum_axes = [0] + list(range(2, rank))
    rstd = g.op("Reciprocal", [g.op("Sqrt", [g.op(
        "Add", [var, g.scalar(attr(node, "epsilon", 1e-5), x)])])])
    gain = g.op("Mul", [scale, rstd])
    dx = g.op("Mul", [dy, per_channel(gain)], like=x)
    centered = g.op("Sub", [x, per_channel(mean)])
    dbias = g.reduce("ReduceSum", dy, sum_axes, keepdims=0)
    dcentered = g.reduce("ReduceSum", g.op("Mul", [dy, centered]), sum_axes, keepdims=0)
    dscale = g.op("Mul", [dcentered, rstd], like=scale)
    dmean = g.op("Neg", [g.op("Mul", [dbias, gain])], like=mean)
    cube = g.op("Mul", [rstd, g.op("Mul", [rstd, rstd])])
    dvar = g.op("Mul", [g.op("Mul", [dcentered, scale]),
                        g.op("Mul", [cube, g.scalar(-0.5, x)])], like=var)
    return [dx, dscale, g.same_type(dbias, bias), dmean, dvar]


# -- convolution and pooling ----------------------------------------------------------------------
def _window(g, node, x, kernel):
    """Explicit strides, dilations and (begin..., end...) pads of a Conv/pool node."""
    spatial = g.static_shape(x, node)[2:]
    k = len(spatial)
    strides = list(attr(node, "strides") or [1] * k)
    dilations = list(attr(node, "dilations") or [1] * k)
    pads = list(attr(node, "pads") or [0] * (2 * k))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if auto_pad == "VALID":
        pads = [0] * (2 * k)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * k)
        for i, size in enumerate(spatial):
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, large = total // 2, total - total // 2
            pads[i], pads[i + k] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    return spatial, strides, dilations, pads


def _transpose_back(g, node, dy, weight, x, kernel, group):
    """dL/dx of a convolution-like window op: ConvTranspose with the forward geometry."""
    spatial, strides, dilations, pads = _window(g, node, x, kernel)
    out_spatial = g.static_shape(node.output[0], node)[2:]
    k = len(spatial)
    output_padding = []
    for i in range(k):
        full = ((out_spatial[i] - 1) * strides[i] - pads[i] - pads[i + k]
                + dilations[i] * (kernel[i] - 1) + 1)
        if spatial[i] - full < 0:
            raise _unsupported(node, "with windows overhanging the input (ceil_mode)")
        output_padding.append(spatial[i] - full)
    return g.op("ConvTranspose", [dy, weight], strides=strides, pads=pads, dilations=dilations,
                group=group, output_padding=output_padding, like=x)


@rule("Conv")
def conv(g, node, dys):
    x, w, dy = node.input[0], node.input[1], dys[0]
    bias = _input(node, 2)
    w_shape = g.static_shape(w, node)
    x_shape = g.static_shape(x, node)
    kernel, group = list(w_shape[2:]), attr(node, "group", 1)
    dx = _transpose_back(g, node, dy, w, x, kernel, group) if g.wants(x) else None
    dw = _conv_weight_grad(g, node, x, dy, kernel, group) if g.wants(w) else None
    db = None
    if bias and g.wants(bias):
        db = g.same_type(g.reduce("ReduceSum", dy, [0] + list(range(2, g.rank(x))), keepdims=0),
                         bias)
    return [dx, dw, db]


def _conv_weight_grad(g, node, x, dy, kernel, group):
    """dL/dW as one batched MatMul of dy with the im2col columns of x, one strided Slice of the
    padded input per kernel offset (ORT runs this as a GEMM, far faster than a convolution
    whose kernel is dy)."""
    x_shape = g.static_shape(x, node)
    out_spatial = g.static_shape(node.output[0], node)[2:]
    spatial, strides, dilations, pads = _window(g, node, x, kernel)
    n, c, k = x_shape[0], x_shape[1], len(spatial)
    m = g.static_shape(node.output[0], node)[1]
    cg, mg, positions = c // group, m // group, int(np.prod(out_spatial))
    padded = x
    if any(pads):
        padded = g.op("Pad", [x, g.int64s([0, 0] + pads[:k] + [0, 0] + pads[k:])])
    columns = []
    for offset in itertools.product(*(range(size) for size in kernel)):
        starts = [o * d for o, d in zip(offset, dilations)]
        ends = [b + (o - 1) * s + 1 for b, o, s in zip(starts, out_spatial, strides)]
        piece = g.op("Slice", [padded, g.int64s(starts), g.int64s(ends),
                               g.int64s(list(range(2, 2 + k))), g.int64s(strides)])
        columns.append(g.op("Unsqueeze", [piece, g.int64s([2])]))
    cols = g.op("Concat", columns, axis=2) if len(columns) > 1 else columns[0]
    # per sample: [Cg*K, positions] @ [positions, Mg], summed over the batch; transposing dy
    # (K times smaller than the columns) rather than the columns
    cols = g.op("Reshape", [cols, g.int64s([n, group, cg * len(columns), positions])])
    grads = g.op("Reshape", [dy, g.int64s([n, group, mg, positions])])
    grads = g.op("Transpose", [grads], perm=[0, 1, 3, 2])
    dw = g.reduce("ReduceSum", g.op("MatMul", [cols, grads]), [0], keepdims=0)
    dw = g.op("Transpose", [dw], perm=[0, 2, 1])
    return g.op("Reshape", [dw, g.int64s([m, cg] + list(kernel))], like=node.input[1])


@rule("MaxPool")
def max_pool(g, node, dys):
    x, dy = node.input[0], dys[0]
    if attr(node, "storage_order", 0):
        raise _unsupported(node, "with storage_order=1")
    if len(node.output) > 1 and node.output[1]:
        indices = node.output[1]
    else:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        indices = g.op("MaxPool", [x], outputs=2, **attrs)[1]
    return [g.scatter_flat(x, indices, dy)]


@rule("AveragePool")
def average_pool(g, node, dys):
    x, dy = node.input[0], dys[0]
    kernel = list(attr(node, "kernel_shape"))
    x_shape = g.static_shape(x, node)
    spatial, strides, dilations, pads = _window(g, node, x, kernel)
    dtype = g.np_dtype(x)
    ones_kernel = g.const(np.ones([x_shape[1], 1] + kernel, dtype))
    if attr(node, "count_include_pad", 0):
        counts = g.scalar(float(np.prod(kernel)), x)
    else:
        counts = g.op("Conv", [g.const(np.ones([1, 1] + spatial, dtype)),
                               g.const(np.ones([1, 1] + kernel, dtype))],
                      strides=strides, pads=pads, dilations=dilations)
    share = g.op("Div", [dy, counts], like=node.output[0])
    return [_transpose_back(g, node, share, ones_kernel, x, kernel, x_shape[1])]


# -- more elementwise, contraction and resampling ops ---------------------------------------------
@rule("Elu")
def elu(g, node, dys):
    """dy where x > 0, else dy * (y + alpha) (= alpha * exp(x)), as torch's elu_backward."""
    x, y, dy = node.input[0], node.output[0], dys[0]
    alpha = g.scalar(attr(node, "alpha", 1.0), x)
    negative_slope = g.op("Mul", [dy, g.op("Add", [y, alpha])])
    return [g.op("Where", [g.op("Greater", [x, g.scalar(0.0, x)]), dy, negative_slope], like=x)]


@rule("Einsum")
def einsum(g, node, dys):
    """The VJP of an einsum is an einsum: dL/d operand i contracts dy with the other operands
    into operand i's subscripts; a letter only operand i has (summed away) is broadcast back."""
    terms, out = _einsum_terms(g, node)
    grads = []
    for i, x in enumerate(node.input):
        if not g.wants(x):
            grads.append(None)
            continue
        others = [t for j, t in enumerate(terms) if j != i]
        present = set(out).union(*others)
        kept = "".join(c for c in terms[i] if c in present)
        equation = ",".join([out] + others) + "->" + kept
        dx = g.op("Einsum", [dys[0]] + [v for j, v in enumerate(node.input) if j != i],
                  equation=equation)
        missing = [axis for axis, c in enumerate(terms[i]) if c not in present]
        if missing:
            dx = g.op("Expand", [g.op("Unsqueeze", [dx, g.int64s(missing)]), g.shape_of(x)])
        grads.append(g.same_type(dx, x))
    return grads


def _einsum_terms(g, node):
    """Explicit subscripts ``([term per operand], output)``: the ellipsis spelled out in
    letters the equation does not use, the implicit output made explicit."""
    equation = attr(node, "equation").replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in equation]
    widest, ellipsis_dims = 0, []
    for term, x in zip(terms, node.input):
        dims = g.rank(x) - len(term.replace("...", "")) if "..." in term else 0
        ellipsis_dims.append(dims)
        widest = max(widest, dims)
    letters = "".join(free[:widest])
    terms = [t.replace("...", letters[widest - d:]) for t, d in zip(terms, ellipsis_dims)]
    if arrow:
        out = rhs.replace("...", letters)
    else:
        singles = sorted(c for c in set("".join(terms)) if "".join(terms).count(c) == 1
                         and c not in letters)
        out = letters + "".join(singles)
    for term, x in zip(terms, node.input):
        if len(set(term)) != len(term):
            raise _unsupported(node, f"with a repeated subscript in {term!r} (a diagonal)")
    sizes = {}
    for term, x in zip(terms, node.input):
        shape = g.known_shape(x)
        for c, d in zip(term, shape):
            if isinstance(d, int) and sizes.setdefault(c, d) != d:
                raise _unsupported(node, "broadcasting a size-1 axis: expand the operand first")
    return terms, out


@rule("Resize")
def resize(g, node, dys):
    """Resize (nearest, linear, cubic) acts on each axis by one fixed matrix A [out, in]; its
    VJP multiplies dy by A along every resized axis. A is found by resizing an identity with
    the node's own attributes in onnx.reference, so every coordinate mode is the spec's."""
    x, dy = node.input[0], dys[0]
    mode = attr(node, "coordinate_transformation_mode", "half_pixel")
    if mode == "tf_crop_and_resize":
        raise _unsupported(node, "in tf_crop_and_resize mode")
    in_shape = g.static_shape(x, node)
    out_shape = g.static_shape(node.output[0], node)
    rank = len(in_shape)
    axes = [a % rank for a in (attr(node, "axes") or range(rank))]
    scales_name = _input(node, 2)
    scales = g.value(scales_name) if scales_name else None
    if scales_name and scales is None and not _input(node, 3):
        raise _unsupported(node, "with scales computed at run time: export with constant "
                                 "scales or give the output size")
    if not scales_name and attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise _unsupported(node, "with keep_aspect_ratio_policy other than stretch")
    grad = dy
    for position, axis in enumerate(axes):
        scale = float(scales[position]) if scales is not None and scales.size else None
        matrix = _resize_matrix(node, in_shape[axis], out_shape[axis], scale)
        if matrix.shape == (in_shape[axis], in_shape[axis]) and \
                np.array_equal(matrix, np.eye(in_shape[axis])):
            continue
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = grad if axis == rank - 1 else g.op("Transpose", [grad], perm=perm)
        moved = g.op("MatMul", [moved, g.const(matrix.astype(g.np_dtype(x)), "resize_matrix")])
        grad = moved if axis == rank - 1 else g.op("Transpose", [moved], perm=perm)
    grads = [g.same_type(grad if grad != dy else g.op("Identity", [dy]), x)]
    return grads + [None] * (len(node.input) - 1)


def _resize_matrix(node, size_in, size_out, scale):
    """A [size_out, size_in] with resize(v) = A @ v along one axis, from the node's attributes:
    the resize of an identity (one row per basis vector) by onnx.reference."""
    from onnx import TensorProto, numpy_helper
    from onnx.reference import ReferenceEvaluator

    kept = {a.name: helper.get_attribute_value(a) for a in node.attribute
            if a.name not in ("axes", "keep_aspect_ratio_policy")}
    kept = {k: v.decode() if isinstance(v, bytes) else v for k, v in kept.items()}
    inputs = ["eye", ""]
    if scale is not None:
        init = numpy_helper.from_array(np.asarray([1.0, scale], np.float32), "scales")
        inputs.append("scales")
    else:
        init = numpy_helper.from_array(np.asarray([size_in, size_out], np.int64), "sizes")
        inputs += ["", "sizes"]
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["resized"], **kept)], "resize_matrix",
        [helper.make_tensor_value_info("eye", TensorProto.DOUBLE, [size_in, size_in])],
        [helper.make_tensor_value_info("resized", TensorProto.DOUBLE, None)], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    resized = ReferenceEvaluator(model).run(None, {"eye": np.eye(size_in)})[0]
    if resized.shape != (size_in, size_out):
        raise _unsupported(node, f"whose axis of {size_in} does not resize to {size_out} "
                                 "along one axis alone")
    return resized.T


# -- recurrent ops: spelled out step by step in primitive ops, then differentiated by their rules
class _Spelled:
    """Emits primitive ops with their shapes declared, so that ``g.vjp`` can differentiate
    them with the other rules."""

    def __init__(self, g, like):
        self.g, self.elem, self.start = g, g.elem(like), len(g.nodes)

    def __call__(self, op_type, inputs, shape, **attrs):
        return self.g.typed(self.g.op(op_type, inputs, **attrs), self.elem, shape)

    def split(self, x, sizes, axis, shape):
        """``x`` cut along ``axis`` into ``sizes``; ``shape(size)`` is each piece's shape."""
        pieces = self.g.op("Split", [x, self.g.int64s(sizes)], outputs=len(sizes), axis=axis)
        return [self.g.typed(p, self.elem, shape(n)) for p, n in zip(pieces, sizes)]

    def per_direction(self, name, dirs, shape):
        """[D, ...] -> one [...] tensor per direction."""
        if dirs == 1:
            return [self("Squeeze", [name, self.g.int64s([0])], shape)]
        return [self("Squeeze", [p, self.g.int64s([0])], shape)
                for p in self.split(name, [1, 1], 0, lambda n: (1,) + shape)]

    def stacked(self, tensors, axis, shape):
        """Tensors of ``shape`` stacked along a new ``axis``."""
        added = shape[:axis] + (1,) + shape[axis:]
        pieces = [self("Unsqueeze", [t, self.g.int64s([axis])], added) for t in tensors]
        if len(pieces) == 1:
            return pieces[0]
        return self("Concat", pieces, shape[:axis] + (len(pieces),) + shape[axis:], axis=axis)

    def nodes(self):
        return self.g.nodes[self.start:]


def _recurrent(g, node, default_activations):
    """(seq, batch, hidden, directions) of an LSTM/GRU node; refuses what is not spelled out."""
    if attr(node, "layout", 0):
        raise _unsupported(node, "with layout=1: export it with batch_first=False")
    if attr(node, "clip") is not None:
        raise _unsupported(node, "with clip")
    dirs = 2 if attr(node, "direction", "forward") == "bidirectional" else 1
    activations = [a.decode() if isinstance(a, bytes) else a
                   for a in (attr(node, "activations") or [])]
    if activations and activations != default_activations * dirs:
        raise _unsupported(node, f"with activations {activations}")
    seq, batch, _ = g.static_shape(node.input[0], node)
    lengths = _input(node, 4)
    if lengths and (g.value(lengths) is None or not np.all(g.value(lengths) == seq)):
        raise _unsupported(node, "with sequence_lens shorter than the sequence")
    hidden = attr(node, "hidden_size") or g.static_shape(node.input[2], node)[-1]
    return seq, batch, hidden, dirs


def _initial_state(s, g, node, position, dirs, batch, hidden):
    name = _input(node, position)
    if name:
        return s.per_direction(name, dirs, (batch, hidden))
    zeros = g.const(np.zeros((batch, hidden), g.np_dtype(node.input[0])), "zeros")
    return [g.typed(zeros, s.elem, (batch, hidden))] * dirs


def _step_inputs(s, g, node, d, weights, seq, batch, gates, hidden):
    """X @ W_d^T (+ the input bias) cut into one [batch, gates*hidden] tensor a time step."""
    x = node.input[0]
    width = gates * hidden
    size = g.static_shape(x, node)[-1]
    w_t = s("Transpose", [weights[d]], (size, width), perm=[1, 0])
    xw = s("MatMul", [x, w_t], (seq, batch, width))
    if _input(node, 3):
        biases = s.per_direction(node.input[3], len(weights), (2 * width,))
        input_bias, state_bias = s.split(biases[d], [width, width], 0, lambda n: (n,))
        xw = s("Add", [xw, input_bias], (seq, batch, width))
    else:
        state_bias = None
    steps = s.split(xw, [1] * seq, 0, lambda n: (1, batch, width)) if seq > 1 else [xw]
    return [s("Squeeze", [t, g.int64s([0])], (batch, width)) for t in steps], state_bias


def _spelled_vjp(g, node, s, outputs, dys):
    grads = g.vjp(s.nodes(), dict(zip(outputs, dys)))
    return [grads.get(x) if x else None for x in node.input]


@rule("LSTM")
def lstm(g, node, dys):
    """Spelled out per time step (gates i, o, f, c as ONNX orders them), then differentiated."""
    if _input(node, 7):
        raise _unsupported(node, "with peepholes")
    if attr(node, "input_forget", 0):
        raise _unsupported(node, "with input_forget")
    seq, batch, hidden, dirs = _recurrent(g, node, ["Sigmoid", "Tanh", "Tanh"])
    s = _Spelled(g, node.input[0])
    size = g.static_shape(node.input[0], node)[-1]
    weights = s.per_direction(node.input[1], dirs, (4 * hidden, size))
    recurrences = s.per_direction(node.input[2], dirs, (4 * hidden, hidden))
    hs0 = _initial_state(s, g, node, 5, dirs, batch, hidden)
    cs0 = _initial_state(s, g, node, 6, dirs, batch, hidden)
    state = (batch, hidden)
    ys, last_h, last_c = [], [], []
    for d in range(dirs):
        steps, state_bias = _step_inputs(s, g, node, d, weights, seq, batch, 4, hidden)
        r_t = s("Transpose", [recurrences[d]], (hidden, 4 * hidden), perm=[1, 0])
        h, c, hs = hs0[d], cs0[d], [None] * seq
        reverse = attr(node, "direction", "forward") == "reverse" or d == 1
        for t in (reversed(range(seq)) if reverse else range(seq)):
            gates = s("Add", [steps[t], s("MatMul", [h, r_t], (batch, 4 * hidden))],
                      (batch, 4 * hidden))
            if state_bias is not None:
                gates = s("Add", [gates, state_bias], (batch, 4 * hidden))
            i, o, f, cand = s.split(gates, [hidden] * 4, 1, lambda n: state)
            i, o, f = (s("Sigmoid", [v], state) for v in (i, o, f))
            c = s("Add", [s("Mul", [f, c], state),
                          s("Mul", [i, s("Tanh", [cand], state)], state)], state)
            h = hs[t] = s("Mul", [o, s("Tanh", [c], state)], state)
        ys.append(s.stacked(hs, 0, state))
        last_h.append(h)
        last_c.append(c)
    outputs = [s.stacked(ys, 1, (seq,) + state), s.stacked(last_h, 0, state),
               s.stacked(last_c, 0, state)]
    return _spelled_vjp(g, node, s, outputs, dys)


@rule("GRU")
def gru(g, node, dys):
    """Spelled out per time step (gates z, r, h as ONNX orders them, ``linear_before_reset``
    either way), then differentiated."""
    seq, batch, hidden, dirs = _recurrent(g, node, ["Sigmoid", "Tanh"])
    s = _Spelled(g, node.input[0])
    size = g.static_shape(node.input[0], node)[-1]
    weights = s.per_direction(node.input[1], dirs, (3 * hidden, size))
    recurrences = s.per_direction(node.input[2], dirs, (3 * hidden, hidden))
    hs0 = _initial_state(s, g, node, 5, dirs, batch, hidden)
    before_reset = attr(node, "linear_before_reset", 0)
    state = (batch, hidden)
    ys, last_h = [], []
    for d in range(dirs):
        steps, state_bias = _step_inputs(s, g, node, d, weights, seq, batch, 3, hidden)
        r_t = s("Transpose", [recurrences[d]], (hidden, 3 * hidden), perm=[1, 0])
        r_h = s.split(r_t, [hidden] * 3, 1, lambda n: (hidden, n))[2]
        bias_h = s.split(state_bias, [hidden] * 3, 0, lambda n: (n,))[2] \
            if state_bias is not None else None
        h, hs = hs0[d], [None] * seq
        reverse = attr(node, "direction", "forward") == "reverse" or d == 1
        for t in (reversed(range(seq)) if reverse else range(seq)):
            xz, xr, xh = s.split(steps[t], [hidden] * 3, 1, lambda n: state)
            recurrent = s("MatMul", [h, r_t], (batch, 3 * hidden))
            if state_bias is not None:
                recurrent = s("Add", [recurrent, state_bias], (batch, 3 * hidden))
            hz, hr, hh = s.split(recurrent, [hidden] * 3, 1, lambda n: state)
            z = s("Sigmoid", [s("Add", [xz, hz], state)], state)
            r = s("Sigmoid", [s("Add", [xr, hr], state)], state)
            if before_reset:
                gated = s("Mul", [r, hh], state)
            else:
                gated = s("MatMul", [s("Mul", [r, h], state), r_h], state)
                if bias_h is not None:
                    gated = s("Add", [gated, bias_h], state)
            cand = s("Tanh", [s("Add", [xh, gated], state)], state)
            h = hs[t] = s("Add", [cand, s("Mul", [z, s("Sub", [h, cand], state)], state)],
                          state)
        ys.append(s.stacked(hs, 0, state))
        last_h.append(h)
    outputs = [s.stacked(ys, 1, (seq,) + state), s.stacked(last_h, 0, state)]
    return _spelled_vjp(g, node, s, outputs, dys)
