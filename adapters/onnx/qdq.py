"""QDQ models (``onnxruntime.quantization``'s ``QuantFormat.QDQ``) seen as the float model they
quantize, so a QDQ trace pairs record by record with the float model's.

A quantizer wraps every layer in QuantizeLinear/DequantizeLinear pairs: a weight is an integer
initializer read through a DequantizeLinear, a layer's float output goes through a
QuantizeLinear (the integers the deployed kernel writes) and a DequantizeLinear. The float view
folds them away:

- a layer whose output only QuantizeLinear nodes read is recorded once, as its quantized
  output (the integers, with ``scale`` and ``zero_point``), under the layer's own name; its
  float value before the quantization is the accumulator of an integer kernel, not recorded;
- an activation the quantizer removed (``Relu``/``Clip`` after a Conv: it gave its output
  tensor to the Conv and let the quantization range clip) keeps its float-model name, decoded
  from the tensor name ``/2/Relu_output_0`` that the Conv now writes: the record is the Relu's;
- a quantized weight is the ``param`` of the float name (``3.weight`` for ``3.weight_quantized``),
  stored as integers with its scale;
- a QuantizeLinear of a graph input and every DequantizeLinear are no records: their readers
  read the value they stand for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from onnx import helper, numpy_helper

from .util import copied

QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
REMOVABLE_ACTIVATIONS = ("Relu", "Clip")     # what onnxruntime's QDQ quantizer folds away
_OUTPUT_NAME = re.compile(r"^(.*)_output_\d+$")
_REPEAT = re.compile(r"_\d+$")
_SUFFIX = "_quantized"


@dataclass
class FloatView:
    """``nodes``: per node of the QDQ graph, the node as the float model has it (its inputs
    read float names), or None where it is folded away. ``quantization``: the quantization
    meta of the record at a node index. ``weights``: float name -> (quantized initializer,
    its meta). ``hidden``: initializers that are quantization parameters. ``fused``: the
    layers recorded under the name of the activation the quantizer removed after them (a Conv
    and its Relu), as the float model has them."""
    nodes: list
    fused: list = field(default_factory=list)
    quantization: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    hidden: set = field(default_factory=set)


def float_view(nodes, initializers):
    """The :class:`FloatView` of a QDQ graph (``nodes`` in topological order, ``initializers``
    name -> TensorProto); None for a graph without QuantizeLinear/DequantizeLinear."""
    if not any(node.op_type in (QUANTIZE, DEQUANTIZE) for node in nodes):
        return None
    producer = {t: i for i, node in enumerate(nodes) for t in node.output if t}
    readers = {}
    for i, node in enumerate(nodes):
        for t in node.input:
            readers.setdefault(t, []).append(i)
    names = {node.name for node in nodes if node.name}
    view = FloatView(list(nodes))
    renamed = {}                    # tensor -> the tensor the float view reads instead
    for i, node in enumerate(nodes):
        if node.op_type not in (QUANTIZE, DEQUANTIZE):
            continue
        view.hidden.update(t for t in node.input[1:] if t in initializers)
        view.nodes[i] = None
        source = node.input[0]
        if node.op_type == DEQUANTIZE:
            if source in initializers:
                name = source[:-len(_SUFFIX)] if source.endswith(_SUFFIX) else source
                view.weights[name] = (source, quantization(node, initializers))
                renamed[node.output[0]] = name
            else:
                renamed[node.output[0]] = renamed.get(source, source)
            continue
        origin = producer.get(source)
        if (origin is None or view.nodes[origin] is None
                or any(nodes[r].op_type != QUANTIZE for r in readers[source])):
            renamed[node.output[0]] = renamed.get(source, source)   # a graph input's, say
            continue
        meta = quantization(node, initializers)
        if not meta:
            renamed[node.output[0]] = renamed.get(source, source)
            continue
        view.nodes[i] = _as_layer(nodes[origin], source, node.output[0], names)
        if view.nodes[i].op_type != nodes[origin].op_type:
            view.fused.append(nodes[origin])
        view.nodes[origin] = None
        view.quantization[i] = meta
    view.nodes = [_reading(node, renamed) for node in view.nodes]
    view.fused = [_reading(node, renamed) for node in view.fused]
    return view


def _reading(node, renamed):
    """``node`` reading the float view's tensors."""
    if node is None or not any(t in renamed for t in node.input):
        return node
    node = copied(node)
    node.input[:] = [renamed.get(t, t) for t in node.input]
    return node


def quantization(node, initializers) -> dict:
    """``scale``, ``zero_point`` (lists with ``quantized_dimension`` per axis) of a
    QuantizeLinear/DequantizeLinear node whose parameters are initializers; {} otherwise."""
    if len(node.input) < 2 or node.input[1] not in initializers:
        return {}
    scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(initializers[node.input[2]]) if len(node.input) > 2
            and node.input[2] in initializers else np.zeros_like(scale, dtype=np.int64))
    if scale.size == 1:
        return {"scale": float(scale.reshape(())),
                "zero_point": int(np.asarray(zero).reshape(-1)[0])}
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return {"scale": [float(s) for s in scale.reshape(-1)],
            "zero_point": [int(z) for z in np.broadcast_to(zero, scale.shape).reshape(-1)],
            "quantized_dimension": int(axis)}


def _as_layer(node, float_tensor, quantized_tensor, names):
    """``node`` writing ``quantized_tensor``: its float model's record. Where the quantizer
    removed an activation after it, the float tensor carries that activation's name."""
    layer = copied(node)
    match = _OUTPUT_NAME.match(float_tensor)
    if match and match.group(1) not in names and match.group(1) != node.name:
        removed = match.group(1)
        op_type = _REPEAT.sub("", removed.rsplit("/", 1)[-1])
        if op_type in REMOVABLE_ACTIVATIONS:
            layer = helper.make_node(op_type, list(node.input), [], name=removed)
    layer.output[:] = [quantized_tensor]
    return layer

