"""Plan a memory-bounded capture: cut the graph into consecutive groups of nodes whose outputs
fit a memory budget.

Every group becomes its own small model whose inputs are the tensors it reads from earlier
groups (or the graph inputs) and whose outputs are all its node outputs. Running the groups in
order computes each node once; only the tensors that later groups still read are carried over.
Output sizes come from ONNX shape inference run on a weightless copy of the graph with the
actual input shapes; an output inference leaves unsized is assumed as large as its node's
largest input (right for the shape-preserving ops that dominate).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ...errors import TraceDiffError

SMALL_INITIALIZER = 4096   # elements: kept in the weightless copy so shapes can be propagated


@dataclass
class Group:
    nodes: list                                   # graph node indices, in order
    inputs: list = field(default_factory=list)    # tensors read from earlier groups / inputs
    initializers: list = field(default_factory=list)
    constants: list = field(default_factory=list)  # Constant node indices the group reads
    outputs: list = field(default_factory=list)    # every non-empty output of its nodes
    nbytes: int = 0


def topological_order(graph):
    """Indices of the graph's nodes in a topological order that keeps the file's order where
    it already is one."""
    nodes = list(graph.node)
    produced_by = {}
    for index, node in enumerate(nodes):
        for tensor in node.output:
            if tensor:
                produced_by[tensor] = index
    deps = [sorted({produced_by[t] for t in node_reads(n) if t in produced_by} - {i})
            for i, n in enumerate(nodes)]
    if all(all(d < i for d in ds) for i, ds in enumerate(deps)):
        return list(range(len(nodes)))
    order, state = [], [0] * len(nodes)
    for start in range(len(nodes)):
        stack = [(start, iter(deps[start]))]
        if state[start]:
            continue
        state[start] = 1
        while stack:
            index, pending = stack[-1]
            nxt = next(pending, None)
            if nxt is None:
                stack.pop()
                state[index] = 2
                order.append(index)
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(deps[nxt])))
    return order


def node_reads(node):
    """Every tensor a node reads, including outer-scope names used inside its subgraphs."""
    reads = [t for t in node.input if t]
    for attribute in node.attribute:
        graphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
        for sub in graphs:
            reads.extend(_outer_reads(sub))
    return reads


def _outer_reads(graph):
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    reads = []
    for node in graph.node:
        for tensor in node_reads(node):
            if tensor not in defined:
                reads.append(tensor)
        defined.update(t for t in node.output if t)
    return reads


def inferred_types(model, feeds):
    """``{tensor name: TypeProto}`` from shape inference on a weightless copy with the real
    input shapes (weights become typed inputs; small initializers keep their values so
    Reshape targets propagate). Empty where inference fails."""
    graph = model.graph
    skeleton = helper.make_graph([], graph.name or "skeleton", [], [])
    skeleton.node.extend(graph.node)
    for value in graph.input:
        if value.name in feeds:
            array = feeds[value.name]
            skeleton.input.append(helper.make_tensor_value_info(
                value.name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
    for tensor in graph.initializer:
        numel = int(np.prod(tensor.dims)) if tensor.dims else 1
        if numel <= SMALL_INITIALIZER and tensor.data_location != onnx.TensorProto.EXTERNAL:
            skeleton.initializer.append(tensor)
        else:
            skeleton.input.append(helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))
    skeleton.output.extend(graph.output)
    copy = helper.make_model(skeleton, opset_imports=model.opset_import,
                             ir_version=model.ir_version)
    copy.functions.extend(model.functions)
    try:
        inferred = shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)
    except Exception:  # inference is an estimate only: running still works without it
        return {}
    types = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        types[value.name] = value.type
    return types


def tensor_nbytes(type_proto):
    """Bytes of a tensor type with a fully known shape, else None."""
    if not type_proto.HasField("tensor_type"):
        return None
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape") or not tensor.elem_type:
        return None
    numel = 1
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        numel *= dim.dim_value
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 4
    return numel * itemsize


def estimate_sizes(nodes, types, known):
    """Bytes of every node output: inferred where possible, else its node's largest input."""
    sizes = dict(known)
    for node in nodes:
        fallback = max((sizes.get(t, 0) for t in node.input if t), default=0)
        for tensor in node.output:
            if not tensor:
                continue
            size = tensor_nbytes(types[tensor]) if tensor in types else None
            sizes[tensor] = fallback if size is None else size
    return sizes


def plan_groups(nodes, sizes, budget, graph_inputs, initializer_names):
    """Consecutive groups of non-Constant nodes whose outputs fit ``budget`` bytes (a node
    larger than the budget gets a group of its own), with the reads of each group."""
    groups, current = [], Group(nodes=[])
    for index, node in enumerate(nodes):
        if node.op_type == "Constant":
            continue
        size = sum(sizes.get(t, 0) for t in node.output if t)
        if current.nodes and budget is not None and current.nbytes + size > budget:
            groups.append(current)
            current = Group(nodes=[])
        current.nodes.append(index)
        current.nbytes += size
    if current.nodes:
        groups.append(current)
    return _with_reads(nodes, groups, initializer_names)


