"""ONNX backward: the vector-Jacobian-product graph of a forward ONNX graph, run by onnxruntime.

``gradient_model(model, loss)`` appends, to the forward graph, the loss and the gradient of every
node output and float initializer on the way to it, using one rule per op type from
``vjp.RULES``. ``record_backward`` runs that model and writes ``loss``, ``backward`` and
``param_grad`` records, so the numerics stay onnxruntime's.
"""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ....errors import TraceDiffError
from ...base import ONNX_LOSSES as LOSSES
from ..meta import parameter_aliases
from .prepare import FLOAT_TYPES, _constant_values, _prepared, _tensor_info
from .vjp import NEEDS_VALUES, RULES

META_KEY = "tracediff.gradients"
# Ops whose outputs carry no gradient whatever their inputs (indices, masks, shapes).
NO_GRADIENT = {"Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less",
               "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "NonZero",
               "ConstantOfShape", "EyeLike", "RandomUniformLike", "RandomNormalLike",
               "Bernoulli", "Multinomial", "TopK", "Unique", "OneHot", "Sign"}


# -- the emitter rules write through --------------------------------------------------------------
class Emitter:
    """Appends gradient nodes and constants, and answers what rules ask about tensors."""

    def __init__(self, info, consts, taken, wanted):
        self.info = info            # tensor name -> (elem type, shape tuple or None)
        self.consts = consts        # tensor name -> numpy value (initializers, Constant nodes)
        self.wanted = wanted        # tensors whose gradient is asked for
        self.nodes, self.initializers, self.emitted = [], [], set()
        self.scope = "loss"
        self._taken = set(taken)
        self._suffix = defaultdict(int)   # hint -> last number used, so naming stays linear
        self._shapes = {}

    # naming and emitting
    def fresh(self, hint):
        name, i = hint, self._suffix[hint]
        while name in self._taken:
            i += 1
            name = f"{hint}_{i}"
        self._suffix[hint] = i
        self._taken.add(name)
        return name

    def op(self, op_type, inputs, *, outputs=None, like=None, **attrs):
        """Emit one node; its output name, or a list of ``outputs`` names when given."""
        names = [self.fresh(f"grad/{self.scope}/{op_type}") for _ in range(outputs or 1)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        self.emitted.update(names)
        if like is not None:
            self.same_type(names[0], like)
        return names[0] if outputs is None else names

    def const(self, array, hint="const"):
        name = self.fresh(f"grad/{self.scope}/{hint}")
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        self.consts[name] = np.asarray(array)
        return name

    def int64s(self, values):
        return self.const(np.asarray(values, dtype=np.int64), "ints")

    def scalar(self, value, like):
        """A 0-d constant of ``like``'s element type."""
        elem = self.elem(like)
        if elem in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            return self.const(np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(elem)),
                              "scalar")
        return self.op("Cast", [self.const(np.asarray(value, np.float32), "scalar")], to=elem)

    # what rules ask
    def wants(self, name):
        return bool(name) and name in self.wanted

    def value(self, name):
        return self.consts.get(name)

    def elem(self, name):
        return self.info[name][0]

    def np_dtype(self, name):
        return helper.tensor_dtype_to_np_dtype(self.elem(name))

    def shape(self, name):
        return self.info.get(name, (None, None))[1]

    def known_shape(self, name):
        shape = self.shape(name)
        if shape is None:
            raise TraceDiffError(
                f"cannot build the gradient at node {self.scope}: the rank of tensor {name!r} "
                "is unknown; give the model's input shapes")
        return shape

    def rank(self, name):
        return len(self.known_shape(name))

    def static_shape(self, name, node):
        shape = self.known_shape(name)
        if not all(isinstance(d, int) for d in shape):
            raise TraceDiffError(
                f"cannot build the gradient of {node.op_type} node {node.name}: the shape of "
                f"{name!r} is {shape}, not static; give the model's input shapes")
        return list(shape)

    def same_type(self, name, like):
        if like in self.info:
            self.info[name] = self.info[like]
        return name

    def shape_of(self, name):
        if name not in self._shapes:
            shape = self.shape(name)
            if shape is not None and all(isinstance(d, int) for d in shape):
                self._shapes[name] = self.int64s(list(shape))
            else:
                self._shapes[name] = self.op("Shape", [name])
        return self._shapes[name]

    # building blocks
    def reduce(self, op_type, x, axes, keepdims):
        return self.op(op_type, [x, self.int64s(axes)], keepdims=keepdims)

    def count_ratio(self, x, y):
        """numel(x) / numel(y) in x's element type: the divisor of a mean reduction."""
        xs, ys = self.shape(x), self.shape(y)
        if xs is not None and ys is not None and all(isinstance(d, int) for d in xs + ys):
            return self.scalar(float(np.prod(xs, dtype=np.int64) / np.prod(ys, dtype=np.int64)), x)
        ratio = self.op("Div", [self.op("Size", [x]), self.op("Size", [y])])
        return self.op("Cast", [ratio], to=self.elem(x))

    def zeros_like(self, name):
        return self.op("Expand", [self.scalar(0.0, name), self.shape_of(name)], like=name)

    def unbroadcast(self, grad, grad_like, x, to_shape=None):
        """Sum ``grad`` (shaped like tensor/shape ``grad_like``) back to the shape of ``x``."""
        if grad is None or (to_shape is None and not self.wants(x)):
            return None
        g_shape = grad_like if isinstance(grad_like, tuple) else self.known_shape(grad_like)
        x_shape = to_shape if to_shape is not None else self.known_shape(x)
        g_shape, x_shape = tuple(g_shape), tuple(x_shape)
        if g_shape == x_shape:
            return self.same_type(grad, x)
        static = all(isinstance(d, int) for d in g_shape + x_shape)
        if static:
            padded = (1,) * (len(g_shape) - len(x_shape)) + x_shape
            axes = [i for i, (p, d) in enumerate(zip(padded, g_shape)) if p == 1 and d != 1]
            if axes:
                grad = self.op("ReduceSum", [grad, self.int64s(axes)], keepdims=1)
            if len(g_shape) != len(x_shape):
                grad = self.op("Reshape", [grad, self.int64s(list(x_shape))])
            return self.same_type(grad, x)
        target = self.op("Shape", [x])
        padded = target
        if len(g_shape) > len(x_shape):
            ones = self.int64s([1] * (len(g_shape) - len(x_shape)))
            padded = self.op("Concat", [ones, target], axis=0)
        size_one = self.op("Equal", [padded, self.int64s(1)])
        axes = self.op("Reshape", [self.op("NonZero", [size_one]), self.int64s([-1])])
        grad = self.op("ReduceSum", [grad, axes], keepdims=1, noop_with_empty_axes=1)
        return self.same_type(self.op("Reshape", [grad, target]), x)

    def scatter_back(self, x, dy, select):
        """Gradient of an indexing op: ``select`` applied to the flat positions of ``x``
        says where each element of ``dy`` came from; repeated positions add up."""
        count = self.op("Size", [x])
        positions = self.op("Range", [self.int64s(0), count, self.int64s(1)])
        positions = self.op("Reshape", [positions, self.shape_of(x)])
        return self.scatter_flat(x, select(positions), dy, count)

    def scatter_flat(self, x, flat_index, dy, count=None):
        count = count if count is not None else self.op("Size", [x])
        length = self.op("Reshape", [count, self.int64s([1])])
        zeros = self.op("Expand", [self.scalar(0.0, x), length])
        flat = self.op("ScatterElements", [
            zeros, self.op("Reshape", [flat_index, self.int64s([-1])]),
            self.op("Reshape", [dy, self.int64s([-1])])], axis=0, reduction="add")
        return self.op("Reshape", [flat, self.shape_of(x)], like=x)

    def accumulate(self, tensor, parts):
        if len(parts) == 1:
            return parts[0]
        return self.op("Sum", parts, like=tensor)

    # composite ops: a rule spells the op out in primitive ops, then differentiates those
    def typed(self, name, elem, shape):
        """Declare the type and shape of a tensor a rule emitted (rules read them)."""
        self.info[name] = (elem, tuple(shape))
        return name

    def vjp(self, nodes, seeds):
        """Gradients of the inputs of ``nodes`` (emitted by a rule, in order) from ``seeds``
        ({output: gradient or None}), through the rules: ``{tensor: gradient}``."""
        pending = defaultdict(list)
        for tensor, grad in seeds.items():
            if grad is not None:
                pending[tensor].append(grad)
        inside = {o for node in nodes for o in node.output if o}
        wanted = self.wanted
        self.wanted = wanted | inside
        try:
            for node in reversed(nodes):
                dys = [self.accumulate(o, pending.pop(o)) if pending.get(o) else None
                       for o in node.output]
                if all(dy is None for dy in dys):
                    continue
                for x, dx in zip(node.input, RULES[node.op_type](self, node, dys)):
                    if dx is not None and (x in inside or x in wanted):
                        pending[x].append(dx)
        finally:
            self.wanted = wanted
        return {x: self.accumulate(x, parts) for x, parts in pending.items() if parts}


