"""A trace drawn as a Model Explorer graph, for a side with no model file: a node per forward
and input record (ids as ``keys.trace_nodes`` keys them), grouped by module, wired by the
records' meta ``inputs`` (the trace's dataflow, docs/conventions.md). Needs Model Explorer
(``tracediff[viewer]``)."""
from __future__ import annotations

from ..dataflow import declared_inputs
from ..primes import render_shape
from .keys import group_of, node_id


def trace_graph(trace, name):
    """``{"graphs": [Graph]}`` (Model Explorer's adapter response) of ``trace``."""
    from model_explorer import graph_builder as gb

    graph = gb.Graph(id=name, nodes=[])
    known = set()
    for record in trace.records():
        if record.kind not in ("forward", "input") or node_id(record.name, record.call) in known:
            continue
        ident = node_id(record.name, record.call)
        known.add(ident)
        label = record.meta.get("op_type") or record.meta.get("type") or record.kind
        node = gb.GraphNode(id=ident, label=str(label), namespace=group_of(record))
        node.attrs.append(gb.KeyValue(key="record", value=ident))
        for position, (kind, source, call) in enumerate(declared_inputs(record) or []):
            source_id = node_id(source, call)
            if kind in ("forward", "input") and source_id in known:
                node.incomingEdges.append(gb.IncomingEdge(
                    sourceNodeId=source_id, sourceNodeOutputId="0", targetNodeInputId=str(position)))
        shape = render_shape(list(record.shape), None) if record.shape is not None else "[?]"
        node.outputsMetadata.append(gb.MetadataItem(id="0", attrs=[
            gb.KeyValue(key="tensor_shape", value=f"{record.dtype}{shape}")]))
        graph.nodes.append(node)
    return {"graphs": [graph]}
