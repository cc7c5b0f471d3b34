"""A forward ONNX graph made ready for differentiation: opset 18 or newer, nodes sorted, shapes
pinned to the feeds (and probed where inference leaves them open), merged or folded parameters
given copies of their own, sequence splits rewritten as plain Splits."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ....errors import TraceDiffError, first_line

MIN_OPSET = 18
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _sorted_nodes(graph):
    """The graph's nodes in topological order (ONNX asks for it; not every producer obeys)."""
    nodes = list(graph.node)
    producer = {o: i for i, node in enumerate(nodes) for o in node.output if o}
    waiting = [{producer[x] for x in node.input if x in producer} for node in nodes]
    if all(all(j < i for j in deps) for i, deps in enumerate(waiting)):
        return nodes
    consumers = defaultdict(list)
    for i, deps in enumerate(waiting):
        for j in deps:
            consumers[j].append(i)
    ready = [i for i, deps in enumerate(waiting) if not deps]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for k in consumers[i]:
            waiting[k].discard(i)
            if not waiting[k]:
                ready.append(k)
    if len(order) != len(nodes):
        raise TraceDiffError("the ONNX graph has a cycle: it cannot be differentiated")
    return [nodes[i] for i in order]


def _prepared(model, feeds, providers, budget=None):
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    opset = next((o.version for o in model_copy.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        try:
            model_copy = onnx.version_converter.convert_version(model_copy, MIN_OPSET)
        except Exception as exc:
            raise TraceDiffError(
                f"cannot convert the model from opset {opset} to {MIN_OPSET} for its gradient "
                f"graph ({type(exc).__name__}: {first_line(exc, '')}); "
                f"re-export it with opset_version={MIN_OPSET}") from None
    ordered = _sorted_nodes(model_copy.graph)
    del model_copy.graph.node[:]
    model_copy.graph.node.extend(ordered)
    _split_merged_parameters(model_copy)  # before shape inference: the copies need shapes
    _relink_folded_transposes(model_copy)
    for graph_input in model_copy.graph.input:
        if graph_input.name not in feeds:
            continue
        shape = np.shape(feeds[graph_input.name])
        dims = graph_input.type.tensor_type.shape
        del dims.dim[:]
        for d in shape:
            dims.dim.add().dim_value = int(d)
    try:
        model_copy = onnx.shape_inference.infer_shapes(model_copy, data_prop=True)
    except Exception:  # inference is an aid: rules that need a shape say so themselves
        pass
    if feeds:
        _probe_shapes(model_copy, feeds, providers, budget)
    _split_sequences(model_copy)
    return model_copy


def _relink_folded_transposes(model):
    """Constant folding (legacy exporter) stores ``W.T`` as a new ``onnx::MatMul_<n>``
    initializer. Where ``W`` is still read elsewhere (GPT-2's embedding, tied to its output
    head), that copy is computed from ``W`` again by a Transpose, so dL/dW sums both uses
    as torch's does."""
    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type in FLOAT_TYPES}
    read = {t for node in graph.node for t in node.input}
    params = {name: t for name, t in floats.items() if name in read and "." in name
              and not name.startswith(("onnx::", "/")) and len(t.dims) == 2}
    relinked = []
    for name, tensor in floats.items():
        if not name.startswith("onnx::") or len(tensor.dims) != 2:
            continue
        shape = tuple(tensor.dims)[::-1]
        source = next((p for p, t in params.items() if tuple(t.dims) == shape and np.array_equal(
            numpy_helper.to_array(t).T, numpy_helper.to_array(tensor))), None)
        if source is not None:
            relinked.append(helper.make_node("Transpose", [source], [name], perm=[1, 0],
                                             name=f"{name}/relinked"))
    if relinked:
        names = {n.output[0] for n in relinked}
        kept = [t for t in graph.initializer if t.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(relinked + nodes)


def _split_merged_parameters(model):
    """Give each parameter the dynamo optimizer merged with an equal-valued one its own
    Identity copy named as torch names it (as the legacy exporter writes them), so each gets
    its own gradient (see ``origins.merged_parameters``)."""
    try:
        from ..origins import is_legacy_export, merged_parameters
    except ImportError:
        return
    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type in FLOAT_TYPES}
    nodes = list(graph.node)
    merged = merged_parameters(nodes, set(floats), is_legacy_export(model),
                               lambda name: numpy_helper.to_array(floats[name]))
    copies = []
    for alias, (source, readers) in merged.items():
        copies.append(helper.make_node("Identity", [source], [alias], name=alias))
        for index in readers:
            inputs = nodes[index].input
            for position, tensor in enumerate(inputs):
                if tensor == source:
                    inputs[position] = alias
    if copies:
        del graph.node[:]
        graph.node.extend(copies + nodes)


def _split_sequences(model):
    """Rewrite ``SplitToSequence`` read back by ``SequenceAt`` at constant positions (the dynamo
    exporter's ``torch.split`` before its optimizer runs) as one ``Split``: the same tensors
    under the same names, through ops that have gradient rules."""
    graph = model.graph
    info, consts = _tensor_info(model), _constant_values(graph)
    readers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    graph_outputs = {o.name for o in graph.output}
    replaced = {}
    for node in graph.node:
        if node.op_type != "SplitToSequence" or node.output[0] in graph_outputs:
            continue
        users = readers[node.output[0]]
        positions = [consts.get(u.input[1]) if len(u.input) > 1 else None for u in users]
        sizes = _sequence_sizes(node, info, consts)
        if sizes is None or not users or any(
                u.op_type != "SequenceAt" or p is None for u, p in zip(users, positions)):
            continue
        axis = _attr_int(node, "axis", 0)
        pieces = [f"{node.output[0]}/split_{i}" for i in range(len(sizes))]
        new_nodes = [helper.make_node("Split", [node.input[0], _int64_initializer(
            graph, f"{node.output[0]}/sizes", sizes)], pieces, axis=axis, name=node.name)]
        squeeze = len(node.input) < 2 or not node.input[1]
        squeeze = squeeze and not _attr_int(node, "keepdims", 1)
        for user, position in zip(users, positions):
            piece = pieces[int(position) % len(sizes)]
            inputs = [piece, _int64_initializer(graph, f"{piece}/axes", [axis])] if squeeze \
                else [piece]
            new_nodes.append(helper.make_node("Squeeze" if squeeze else "Identity", inputs,
                                              list(user.output), name=user.name))
        replaced[tuple(node.output)] = new_nodes
        for user in users:
            replaced[tuple(user.output)] = []
    if not replaced:
        return
    rebuilt = []
    for node in graph.node:
        rebuilt.extend(replaced.get(tuple(node.output), [node]))
    del graph.node[:]
    graph.node.extend(_sorted_nodes(helper.make_graph(rebuilt, "g", [], [])))


def _sequence_sizes(node, info, consts):
    """Piece sizes of a SplitToSequence along its axis, when static; else None."""
    shape = info.get(node.input[0], (0, None))[1]
    axis = _attr_int(node, "axis", 0)
    if shape is None or not -len(shape) <= axis < len(shape) or not isinstance(shape[axis], int):
        return None
    length = shape[axis]
    split = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if len(node.input) > 1 and node.input[1] and split is None:
        return None
    if split is None:
        return [1] * length
    if split.ndim == 0:
        chunk = int(split)
        return [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
    return [int(v) for v in split]


def _attr_int(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _int64_initializer(graph, name, values):
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name


def _probe_shapes(model, feeds, providers, budget=None):
    """Fill in, from one forward run, the node output shapes shape inference left open; with
    a ``budget`` (bytes) the run goes group by group, holding what fits it."""
    import onnxruntime as ort

    info = _tensor_info(model)
    open_shapes = [o for node in model.graph.node for o in node.output
                   if o and info.get(o, (TensorProto.UNDEFINED, None))[0] in FLOAT_TYPES | {0}
                   and not _static(info[o][1] if o in info else None)]
    if not open_shapes:
        return
    if budget is not None:
        from .forward import probe_in_groups

        found = probe_in_groups(model, feeds, open_shapes, budget, providers)
        if found is not None:
            _set_shapes(model, found)
            return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=o) for o in open_shapes)
    try:
        session = ort.InferenceSession(probe.SerializeToString(),
                                       providers=providers or ["CPUExecutionProvider"])
        values = session.run(open_shapes, dict(feeds))
    except Exception:  # the gradient run itself will name what is wrong
        return
    _set_shapes(model, [(name, value.dtype, value.shape) for name, value in
                        zip(open_shapes, values) if isinstance(value, np.ndarray)])


def _set_shapes(model, found):
    """Record ``(tensor, dtype, shape)`` triples in the model's value_info."""
    known = {v.name: v for v in model.graph.value_info}
    for name, dtype, shape in found:
        entry = helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype),
                                              list(shape))
        if name in known:
            known[name].CopyFrom(entry)
        else:
            model.graph.value_info.append(entry)


def _static(shape):
    return shape is not None and all(isinstance(d, int) for d in shape)


def _tensor_info(model):
    info = {}

    def add(value_info):
        t = value_info.type.tensor_type
        shape = None
        if t.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else
                          (d.dim_param or None) for d in t.shape.dim)
        info[value_info.name] = (t.elem_type, shape)

    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        add(vi)
    for t in model.graph.initializer:
        info[t.name] = (t.data_type, tuple(t.dims))
    return info


def _constant_values(graph):
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer
              if t.data_location != TensorProto.EXTERNAL and np.prod(t.dims) <= 64}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values