# -- losses: (emitter, loss input) -> (target ValueInfo or None, loss tensor, dL/d loss input) ----
def _sum_loss(g, y, target_name):
    loss = g.op("ReduceSum", [y], keepdims=0)
    return None, loss, g.op("Expand", [g.scalar(1.0, y), g.shape_of(y)], like=y)


def _mse_loss(g, y, target_name):
    elem, shape = g.info[y]
    target = helper.make_tensor_value_info(target_name, elem, _dims(shape))
    diff = g.op("Sub", [y, target_name])
    loss = g.op("ReduceMean", [g.op("Mul", [diff, diff])], keepdims=0)
    seed = g.op("Div", [g.op("Mul", [diff, g.scalar(2.0, y)]), g.count_ratio(y, loss)], like=y)
    return target, loss, seed


def _cross_entropy_loss(g, y, target_name):
    elem, shape = g.info[y]
    if shape is not None and len(shape) < 1:
        raise TraceDiffError(f"loss 'cross_entropy' needs logits with a class axis, but graph "
                             f"output {y!r} is a scalar; use loss='sum' or 'mse'")
    target = helper.make_tensor_value_info(target_name, TensorProto.INT64,
                                           None if shape is None else _dims(shape[:-1]))
    picked_at = g.op("Unsqueeze", [target_name, g.int64s([-1])])
    log_p = g.op("LogSoftmax", [y], axis=-1)
    picked = g.op("GatherElements", [log_p, picked_at], axis=-1)
    loss = g.op("Neg", [g.op("ReduceMean", [picked], keepdims=0)])
    classes = g.op("Range", [g.int64s(0), g.op("Squeeze", [g.op("Shape", [y], start=-1)]),
                             g.int64s(1)])
    one_hot = g.op("Cast", [g.op("Equal", [picked_at, classes])], to=elem)
    count = g.op("Cast", [g.op("Size", [target_name])], to=elem)
    seed = g.op("Div", [g.op("Sub", [g.op("Softmax", [y], axis=-1), one_hot]), count], like=y)
    return target, loss, seed


