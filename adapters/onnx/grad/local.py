"""Local gradients for layer replay: every node's vector-Jacobian product with the reference's
dL/d(its output), on the reference's values of its inputs, in one onnxruntime run.

The prepared forward graph (``prepare``) is cut as replay cuts it: each tensor a node reads
that has a reference value becomes a graph input fed with it (``<tensor>::replayed``), and
each node output with a reference dL/d gets it as a seed (``<tensor>::seed``). The rules of
``vjp`` then run backward from all seeds at once: between two cuts the gradient flows through
the ops that have no reference value of their own (an exporter's Reshape before a Gemm), and
stops at the cuts, so what reaches a cut input is the sum of its consumers' VJPs — what the
reference's dL/d of that tensor is — and what reaches an initializer is its local gradient.
A cut input (or initializer) is judged only where every path from it reaches a seed: a node
output with a reference value but no reference dL/d, a graph output without a seed or an op
without a rule leave it unjudged.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper

from ....errors import TraceDiffError, first_line
from .forward import run_model
from .graph import NO_GRADIENT, Emitter, _all_names, _live
from .prepare import FLOAT_TYPES, _constant_values, _prepared, _tensor_info
from ..util import copied
from .vjp import RULES

CUT, SEED = "::replayed", "::seed"


def local_gradients(proto, records, reference, own_values, providers=None):
    """``({initializer: gradient}, {tensor: ([consumer nodes], dL/d)})`` as NumPy.

    ``records``: ``{tensor: (kind, record name, call)}`` of the candidate's records;
    ``reference(kind, name, call)``: the reference's value in the candidate's layout, or None;
    ``own_values``: ``{graph input: array}``, the candidate's own inputs (for shapes)."""
    model = _prepared(proto, own_values, providers)
    graph = model.graph
    info, consts = _tensor_info(model), _constant_values(graph)
    initializers = {t.name for t in graph.initializer}
    params = [t.name for t in graph.initializer if t.data_type in FLOAT_TYPES]
    nodes = [copied(node) for node in graph.node]
    feeds, cut = {}, {}
    for tensor in sorted({i for node in nodes for i in node.input if i}):
        if tensor in initializers or tensor in consts or tensor not in records:
            continue
        value = reference(*records[tensor])
        if value is not None and _is_float(info, tensor):
            cut[tensor] = tensor + CUT
            feeds[cut[tensor]] = np.ascontiguousarray(value)
    for node in nodes:
        node.input[:] = [cut.get(i, i) for i in node.input]
    read = {i for node in nodes for i in node.input if i}
    for graph_input in graph.input:
        if graph_input.name in read and graph_input.name not in initializers:
            if graph_input.name not in own_values:
                return {}, {}
            feeds[graph_input.name] = np.asarray(own_values[graph_input.name])
    g = Emitter(dict(info), dict(consts), _all_names(graph) | set(feeds),
                wanted=set(read) | set(cut.values()))
    for tensor, name in cut.items():
        g.info[name] = info.get(tensor) or _value_info(feeds[name])
    pending, seeded = defaultdict(list), set()
    for node in nodes:
        for out in node.output:
            seed = reference("backward", *records[out][1:]) if out in records else None
            if seed is not None and _is_float(info, out):
                feeds[out + SEED] = np.ascontiguousarray(seed)
                g.info[out + SEED] = info.get(out) or _value_info(seed)
                pending[out].append(out + SEED)
                seeded.add(out)
    failed = set()
    for node in reversed(nodes):
        dys = [g.accumulate(o, pending.pop(o)) if pending.get(o) else None for o in node.output]
        if all(dy is None for dy in dys) or node.op_type in NO_GRADIENT:
            continue
        g.scope = node.name or node.output[0]
        try:
            dxs = RULES[node.op_type](g, node, dys)
        except (KeyError, TraceDiffError):
            failed.add(id(node))
            continue
        for x, dx in zip(node.input, dxs):
            if dx is not None and x:
                pending[x].append(dx)
    covered = _covered(nodes, seeded, failed, info, {o.name for o in graph.output})
    consumers = defaultdict(list)
    for node in nodes:
        for i in node.input:
            consumers[i].append(node)
    wanted = {}
    for tensor, name in cut.items():
        if pending.get(name) and all(covered[id(n)] for n in consumers[name]):
            wanted[("input", tensor)] = g.accumulate(name, pending[name])
    for param in params:
        if pending.get(param) and all(covered[id(n)] for n in consumers[param]):
            wanted[("param", param)] = g.accumulate(param, pending[param])
    if not wanted:
        return {}, {}
    values = _run(model, nodes, g, feeds, wanted, providers)
    param_grads = {name: value for (kind, name), value in values.items() if kind == "param"}
    input_grads = {tensor: ([_node_name(n, records) for n in consumers[cut[tensor]]], value)
                   for (kind, tensor), value in values.items() if kind == "input"}
    return param_grads, input_grads


def _covered(nodes, seeded, failed, info, graph_outputs):
    """``{id(node): whether every path from its outputs ends at a seed}``, so the gradient it
    sends back is all there is."""
    consumers = defaultdict(list)
    for node in nodes:
        for i in node.input:
            consumers[i].append(node)
    covered = {}
    for node in reversed(nodes):     # topological order: consumers are decided first
        covered[id(node)] = id(node) not in failed and all(
            out in seeded or not out or not _is_float(info, out)
            or (out not in graph_outputs and all(covered.get(id(c), False) for c in consumers[out]))
            for out in node.output)
    return covered


def _run(model, nodes, g, feeds, wanted, providers):
    graph = model.graph
    outputs, extra = [], []
    for key, name in wanted.items():
        out = g.fresh(f"{key[1]}_local_grad")
        extra.append(helper.make_node("Identity", [name], [out], name=out))
        outputs.append((key, out))
    all_nodes = nodes + g.nodes + extra
    live = _live(all_nodes, [out for _, out in outputs])
    read = {i for node in live for i in node.input if i}
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                            list(value.shape))
              for name, value in feeds.items() if name in read]
    new_graph = helper.make_graph(
        live, "local_gradients", inputs, [onnx.ValueInfoProto(name=out) for _, out in outputs],
        initializer=[t for t in list(graph.initializer) + g.initializers if t.name in read])
    local = helper.make_model(new_graph, opset_imports=list(model.opset_import))
    local.ir_version = model.ir_version
    local.functions.extend(model.functions)
    try:
        values = run_model(local, [out for _, out in outputs],
                           {name: value for name, value in feeds.items() if name in read},
                           providers)
    except TraceDiffError as exc:
        raise TraceDiffError(f"replay: the local gradients of the ONNX model cannot run "
                             f"({first_line(exc)}); replay without loss_fn") from None
    return {key: np.asarray(value, np.float64) for (key, _), value in zip(outputs, values)}


def _is_float(info, tensor):
    elem = info.get(tensor, (None,))[0]
    return elem is None or elem in FLOAT_TYPES or elem == onnx.TensorProto.UNDEFINED


def _value_info(value):
    return helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype), tuple(np.shape(value))


def _node_name(node, records):
    """The record name of the node's first output, else the node's own name."""
    out = node.output[0] if node.output else ""
    return records[out][1] if out in records else (node.name or out)
