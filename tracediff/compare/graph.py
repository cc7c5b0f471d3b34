"""The report's ``graph`` block: the dataflow a trace declares (meta ``inputs``), carried in the
report so that renderers (the HTML report's graph panel) can draw it without opening a trace.

The reference's graph (side ``b``) when it declares its dataflow, else the candidate's; a trace
declaring none is drawn as the chain of its records in execution order (``"dataflow":
"order"``). Only the first step's records: later steps repeat the same graph."""
from __future__ import annotations

from ..dataflow import declared_inputs

NODE_KINDS = ("input", "forward")
MAX_NODES = 20_000   # a bigger graph is cut (``omitted`` says how much): the report stays small


def dataflow_graph(ta, tb) -> dict | None:
    """``{"side", "step", "dataflow", "nodes": [{"kind", "name", "call", "index"}], "edges":
    [[from, to]]}``: nodes are the ``input`` and ``forward`` records of the first group (step,
    decode step, batch), in execution order, at most MAX_NODES of them (then ``"omitted"``: how
    many more), edges index into them. None where neither trace holds a forward record."""
    chosen = None
    for side, trace in (("b", tb), ("a", ta)):
        forward = [r for r in trace if r.kind == "forward"]
        if not forward:
            continue
        if chosen is None:
            chosen = (side, trace, forward)
        if any(declared_inputs(r) is not None for r in forward):
            chosen = (side, trace, forward)
            break
    if chosen is None:
        return None
    side, trace, forward = chosen
    position = forward[0].position
    records = [r for r in trace if r.kind in NODE_KINDS and r.position == position]
    omitted = max(0, len(records) - MAX_NODES)
    records = records[:MAX_NODES]
    node_of = {(r.kind, r.name, r.call): i for i, r in enumerate(records)}
    declared = {r.index: declared_inputs(r) for r in records if r.kind == "forward"}
    dataflow = "declared" if any(v is not None for v in declared.values()) else "order"
    edges = []
    for i, r in enumerate(records):
        if r.kind != "forward":
            continue
        if dataflow == "order":
            sources = [i - 1] if i else []
        else:
            sources = [node_of[key] for key in declared[r.index] or [] if key in node_of]
        edges += [[s, i] for s in dict.fromkeys(sources) if s != i]
    graph = {"side": side, "step": position[0], "dataflow": dataflow,
             "nodes": [{"kind": r.kind, "name": r.name, "call": r.call, "index": r.index}
                       for r in records],
             "edges": edges}
    if omitted:
        graph["omitted"] = omitted
    return graph