_LOSS_BUILDERS = {"cross_entropy": _cross_entropy_loss, "mse": _mse_loss, "sum": _sum_loss}


def _dims(shape):
    return None if shape is None else [d if isinstance(d, (int, str)) else None for d in shape]


# -- building the gradient model ------------------------------------------------------------------
class GradientPlan:
    """The built model and which of its outputs holds which gradient."""

    def __init__(self, model, loss_output, target_input, grads, param_grads, forward_order,
                 classes=None):
        self.model = model
        self.classes = classes                # size of the logits' last axis, when static
        self.loss_output = loss_output
        self.target_input = target_input      # name of the target input, or None
        self.grads = grads                    # [(forward tensor, output name)], loss -> input
        self.param_grads = param_grads        # [(initializer name, output name)]
        self.forward_order = forward_order    # node output tensors in topological order


def gradient_model(model, loss, *, feeds=None, providers=None) -> onnx.ModelProto:
    """The forward graph plus the loss and its gradients, as one checkable ONNX model.

    Inputs: the forward inputs, plus the target (``cross_entropy``: int64 class indices shaped
    like the logits without their last axis; ``mse``: shaped like the output). Outputs: the loss,
    then dL/d each node output on the loss's path (loss to input), then dL/d each float
    initializer; ``metadata_props['tracediff.gradients']`` maps them to forward tensor names.
    ``feeds`` ({input name: array}) pins the model to their shapes, which Conv and pooling
    need, and lets a probe run find the shapes that shape inference cannot.
    """
    return build(model, loss, feeds=feeds, providers=providers).model


