"""Replay of a LiteRT model: every op run on the reference's values of what it consumes, in one
interpreter run (quantization debugging: the error each op *adds*).

The interpreter feeds only subgraph inputs, so the flatbuffer is cut at every edge: each op
input that another op produces and that pairs with a reference record is read instead from a
new subgraph input, fed with the reference's value (quantized with that tensor's own scale and
zero point where the op reads integers). An edge without a reference value stays: the ops
since the last paired tensors run together (an int8 FULLY_CONNECTED and the DEQUANTIZE after
it). Every op output becomes a subgraph output; integer outputs come back dequantized, so the
local error of an int8 op against its float original is the error it adds.
"""
from __future__ import annotations

import copy

import numpy as np

from ...errors import TraceDiffError
from . import capture
from .inputs import load_model

SUFFIX = "::replayed"


def replay(model, reference, wanted, trace):
    """``{(record name, call): local output}`` for the forward records in ``wanted``.

    ``reference(kind, name, call)`` gives the reference's value of a candidate record (float,
    in the candidate's layout; None where it has none); ``trace`` is the candidate's trace,
    whose records carry their tensor names (meta ``tflite_tensor``)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    data, source = load_model(model)
    records, own = {}, {}
    first_step = trace[0].step if len(trace) else 0
    for r in trace:
        tensor = r.meta.get("tflite_tensor")
        if tensor and r.kind in ("forward", "input") and r.step == first_step:
            records[tensor] = (r.kind, r.name, r.call)
            own[tensor] = r
    m = schema.ModelT.InitFromPackedBuf(data, 0)
    graph = m.subgraphs[0]
    names = [_text(t.name) for t in graph.tensors]
    produced = {t for op in graph.operators for t in op.outputs if t >= 0}
    feeds, cut = {}, {}
    for op in graph.operators:
        op.inputs = [int(t) for t in op.inputs]
        for position, t in enumerate(op.inputs):
            if t < 0 or t not in produced or _value(names[t], records, {}, reference,
                                                    graph.tensors[t]) is None:
                continue    # no reference value: computed here, from the ops before it
            if t not in cut:
                tensor = copy.deepcopy(graph.tensors[t])
                tensor.name = (names[t] + SUFFIX).encode()
                graph.tensors.append(tensor)
                cut[t] = len(graph.tensors) - 1
                feeds[cut[t]] = _value(names[t], records, own, reference, graph.tensors[t])
            op.inputs[position] = cut[t]
    originals = [int(i) for i in graph.inputs]
    for t in originals:
        feeds[t] = _value(names[t], records, own, reference, graph.tensors[t])
    if any(v is None for v in feeds.values()):
        missing = next(names[t] if t < len(names) else "?" for t, v in feeds.items() if v is None)
        raise TraceDiffError(f"replay: no value for tensor {missing!r}: record the candidate "
                             "with values=True")
    outputs = {t: records[names[t]] for t in sorted(produced)
               if names[t] in records and (records[names[t]][1], records[names[t]][2]) in wanted}
    graph.inputs = originals + sorted(cut.values())
    graph.outputs = list(outputs)
    m.signatureDefs = []
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    try:
        it = capture.interpreter(bytes(builder.Output()))
        capture.run(it, {t: feeds[t] for t in graph.inputs})
    except TraceDiffError as exc:
        raise TraceDiffError(f"replay: {source} cut at its edges does not run ({exc}); diff "
                             "the traces with tracediff diff") from None
    details = {d["index"]: d for d in it.get_tensor_details()}
    local = {}
    for t, (_, name, call) in outputs.items():
        value = capture.value(it, t)
        if value is not None:
            local[(name, call)] = _dequantized(value, details[t])
    return local


def _text(name):
    return name.decode() if isinstance(name, bytes) else str(name)


def _value(name, records, own, reference, tensor):
    """The reference's value of tensor ``name`` in the tensor's stored type, else the
    candidate's own recorded value."""
    key = records.get(name)
    value = reference(*key) if key is not None else None
    if value is None:
        return own[name].read() if name in own and own[name].stored else None
    return _quantized(np.asarray(value), tensor)


def _quantized(value, tensor):
    """A float reference value as the tensor stores it: ``round(x / scale) + zero_point``
    clipped to its integer type, where the tensor is quantized."""
    from ai_edge_litert import schema_py_generated as schema

    types = {v: k for k, v in vars(schema.TensorType).items() if isinstance(v, int)}
    try:
        dtype = np.dtype(types.get(tensor.type, "").lower())
    except TypeError:
        return value           # a type NumPy has no name for (int4, string): fed as given
    q = tensor.quantization
    scale = None if q is None or q.scale is None or len(q.scale) == 0 else np.asarray(q.scale)
    if dtype.kind not in "iu" or scale is None:
        return value.astype(dtype) if value.dtype != dtype else value
    from ...quantization import quantize

    zero = q.zeroPoint if q.zeroPoint is not None else 0
    return quantize(value, {"scale": scale, "zero_point": zero,
                            "quantized_dimension": q.quantizedDimension}, dtype)


def _dequantized(value, details):
    from .meta import quantization
    from ...quantization import dequantize

    meta = quantization(details)
    if value.dtype.kind in "iu" and meta:
        return dequantize(value, meta)
    return value
