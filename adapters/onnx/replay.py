"""Replay of an ONNX model: every node run on the reference's values of what it consumes, in
one onnxruntime session.

onnxruntime feeds only graph inputs, so the graph is cut at every edge whose value is known:
each node input that another node produces becomes a graph input of its own, fed with the
reference's value of the record it pairs with (or, where it pairs with none, the candidate's own
recorded value), and every node output is a graph output. One run then gives each node's output
from the reference's inputs: its local result. Edges from Constant nodes and values that were
not recorded (sequences) stay as they are.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ...errors import TraceDiffError, first_line
from ...quantization import dequantize, quantize, quantized
from .capture import resolve_providers
from .load import load_model

SUFFIX = "::replayed"


def replay(model, reference, wanted, trace, *, providers=None):
    """``{(record name, call): local output}`` for the forward records in ``wanted``.

    ``reference(kind, name, call)`` gives the reference's value of a candidate record in the
    candidate's layout (None where it has none); ``trace`` is the candidate's own trace, whose
    records carry their ONNX tensor names (meta ``onnx_output``)."""
    proto, source = load_model(model)
    records, own = _records(trace)
    graph = onnx.GraphProto()
    graph.CopyFrom(proto.graph)
    initializers = {t.name for t in graph.initializer}
    produced = {o for node in graph.node if node.op_type != "Constant" for o in node.output}
    feeds, cut = {}, {}
    for tensor in sorted({i for node in graph.node for i in node.input}):
        if not tensor or tensor in initializers or tensor not in records:
            continue
        value = reference(*records[tensor])
        if value is None:
            if tensor not in produced:
                continue          # a graph input without a pair: fed as it is below
            value = own[tensor].read()
        elif quantized(own[tensor]):    # a QDQ model's integers: the float value quantized
            value = quantize(value, own[tensor].meta, own[tensor].dtype)
        cut[tensor] = tensor + SUFFIX
        feeds[cut[tensor]] = np.ascontiguousarray(value)
    for node in graph.node:
        node.input[:] = [cut.get(i, i) for i in node.input]
    outputs = {tensor: key for tensor, key in ((t, records.get(t)) for t in produced)
               if key is not None and (key[1], key[2]) in wanted}
    graph_inputs = [i for i in graph.input if i.name not in initializers]
    for graph_input in graph_inputs:
        if graph_input.name in feeds or graph_input.name in cut:
            continue
        if graph_input.name in own:
            feeds[graph_input.name] = own[graph_input.name].read()
    kept_inputs = [i for i in graph_inputs if i.name in feeds]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    graph.input.extend(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(
        value.dtype), None) for name, value in feeds.items() if name.endswith(SUFFIX))
    del graph.output[:]
    graph.output.extend(onnx.ValueInfoProto(name=t) for t in outputs)
    del graph.value_info[:]
    cut_model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    cut_model.ir_version = proto.ir_version
    cut_model.functions.extend(proto.functions)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(cut_model.SerializeToString(), options,
                                       providers=resolve_providers(providers))
        values = session.run(list(outputs), feeds)
    except Exception as exc:
        raise TraceDiffError(f"replay: onnxruntime cannot run {source} cut at its edges "
                             f"({first_line(exc)}); diff the traces with tracediff diff") from None
    return {(key[1], key[2]): dequantize(value, own[tensor].meta) if quantized(own[tensor])
            else value for (tensor, key), value in zip(outputs.items(), values)}


def graph_inputs(model):
    """The names of the model's inputs that no initializer provides, in order."""
    proto, _ = load_model(model)
    initializers = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in initializers]


def _records(trace):
    """``({ONNX tensor: (kind, record name, call)}, {ONNX tensor: record})`` of the candidate's
    forward and input records (meta ``onnx_output``)."""
    records, own = {}, {}
    for r in trace:
        tensor = r.meta.get("onnx_output")
        if tensor and r.kind in ("forward", "input") and r.step == trace[0].step:
            records[tensor] = (r.kind, r.name, r.call)
            own[tensor] = r
    return records, own


def local_backward(model, reference, trace, *, providers=None):
    """``({parameter: local gradient}, {(record name, call): ([consumers], local dL/d)})``: each
    node's VJP with the reference's dL/d(its output) on the reference's inputs
    (``grad.local``), for the candidate recorded with a loss."""
    from .grad.local import local_gradients

    proto, _ = load_model(model)
    records, own = _records(trace)
    own_inputs = {name: own[name].read() for name in graph_inputs(proto) if name in own}
    params, inputs = local_gradients(proto, records, reference, own_inputs,
                                     resolve_providers(providers))
    return params, {(records[tensor][1], records[tensor][2]): found
                    for tensor, found in inputs.items()}