class Analysis:
    """What every gradient build of one prepared model shares: the tensors on the loss's path,
    the parameters, and the facts rules ask about tensors."""

    def __init__(self, model, loss_input, info, consts, parameters, path, reaches, node_names,
                 graph_inputs):
        self.model = model                  # the prepared (sorted, opset >= 18, shaped) model
        self.loss_input = loss_input        # graph output 0
        self.info, self.consts = info, consts
        self.parameters = parameters        # float initializers and aliases, not buffers
        self.path = path                    # nodes between float sources and the loss, last first
        self.reaches = reaches              # tensors on that path
        self.node_names = node_names
        self.graph_inputs = graph_inputs    # graph inputs that are not initializers

    def emitter(self):
        """A fresh emitter; a graph input's own gradient is never recorded: rules skip it (the
        first Conv's ConvTranspose, for one), while every node output still gets its gradient."""
        return Emitter(dict(self.info), dict(self.consts), _all_names(self.model.graph),
                       wanted=self.reaches - self.graph_inputs)


def analyse(model, loss, *, feeds=None, providers=None, max_memory=None) -> Analysis:
    """Prepare ``model`` and find what its gradient needs; refuse a path op without a rule.
    ``max_memory`` (bytes) bounds the probe run that finds the shapes inference leaves open."""
    if loss not in _LOSS_BUILDERS:
        raise TraceDiffError(f"unknown loss {loss!r}: use one of {', '.join(LOSSES)}")
    if not isinstance(model, onnx.ModelProto):
        raise TraceDiffError(f"gradient_model needs an onnx.ModelProto, got {type(model).__name__}")
    model = _prepared(model, feeds or {}, providers, max_memory)
    graph = model.graph
    if not graph.output:
        raise TraceDiffError("the ONNX graph has no outputs: output 0 must feed the loss")
    info = _tensor_info(model)
    consts = _constant_values(graph)
    initializers = {t.name for t in graph.initializer}
    aliases = _parameter_aliases(graph)
    buffers = _running_statistics(graph)
    parameters = [t.name for t in graph.initializer if t.data_type in FLOAT_TYPES]
    parameters = [p for p in parameters + list(aliases) if p not in buffers]
    requires = set(parameters)
    requires |= {i.name for i in graph.input
                 if i.name not in initializers and i.type.tensor_type.elem_type in FLOAT_TYPES}
    # an alias is a parameter of its own: its Identity node is not differentiated through
    nodes = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in aliases)]
    for node in nodes:  # sorted by _prepared
        if any(i in requires for i in node.input if i) and node.op_type not in NO_GRADIENT:
            # an output of unknown type might be float: better a missing rule named than a
            # gradient silently cut
            requires |= {o for o in node.output
                         if o and info.get(o, (0,))[0] in FLOAT_TYPES | {TensorProto.UNDEFINED}}
    loss_input = graph.output[0].name
    if loss_input not in requires:
        raise TraceDiffError(f"graph output 0 ({loss_input!r}) depends on no float input or "
                             "initializer: put the logits/prediction first among the outputs")
    path, reaches = _loss_path(nodes, loss_input, requires)
    node_names = _node_names(graph)
    for node in path:
        if node.op_type not in RULES or node.domain not in ("", "ai.onnx"):
            where = node_names[tuple(node.output)]
            raise TraceDiffError(
                f"no gradient rule for op {node.op_type} (node {where}): add one to "
                "tracediff.adapters.onnx.grad.vjp.RULES or export the model without it; the forward "
                "trace is written")
    graph_inputs = {i.name for i in graph.input if i.name not in initializers}
    consts.update(_computed_values(model, path, consts, feeds or {}, providers))
    return Analysis(model, loss_input, info, consts, parameters, path, reaches, node_names,
                    graph_inputs)


