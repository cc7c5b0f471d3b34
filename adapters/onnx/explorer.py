"""Model Explorer node keys of an ONNX trace's records, as ``model-explorer-onnx`` builds node
ids: a node's name (``<node_i>`` for the i-th node when it has none), ``[value] <name>`` for a
graph input. Its groups are the node names' scopes (``/encoder/layers.0/Add`` is in
``encoder/layers.0``)."""
from __future__ import annotations

import re

_OUTPUT_SUFFIX = re.compile(r":\d+$")


def node_keys(records, model=None) -> dict:
    """``{(record name, call): {"ids": [node id], "group": scope}}`` for the forward, input and
    param records (a parameter is its initializer's ``[value]`` node). With ``model`` (a path or
    ModelProto) ids come from the graph itself (exact for unnamed nodes, and an aliased
    parameter, an Identity output, is left out); without it from the record names, which are
    the node names."""
    producers, initializers = _graph(model) if model is not None else (None, None)
    out = {}
    for record in records:
        if record.kind in ("input", "param"):
            if record.kind == "input" or initializers is None or record.name in initializers:
                out[(record.name, record.call)] = {"ids": [f"[value] {record.name}"], "group": ""}
            continue
        if record.kind != "forward":
            continue
        tensor = record.meta.get("onnx_output")
        if producers is not None and tensor is not None:
            node = producers.get(tensor)
            if node is None:
                continue
        else:   # the record name is the node name (a replayed candidate's pairs carry no meta)
            node = _OUTPUT_SUFFIX.sub("", record.name)
        out[(record.name, record.call)] = {"ids": [node], "group": _scope(node)}
    return out


def _graph(model):
    """``({output tensor name: node id}, {initializer names})`` of the main graph."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model, load_external_data=False)
    out = {}
    for index, node in enumerate(proto.graph.node):
        for tensor in node.output:
            if tensor:
                out[tensor] = node.name or f"<node_{index}>"
    return out, {t.name for t in proto.graph.initializer}


def _scope(node_id):
    parts = [p for p in node_id.strip("/").split("/") if p]
    return "/".join(parts[:-1])
