"""The per-step summary of a diff over several steps, decode steps or batches: the error
(``rel_l2``) of each layer at each of them, which of them diverged, and, for batches, the worst
batch of each layer and the worst row within it."""
from __future__ import annotations

import math


def summarize(pairs) -> dict | None:
    """``{"columns": [...], "layers": [...]}``, or None when every pair lies in one group (a
    trace of one step, one batch, no decode steps: nothing to tabulate)."""
    columns = {}
    for p in pairs:
        columns.setdefault(p.position, len(columns))
    if len(columns) < 2:
        return None
    layers, by_layer = {}, {}
    by_column = {position: [] for position in columns}
    for p in pairs:
        key = (p.kind, p.a_name, p.a_call, p.b_name, p.b_call)
        if key not in layers:
            layers[key] = {"kind": p.kind, "a_name": p.a_name, "b_name": p.b_name,
                           "label": p.label(), "rel_l2": [None] * len(columns), "diverged": []}
            by_layer[key] = []
        layer = layers[key]
        column = columns[p.position]
        layer["rel_l2"][column] = _finite(p.rel_l2)
        if p.diverged:
            layer["diverged"].append(column)
        by_layer[key].append(p)
        by_column[p.position].append(p)
    out_columns = []
    for (step, decode_step, batch_index), in_column in by_column.items():
        diverged = [p for p in in_column if p.diverged]
        out_columns.append({"step": step, "decode_step": decode_step, "batch_index": batch_index,
                            "pairs": len(in_column), "diverged": len(diverged),
                            "first": diverged[0].label() if diverged else None,
                            "first_kind": diverged[0].kind if diverged else None})
    if any(position[2] >= 0 for position in columns):    # batches: each layer's worst one
        for key, layer in layers.items():
            layer["worst"] = _worst_batch(by_layer[key])
    return {"columns": out_columns, "layers": list(layers.values())}


def _worst_batch(pairs) -> dict | None:
    """The batch whose largest error is largest, and the row (index along the first axis) of
    that error within it."""
    scored = [(p.stats.get("max_abs"), p) for p in pairs if p.batch_index >= 0]
    scored = [(v, p) for v, p in scored if isinstance(v, (int, float)) and not math.isnan(v)]
    if not scored:
        return None
    value, worst = max(scored, key=lambda item: item[0])
    where = worst.stats.get("argmax_abs") or []
    return {"batch_index": worst.batch_index, "row": int(where[0]) if where else None,
            "max_abs": value, "rel_l2": _finite(worst.rel_l2), "diverged": worst.diverged}


def _finite(value):
    if not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return value