def _computed_values(model, path, consts, feeds, providers):
    """The values of the non-constant inputs rules read (``NEEDS_VALUES``), computed by running
    just the nodes that produce them; ``{}`` without feeds or when that fails (the rule then
    says what it needs)."""
    names = sorted({node.input[i] for node in path for i in NEEDS_VALUES.get(node.op_type, ())
                    if len(node.input) > i and node.input[i] and node.input[i] not in consts})
    if not names or not feeds:
        return {}
    import onnxruntime as ort

    graph = model.graph
    nodes = _live(list(graph.node), names)
    read = {t for node in nodes for t in node.input}
    inputs = [i for i in graph.input if i.name in read and i.name in feeds]
    sub = helper.make_graph(nodes, "values", inputs, [onnx.ValueInfoProto(name=n) for n in names],
                            initializer=[t for t in graph.initializer if t.name in read])
    sub_model = helper.make_model(sub, opset_imports=list(model.opset_import))
    sub_model.ir_version = model.ir_version
    try:
        session = ort.InferenceSession(sub_model.SerializeToString(),
                                       providers=providers or ["CPUExecutionProvider"])
        values = session.run(names, {i.name: feeds[i.name] for i in inputs})
    except Exception:
        return {}
    return dict(zip(names, values))


def differentiate(g, analysis, path, pending):
    """Walk ``path`` (last node first) applying the rules; ``pending`` maps a tensor to the
    gradient parts it has so far (the seeds) and, on return, holds the parts of the tensors
    the path reads but does not produce. Returns ``[(node output, its gradient)]``."""
    grads = []
    for node in path:
        g.scope = analysis.node_names[tuple(node.output)]
        dys = []
        for out in node.output:
            parts = pending.pop(out, None) if out else None
            dys.append(g.accumulate(out, parts) if parts else None)
            if parts:
                grads.append((out, dys[-1]))
        dxs = RULES[node.op_type](g, node, dys)
        for x, dx in zip(node.input, dxs):
            if dx is not None and x in analysis.reaches:
                pending[x].append(dx)
    return grads


def build(model, loss, *, feeds=None, providers=None) -> GradientPlan:
    return build_from(analyse(model, loss, feeds=feeds, providers=providers), loss)


def build_from(analysis, loss) -> GradientPlan:
    """The single gradient model of an analysed graph (see ``gradient_model``)."""
    model, loss_input = analysis.model, analysis.loss_input
    g = analysis.emitter()
    target_name = g.fresh("target")
    target, loss_name, seed = _LOSS_BUILDERS[loss](g, loss_input, target_name)
    pending = defaultdict(list)
    pending[loss_input].append(seed)
    grads = differentiate(g, analysis, analysis.path, pending)
    g.scope = "params"
    param_grads = [(p, g.accumulate(p, pending[p])) for p in analysis.parameters
                   if pending.get(p)]
    forward_order = [o for node in model.graph.node for o in node.output if o]
    return _assemble(model, list(model.graph.node), g, target, loss_name, loss_input, grads,
                     param_grads, forward_order)


def _assemble(model, forward_nodes, g, target, loss_name, loss_input, grads, param_grads,
              forward_order):
    graph = model.graph
    # Give every gradient output a readable name: <forward tensor>_grad.
    rename = {}
    for tensor, grad in grads + param_grads:
        if grad in g.emitted and grad not in rename:
            rename[grad] = g.fresh(f"{tensor}_grad")
    loss_out = g.fresh("loss")
    rename[loss_name] = loss_out
    for node in g.nodes:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
    grads = [(t, rename.get(n, n)) for t, n in grads]
    param_grads = [(t, rename.get(n, n)) for t, n in param_grads]
    for old, new in rename.items():
        if old in g.info:
            g.info[new] = g.info[old]

    outputs, seen, extra_nodes = [], set(), []
    sources = {i.name for i in graph.input} | {t.name for t in graph.initializer}

    def declare(name, like, shape=None):
        if name in seen:
            return name
        if name in sources:  # a graph output must be produced by a node
            copy = g.fresh(f"{name}_grad")
            extra_nodes.append(helper.make_node("Identity", [name], [copy], name=copy))
            name = copy
        seen.add(name)
        elem, like_shape = g.info.get(like, (TensorProto.UNDEFINED, None))
        outputs.append(helper.make_tensor_value_info(
            name, elem, _dims(like_shape) if shape is None else shape))
        return name

    declare(loss_out, loss_input, shape=[])
    grads = [(t, declare(n, t)) for t, n in grads]
    param_grads = [(t, declare(n, t)) for t, n in param_grads]
    nodes = forward_nodes + g.nodes + extra_nodes
    inputs = list(graph.input) + ([target] if target is not None else [])
    new_graph = helper.make_graph(
        _live(nodes, [o.name for o in outputs]), f"{graph.name or 'model'}_gradients", inputs,
        outputs, initializer=list(graph.initializer) + g.initializers)
    kept = {n for node in new_graph.node for n in node.input}
    live_inits = [t for t in new_graph.initializer if t.name in kept]
    del new_graph.initializer[:]
    new_graph.initializer.extend(live_inits)
    grad_model = helper.make_model(new_graph, opset_imports=list(model.opset_import),
                                   producer_name="tracediff")
    grad_model.ir_version = model.ir_version
    grad_model.functions.extend(model.functions)
    mapping = {"loss": loss_out, "target": target.name if target is not None else None,
               "grads": grads, "param_grads": param_grads}
    helper.set_model_props(grad_model, {META_KEY: json.dumps(mapping)})
    out_shape = g.info.get(loss_input, (None, None))[1]
    classes = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
    return GradientPlan(grad_model, loss_out, mapping["target"], grads, param_grads,
                        forward_order, classes)