def plan_checkpoints(nodes, sizes, budget, initializer_names, kept_to_end=()):
    """Groups for a checkpointed run: outputs fitting ``budget`` as in ``plan_groups``, but cut
    where the fewest bytes cross from one group to the next (the boundary tensors a
    checkpointed backward keeps), not greedily. ``kept_to_end`` names tensors read after the
    last node (the loss input)."""
    order = [i for i, node in enumerate(nodes) if node.op_type != "Constant"]
    position = {}
    for p, index in enumerate(order):
        for tensor in nodes[index].output:
            if tensor:
                position[tensor] = p
    last = {}
    for p, index in enumerate(order):
        for tensor in node_reads(nodes[index]):
            if tensor in position:
                last[tensor] = p
    for tensor in kept_to_end:
        if tensor in position:
            last[tensor] = len(order)
    # crossing[c]: bytes of tensors made at or before position c and read after it
    crossing = np.zeros(len(order) + 1)
    for tensor, p in position.items():
        if last.get(tensor, p) > p:
            crossing[p] += sizes.get(tensor, 0)
            crossing[last[tensor]] -= sizes.get(tensor, 0)
    crossing = np.cumsum(crossing)[:len(order)]
    outputs = np.asarray([sum(sizes.get(t, 0) for t in nodes[i].output if t) for i in order],
                         dtype=float)
    prefix = np.concatenate([[0.0], np.cumsum(outputs)])
    # best[i]: least boundary bytes for the first i nodes, ending in a cut; one byte a group
    # breaks ties towards fewer groups
    best = np.zeros(len(order) + 1)
    start = np.zeros(len(order) + 1, dtype=int)
    cut_cost = np.concatenate([[0.0], crossing + 1])
    for end in range(1, len(order) + 1):
        first = int(np.searchsorted(prefix, prefix[end] - budget, side="left"))
        first = min(first, end - 1)  # a node larger than the budget: a group of its own
        costs = best[first:end] + cut_cost[first:end]
        choice = first + int(np.argmin(costs))
        best[end], start[end] = costs[choice - first], choice
    cuts, end = [], len(order)
    while end > 0:
        cuts.append((start[end], end))
        end = start[end]
    groups = [Group(nodes=order[a:b], nbytes=int(prefix[b] - prefix[a])) for a, b in cuts[::-1]]
    return _with_reads(nodes, groups, initializer_names)


def _with_reads(nodes, groups, initializer_names):
    constant_of = {n.output[0]: i for i, n in enumerate(nodes)
                   if n.op_type == "Constant" and n.output}
    for group in groups:
        produced, reads = set(), []
        for index in group.nodes:
            node = nodes[index]
            for tensor in node_reads(node):
                if tensor not in produced and tensor not in reads:
                    reads.append(tensor)
            produced.update(t for t in node.output if t)
            group.outputs.extend(t for t in node.output if t)
        group.initializers = [t for t in reads if t in initializer_names]
        group.constants = sorted({constant_of[t] for t in reads if t in constant_of})
        group.inputs = [t for t in reads
                        if t not in initializer_names and t not in constant_of]
    return groups


def last_reads(groups):
    """``{tensor: index of the last group that reads it}``: when a carried tensor can go."""
    last = {}
    for position, group in enumerate(groups):
        for tensor in group.inputs:
            last[tensor] = position
    return last


def group_model(model, nodes, group, initializers, input_types, outputs=None):
    """A standalone model computing one group: its reads as inputs, its node outputs (or just
    ``outputs``) as outputs (left untyped: onnxruntime fills in what it computes)."""
    graph = helper.make_graph([], f"{model.graph.name or 'graph'}_group", [], [])
    graph.node.extend(nodes[i] for i in group.constants)
    graph.node.extend(nodes[i] for i in group.nodes)
    for name in group.inputs:
        graph.input.append(_value_info(name, input_types[name]))
    graph.initializer.extend(initializers[name] for name in group.initializers)
    graph.output.extend(onnx.ValueInfoProto(name=name)
                        for name in (group.outputs if outputs is None else outputs))
    out = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out


def typed_input(name, value):
    """The typed graph input a carried value (array or sequence of arrays) becomes."""
    return _value_info(name, value)


def _value_info(name, value):
    """The typed input a carried value becomes in the next group."""
    if isinstance(value, np.ndarray):
        return helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
    if isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
        element = helper.make_tensor_type_proto(
            helper.np_dtype_to_tensor_dtype(value[0].dtype), None)
        return helper.make_value_info(name, helper.make_sequence_type_proto(element))
    raise TraceDiffError(
        f"tensor {name!r} is a {type(value).__name__}, which cannot be carried from one group "
        "of nodes to the next: raise --max-memory so its producer and readers share a group")


def initializer_arrays_nbytes(initializers, names):
    total = 0
    for name in names:
        tensor = initializers[name]
        total += len(tensor.raw_data) if tensor.HasField("raw_data") else \
            numpy_helper.to_array(tensor).nbytes
    return total
