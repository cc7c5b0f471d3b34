"""ONNX adapter: every node output of an ONNX model, computed by onnxruntime, in bounded memory.

``record("model.onnx", {"input": x}, "onnx.h5")`` writes ``input`` records for the graph inputs,
``param`` records for the float initializers and one ``forward`` record per node output (not
Constant nodes) in topological order, each with its op type, ONNX tensor name and the torch
module path the exporter encoded (see ``meta``). Outputs are exposed in groups sized to
``max_memory`` (see ``plan``): the capture never holds more than one group's outputs plus
the tensors later groups still read.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from ...errors import TraceDiffError
from ..base import ONNX_LOSSES
from ...recorder import Recorder
from .inputs import check_feeds, random_feeds
from .load import load_model
from .memory import parse_memory
from .origins import (folded_initializers, is_legacy_export, merged_parameters, node_origins,
                      reader_owners)
from .qdq import float_view
from .meta import node_settings, output_layout, param_meta, parameter_aliases, record_names
from .plan import estimate_sizes, inferred_types, plan_groups, topological_order
from .capture import resolve_providers, run_groups

DEFAULT_MAX_MEMORY = 256 * 2**20
FLUSH_EVERY = 64   # index rows per flush: flushing each of hundreds of records costs ~20%
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def record(model, inputs, path, *, loss=None, target=None, max_memory=None, providers=None,
           overwrite=False, dims=None, seed=None, values=True, save_grad_model=None,
           batches=False) -> None:
    """Record every node output of ``model`` (a path or ``onnx.ModelProto``) on ``inputs``
    (a dict input name -> array; None generates seeded inputs with ``dims`` for dynamic axes).

    ``loss`` (``"cross_entropy"``, ``"mse"`` or ``"sum"``, with ``target``) adds gradients.
    ``max_memory`` (bytes or ``"512MB"``) bounds the outputs (and gradients) held at once
    (default 256 MiB). ``batches=True``: ``inputs`` is a list of such dicts (an evaluation
    set), each run and recorded with its ``batch_index`` (initializers with the first), and
    ``target`` a list of one target a batch.
    """
    if loss is not None and loss not in ONNX_LOSSES:
        raise TraceDiffError(f"unknown loss {loss!r}: use one of {', '.join(ONNX_LOSSES)}")
    if loss in ("cross_entropy", "mse") and target is None:
        raise TraceDiffError(f"loss {loss!r} needs a target: pass target= (--target FILE.npy)")
    budget = parse_memory(DEFAULT_MAX_MEMORY if max_memory is None else max_memory)
    resolved_providers = resolve_providers(providers)
    proto, source = load_model(model)
    if batches:
        all_feeds, targets = _batches(proto, inputs, target, source)
    elif inputs is None:
        feeds, dims = random_feeds(proto, dims, 0 if seed is None else seed)
        all_feeds, targets = [feeds], [target]
    else:
        all_feeds, targets = [check_feeds(proto, inputs, source)], [target]

    graph = proto.graph
    order = topological_order(graph)
    nodes = [graph.node[i] for i in order]
    initializers = {t.name: t for t in graph.initializer}
    plans = [_plan(proto, nodes, feeds, budget, initializers) for feeds in all_feeds]
    legacy = is_legacy_export(proto)
    # a QDQ model is recorded as the float model it quantizes (qdq.py); shown[i] is node i as
    # that model has it, None where a QuantizeLinear/DequantizeLinear is folded away
    view = float_view(nodes, initializers)
    shown = view.nodes if view else nodes
    kept = [i for i, node in enumerate(shown) if node is not None]
    kept_nodes = [shown[i] for i in kept]
    float_names = set(initializers) | (set(view.weights) if view else set())
    folded = sorted(folded_initializers(kept_nodes + (view.fused if view else []), float_names,
                                        legacy))
    run_meta = {"groups": len(plans[0][1]), "max_memory": budget, "providers": resolved_providers,
                "exporter": _exporter(proto, legacy), "opset": _opset(proto),
                "folded_initializers": folded}

    with Recorder(path, framework="onnx", framework_version=f"onnxruntime {ort.__version__}",
                  dims=dims, model=source, seed=seed, overwrite=overwrite, values=values,
                  meta=run_meta, flush_every=FLUSH_EVERY,
                  expected_bytes=sum(sum(p[0].values()) for p in plans) if values else 0) as rec:
        found = node_origins(kept_nodes, _graph_outputs(graph), float_names, legacy)
        origins = dict(zip(kept, found))
        by_node = {}
        for k, _, tensor, name in record_names(kept_nodes, [order[i] for i in kept]):
            by_node.setdefault(kept[k], []).append((tensor, name))
        owners = reader_owners(kept_nodes, found,
                               {k: by_node[i][0][1] for k, i in enumerate(kept) if i in by_node})
        for index, (feeds, (_, groups), batch_target) in enumerate(zip(all_feeds, plans, targets)):
            if batches:
                rec.batch(index)
            for name, array in feeds.items():
                rec.input(name, array, onnx_output=name)
            if index == 0:
                _record_params(rec, graph, kept_nodes + (view.fused if view else []),
                               skip=set(folded), legacy=legacy, owners=owners, view=view)
            names = _record_forward(rec, proto, nodes, by_node, origins, groups, feeds,
                                    initializers, resolved_providers, shown,
                                    view.quantization if view else {})
            if loss is not None:
                from .grad import record_backward
                record_backward(proto, feeds, rec, loss=loss, target=batch_target, names=names,
                                save_grad_model=save_grad_model, providers=resolved_providers,
                                max_memory=budget)


def _batches(proto, inputs, target, source):
    """The feeds of each batch of ``record(..., batches=True)`` and each batch's target."""
    if isinstance(inputs, dict) or inputs is None or not hasattr(inputs, "__iter__"):
        raise TraceDiffError(
            f"record(batches=True) takes a list of input dicts (one a batch), got "
            f"{type(inputs).__name__}: pass a list of them, or batches=False for one input")
    all_feeds = [check_feeds(proto, batch, source) for batch in inputs]
    if not all_feeds:
        raise TraceDiffError("record(batches=True) got no batch: pass at least one input dict")
    if target is None:
        return all_feeds, [None] * len(all_feeds)
    targets = list(target)
    if len(targets) != len(all_feeds):
        raise TraceDiffError(f"record(batches=True) got {len(all_feeds)} batches and "
                             f"{len(targets)} targets: pass one target a batch")
    return all_feeds, targets