def _live(nodes, outputs):
    """Nodes needed for ``outputs``, in their original (topological) order."""
    needed, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return keep[::-1]


def _parameter_aliases(graph):
    """Identity outputs of float initializers -> the initializer (see ``parameter_aliases``):
    each keeps its own gradient, as in torch, rather than one sum over all of them."""
    return parameter_aliases(graph, FLOAT_TYPES)


def _running_statistics(graph):
    """Initializers used only as a BatchNormalization's mean and variance: buffers, not
    parameters (torch has no gradient for them either), so they get no param_grad."""
    stats_uses, other_uses = set(), set()
    for node in graph.node:
        for position, name in enumerate(node.input):
            is_stat = node.op_type == "BatchNormalization" and position in (3, 4)
            (stats_uses if is_stat else other_uses).add(name)
    return stats_uses - other_uses


def _loss_path(nodes, loss_input, requires):
    """Nodes between the float sources and the loss input, last first; and the tensors on it."""
    reaches, path = {loss_input}, []
    for node in reversed(nodes):
        if any(o in reaches for o in node.output if o):
            path.append(node)
            reaches.update(i for i in node.input if i in requires)
    return path, reaches


def _all_names(graph):
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names |= {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _node_names(graph):
    """A node's outputs -> its name; an unnamed node is ``<op_type>_<index>``, as the forward
    adapter names it. (Keyed by outputs, which SSA makes unique, not by protobuf wrappers.)"""
    return {tuple(node.output): node.name or f"{node.op_type}_{i}"
            for i, node in enumerate(graph.node)}




def target_feed(plan, loss, target):
    """``{target input: checked target}`` for a plan whose loss takes one, else ``{}``."""
    if plan.target_input is not None:
        return {plan.target_input: _checked_target(plan, loss, target)}
    if target is not None:
        raise TraceDiffError(f"loss {loss!r} takes no target: drop target= / --target")
    return {}


def _checked_target(plan, loss, target):
    if target is None:
        raise TraceDiffError(f"loss {loss!r} needs a target: pass target= (--target FILE.npy)")
    target = np.asarray(target)
    spec = next(i for i in plan.model.graph.input if i.name == plan.target_input)
    expected = [d.dim_value if d.HasField("dim_value") else None
                for d in spec.type.tensor_type.shape.dim]
    if spec.type.tensor_type.HasField("shape") and (
            len(expected) != target.ndim
            or any(e is not None and e != s for e, s in zip(expected, target.shape))):
        raise TraceDiffError(
            f"target has shape {list(target.shape)} but loss {loss!r} needs "
            f"{[e if e is not None else '?' for e in expected]}: "
            + ("class indices for every position of the logits but the last axis"
               if loss == "cross_entropy" else "the shape of the model's output 0"))
    if loss == "cross_entropy":
        if not np.issubdtype(target.dtype, np.integer):
            raise TraceDiffError(f"cross_entropy target must hold integer class indices, got "
                                 f"{target.dtype}: pass labels as an int64 array")
        classes = plan.classes
        bad = target[(target < 0) | (target >= classes)] if classes else target[target < 0]
        if bad.size:
            raise TraceDiffError(
                f"cross_entropy target holds class {int(bad.flat[0])} outside 0..{classes - 1}: "
                "labels must index the last axis of the logits")
        return target.astype(np.int64)
    elem = spec.type.tensor_type.elem_type
    return target.astype(helper.tensor_dtype_to_np_dtype(elem))
