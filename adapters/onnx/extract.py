"""A one-layer ONNX model for ``tracediff extract``: one node of the candidate (or the nodes of
one torch module, as the exporter scoped them) cut out of the graph as a standalone model with
its initializers, its inputs named ``arg:0``, ``arg:1``... as in the case file, and its output
named ``output``."""
from __future__ import annotations

import numpy as np
from onnx import helper

from ...errors import TraceDiffError
from .load import load_model
from .util import copied

OUTPUT = "output"


def layer_record(trace, layer, call):
    """The forward record of ``trace`` that a layer named ``layer`` stands for, and the records
    of the nodes it spans: a record of that name (one node), or else the nodes of the torch
    module ``layer`` (meta ``scope``), ending at the one carrying its output (meta ``module``).
    ``(None, [])`` where neither names anything."""
    records = [r for r in trace if r.kind == "forward" and r.meta.get("onnx_output")]
    target = next((r for r in records if r.name == layer and r.call == call), None)
    if target is not None:
        return target, [target]
    members = [r for r in records if _within(r.meta.get("scope"), layer)
               and r.meta.get("module_call", 0) == call]
    if not members:
        return None, []
    target = next((r for r in members if r.meta.get("module") == layer), members[-1])
    return target, members[:members.index(target) + 1]


def _within(scope, module) -> bool:
    return bool(scope) and (scope == module or scope.startswith(module + "."))


def layer_model(model, trace, members, target, reference):
    """``(ModelProto, [(input name, value)])``: the nodes that output ``members`` (records of
    ``trace``, the candidate's own), fed the reference's values of what they read from outside
    (``reference(kind, name, call)``, else the candidate's recorded value), with the
    initializers and Constant nodes they read; its one output is ``target``'s tensor."""
    proto, source = load_model(model)
    graph = proto.graph
    step = trace[0].step
    by_tensor = {r.meta["onnx_output"]: r for r in trace
                 if r.kind in ("forward", "input") and r.step == step and r.meta.get("onnx_output")}
    producer = {o: node for node in graph.node for o in node.output}
    nodes = [producer[r.meta["onnx_output"]] for r in members]
    nodes = list({id(n): n for n in nodes}.values())
    inside = {o for n in nodes for o in n.output}
    initializers = {t.name: t for t in graph.initializer}
    constants = []
    for tensor in (i for n in nodes for i in n.input):
        node = producer.get(tensor)
        if node is not None and node.op_type == "Constant" and tensor not in inside:
            constants.append(node)
            inside.update(node.output)
    renamed, feeds, used = {}, [], []
    for tensor in dict.fromkeys(i for n in nodes for i in n.input):
        if not tensor or tensor in inside:
            continue
        if tensor in initializers:
            used.append(initializers[tensor])
            continue
        record = by_tensor.get(tensor)
        if record is None:
            raise TraceDiffError(f"extract: {source} node input {tensor!r} has no record in the "
                                 "candidate's trace: record it again with the current tracediff")
        value = reference(record.kind, record.name, record.call)
        value = record.read() if value is None else value
        renamed[tensor] = f"arg:{len(feeds)}"
        feeds.append((renamed[tensor], np.ascontiguousarray(value)))
    renamed[target.meta["onnx_output"]] = OUTPUT
    copies = []
    for node in constants + nodes:
        copy = copied(node)
        copy.input[:] = [renamed.get(i, i) for i in copy.input]
        copy.output[:] = [renamed.get(o, o) for o in copy.output]
        copies.append(copy)
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                            value.shape) for name, value in feeds]
    output = helper.make_tensor_value_info(
        OUTPUT, helper.np_dtype_to_tensor_dtype(np.dtype(target.dtype)), target.shape)
    cut = helper.make_graph(copies, f"{graph.name or 'model'}:{target.name}", inputs, [output],
                            initializer=used)
    one = helper.make_model(cut, opset_imports=list(proto.opset_import))
    one.ir_version = proto.ir_version
    one.functions.extend(proto.functions)
    return one, feeds