def _plan(proto, nodes, feeds, budget, initializers):
    """(estimated output sizes, groups of nodes run together within ``budget``) for ``feeds``."""
    known = {name: array.nbytes for name, array in feeds.items()}
    sizes = estimate_sizes(nodes, inferred_types(proto, feeds), known)
    return sizes, plan_groups(nodes, sizes, budget, feeds, set(initializers))


def _graph_outputs(graph):
    """The graph outputs, and the quantized tensors their DequantizeLinear nodes read (in a
    QDQ model, the float view's records of those outputs)."""
    outputs = {o.name for o in graph.output}
    return outputs | {node.input[0] for node in graph.node
                      if node.op_type == "DequantizeLinear" and node.output[0] in outputs}


def _record_params(rec, graph, nodes, skip, legacy, owners, view=None):
    """A ``param`` record per float initializer and per copy of one standing for another torch
    parameter (a legacy Identity alias, a merged equal-valued parameter), except those an
    exporter's folding rewrote (they are not the torch model's parameters; the run's meta
    lists them). ``owners``: the module of the parameters named after no module (see
    ``origins.reader_owners``)."""
    hidden = view.hidden if view else set()
    floats = {t.name: t for t in graph.initializer
              if t.data_type in _FLOAT_TYPES and t.name not in skip and t.name not in hidden}
    merged = merged_parameters(nodes, set(floats), legacy,
                               lambda name: numpy_helper.to_array(floats[name]))
    readers = {index: alias for alias, (_, indices) in merged.items() for index in indices}
    consumers = {}
    for index, node in enumerate(nodes):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute
                 if a.type == onnx.AttributeProto.INT}
        for position, tensor in enumerate(node.input):
            if index in readers and merged[readers[index]][0] == tensor:
                tensor = readers[index]
            consumers.setdefault(tensor, []).append((node.op_type, position, attrs))
    copies = {}
    for alias, source in parameter_aliases(graph, _FLOAT_TYPES).items():
        copies.setdefault(source, []).append(alias)
    for alias, (source, _) in merged.items():
        copies.setdefault(source, []).append(alias)
    for tensor in graph.initializer:
        if tensor.data_type not in _FLOAT_TYPES or tensor.name in skip or tensor.name in hidden:
            continue
        array = numpy_helper.to_array(tensor)
        # a parameter the exporter stored once for several equal-valued ones: each its own record
        for name in [tensor.name] + copies.get(tensor.name, []):
            rec.param(name, array, onnx_output=name,
                      **param_meta(name, array.shape, consumers.get(name, []), owners.get(name)))
        del array
    initializers = {t.name: t for t in graph.initializer}
    for name, (tensor, quantization) in (view.weights if view else {}).items():
        if name not in skip:       # a quantized weight: its integers, under the float name
            array = numpy_helper.to_array(initializers[tensor])
            rec.param(name, array, onnx_output=tensor, **quantization,
                      **param_meta(name, array.shape, consumers.get(name, []), owners.get(name)))


def _record_forward(rec, proto, nodes, by_node, origins, groups, feeds, initializers, providers,
                    shown, quantization):
    """Write each group's node outputs as they arrive; return the tensor -> record map that the
    gradient recorder pairs its records with. ``shown[i]``: node i as recorded (None: folded
    away); ``quantization``: the scale and zero point of a quantized node's record."""
    graph_outputs = _graph_outputs(proto.graph)
    names = {}
    edges = {name: {"kind": "input", "name": name, "call": 0} for name in feeds}
    calls = {}
    for group, results in run_groups(proto, nodes, groups, feeds, initializers, providers):
        for node_index in group.nodes:
            node = shown[node_index]
            if node is None:
                continue
            settings = node_settings(node)
            for tensor, name in by_node.get(node_index, []):
                value = results.get(tensor)
                if not isinstance(value, np.ndarray):
                    continue  # sequences, maps and absent optionals are not tensors to trace
                meta = {"op_type": node.op_type, "onnx_output": tensor,
                        "layout": output_layout(node.op_type, value.shape),
                        **origins[node_index], **settings,
                        **quantization.get(node_index, {})}
                if tensor in graph_outputs:
                    meta["graph_output"] = True
                meta = {k: v for k, v in meta.items() if v is not None}
                # the dataflow: node inputs made by recorded nodes or fed as graph inputs;
                # initializers and Constant outputs are parameters and constants, not listed
                inputs = [edges[t] for t in dict.fromkeys(node.input) if t in edges]
                rec.forward(name, value, inputs=inputs, **meta)
                call = calls.get(name, 0)
                calls[name] = call + 1
                edges[tensor] = {"kind": "forward", "name": name, "call": call}
                names[tensor] = (name, meta)
    return names


def _exporter(proto, legacy):
    if legacy:
        return "torch.onnx (TorchScript)"
    if any(p.key.startswith("pkg.torch.onnx") for n in proto.graph.node for p in n.metadata_props):
        return "torch.onnx (dynamo)"
    return f"{proto.producer_name} {proto.producer_version}".strip()


def _opset(proto):
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
