"""A diff report as Model Explorer node data: per side, overlays keyed by the node ids (or output
tensor names) of that side's graph, a roll-up per module, and a node mapping for the split pane.

Model Explorer's format (``model_explorer.node_data_builder.GraphNodeData``): ``{"name",
"results": {key: {"value", "bgColor"?}}, "gradient": [{"stop", "bgColor"}], ...}``. Which
record is which node comes from the caller (``tracediff.explorer`` asks each adapter): here a
side's ``nodes`` is ``{(record name, call): {"ids": [node keys], "group": "a/b"}}``.
"""
from __future__ import annotations

import json
import math
import os

SCHEMA = "tracediff.model_explorer/1"
SIDES = ("a", "b")
# the pairs drawn: values (a model input, a layer's output, a parameter) and their gradients
VALUE_KINDS = ("input", "forward", "param")
GRADIENT_KINDS = ("backward", "param_grad")

# status labels, most telling first: a node several pairs land on shows the first of them
STATUS_COLORS = {
    "first divergence": "#b71c1c",
    "root cause": "#8e24aa",
    "nonfinite": "#424242",
    "shape_mismatch": "#fbc02d",
    "dtype_mismatch": "#fbc02d",
    "diverged": "#ff8a65",
    "layout": "#90caf9",
    "ok": "#81c784",
}
# the error scale: green at 1e-7 and below, yellow at 1e-4, red from 1e-1 (a log scale)
SCALE = ((-7.0, (0x81, 0xc7, 0x84)), (-4.0, (0xff, 0xee, 0x58)), (-1.0, (0xe5, 0x39, 0x35)))


def overlays(report: dict, nodes: dict) -> dict:
    """``{file name: JSON-able content}`` for the sides in ``nodes`` (``{"a": ..., "b": ...}``,
    a side left out when its graph is unknown): ``<side>.status.json`` and ``.forward.json``
    (inputs, layer outputs, parameters), ``.backward.json`` (their gradients), ``.local.json``
    (replay only), ``.groups.json`` (layer outputs), and ``mapping.json``."""
    pairs = report.get("pairs") or []
    first = _first_keys(report)
    causes = {(c.get("kind", "forward"), c.get("a_name"), c.get("b_name"))
              for c in report.get("root_causes") or []}
    files = {}
    for side in SIDES:
        if side not in nodes:
            continue
        keyed = nodes[side]
        label = f"{side.upper()}: {(report.get(side) or {}).get('framework', '?')}"
        forward = [p for p in pairs if p.get("kind") in VALUE_KINDS]
        backward = [p for p in pairs if p.get("kind") in GRADIENT_KINDS]
        files[f"{side}.status.json"] = _status(forward, keyed, side, first, causes, label)
        files[f"{side}.forward.json"] = _errors(forward, keyed, side, _rel_l2,
                                                f"tracediff forward rel_l2 ({label})")
        files[f"{side}.backward.json"] = _errors(backward, keyed, side, _rel_l2,
                                                 f"tracediff gradient rel_l2 ({label})")
        if report.get("root_causes") is not None:
            files[f"{side}.local.json"] = _errors(forward, keyed, side, _local_rel_l2,
                                                  f"tracediff local rel_l2, replay ({label})")
        files[f"{side}.groups.json"] = _groups([p for p in forward if p.get("kind") == "forward"],
                                               keyed, side, first, causes)
    if all(side in nodes for side in SIDES):
        files["mapping.json"] = _mapping(pairs, nodes)
    return files


def write(report: dict, directory, nodes: dict, sides_info: dict) -> dict:
    """Write the overlays and ``index.json`` (what each file is, per side) into ``directory``;
    returns the index."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    files = overlays(report, nodes)
    for name, content in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=1, allow_nan=False)
    index = {"schema": SCHEMA, "ok": report.get("ok"), "sides": {}}
    for side in SIDES:
        info = dict(sides_info.get(side) or {})
        if side in nodes:
            info["overlays"] = {kind: f"{side}.{kind}.json"
                                for kind in ("status", "forward", "backward", "local", "groups")
                                if f"{side}.{kind}.json" in files}
            info["first_divergence"] = _first_ids(report, nodes[side], side)
        index["sides"][side] = info
    index["mapping"] = "mapping.json" if "mapping.json" in files else None
    with open(os.path.join(directory, "index.json"), "w", encoding="utf-8") as handle:
        json.dump(index, handle, indent=1, allow_nan=False)
    return index


def _record(pair, side):
    return pair.get(f"{side}_name"), int(pair.get(f"{side}_call") or 0)


def _identity(pair):
    return (pair.get("kind"), pair.get("a_name"), pair.get("a_call", 0), pair.get("b_name"),
            pair.get("b_call", 0))


def _first_keys(report):
    first = (report.get("first_divergence") or {}).get("forward")
    return _identity(first) if first else None


def _first_ids(report, keyed, side):
    first = (report.get("first_divergence") or {}).get("forward")
    return list((keyed.get(_record(first, side)) or {}).get("ids", [])) if first else []


def _label(pair, first, causes):
    if first is not None and _identity(pair) == first:
        return "first divergence"
    if (pair.get("kind"), pair.get("a_name"), pair.get("b_name")) in causes:
        return "root cause"
    status = pair.get("status", "ok")
    if status == "ok" or (status == "layout" and not pair.get("diverged")):
        return "ok" if status == "ok" else "layout"
    return status if status in STATUS_COLORS else "diverged"


def _rank(label):
    return list(STATUS_COLORS).index(label)


def _status(pairs, keyed, side, first, causes, label):
    results = {}
    for pair in pairs:
        node = keyed.get(_record(pair, side))
        if node is None:
            continue
        status = _label(pair, first, causes)
        for key in node["ids"]:
            if key not in results or _rank(status) < _rank(results[key]["value"]):
                results[key] = {"value": status, "bgColor": STATUS_COLORS[status]}
    return {"name": f"tracediff status ({label})", "results": results,
            "showExpandedSummaryOnGroupNode": True,
            "showLabelCountColumnsInChildrenStatsTable": True}


def _rel_l2(pair):
    return (pair.get("stats") or {}).get("rel_l2")


def _local_rel_l2(pair):
    local = pair.get("local") or {}
    if str(local.get("status", "")).startswith("skipped"):
        return None
    return local.get("rel_l2")


def _errors(pairs, keyed, side, value_of, name):
    results = {}
    for pair in pairs:
        node = keyed.get(_record(pair, side))
        value = value_of(pair)
        if node is None or value is None:
            continue
        value = float(value)
        for key in node["ids"]:
            old = results.get(key)
            if old is None or _worse(value, old["value"]):
                results[key] = {"value": value}
    for result in results.values():
        if not math.isfinite(result["value"]):   # strict JSON: nan/inf shown as a black node
            result["value"] = -1.0
            result["bgColor"] = STATUS_COLORS["nonfinite"]
    finite = [r["value"] for r in results.values() if "bgColor" not in r]
    return {"name": name, "results": results, "gradient": log_gradient(finite),
            "hideAggregatedStats": ["sum"]}


def _worse(value, old):
    return not math.isfinite(value) or (math.isfinite(old) and value > old)


def scale_color(value) -> str:
    """The colour of an error on the log scale (SCALE)."""
    position = math.log10(value) if value > 0 else SCALE[0][0]
    if position <= SCALE[0][0]:
        rgb = SCALE[0][1]
    elif position >= SCALE[-1][0]:
        rgb = SCALE[-1][1]
    else:
        for (x0, c0), (x1, c1) in zip(SCALE, SCALE[1:]):
            if position <= x1:
                t = (position - x0) / (x1 - x0)
                rgb = tuple(round(a + (b - a) * t) for a, b in zip(c0, c1))
                break
    return "#" + "".join(f"{c:02x}" for c in rgb)


def log_gradient(values) -> list:
    """Model Explorer's gradient stops for ``values``. Its stops run linearly from the smallest
    value (0) to the largest (1); a stop at every decade between them, coloured by SCALE, makes
    the colour follow the error's logarithm, on one absolute scale for every model."""
    if not values:
        return []
    low, high = min(values), max(values)
    if high <= low:
        return [{"stop": 0, "bgColor": scale_color(low)}, {"stop": 1, "bgColor": scale_color(high)}]
    stops = [{"stop": 0, "bgColor": scale_color(low)}]
    smallest = min((v for v in values if v > 0), default=high)
    for decade in range(math.floor(math.log10(smallest)) + 1, math.ceil(math.log10(high))):
        at = 10.0 ** decade
        if low < at < high:
            stops.append({"stop": round((at - low) / (high - low), 12), "bgColor": scale_color(at)})
    stops.append({"stop": 1, "bgColor": scale_color(high)})
    return stops


def _groups(pairs, keyed, side, first, causes):
    """Each module group's worst forward pair (max rel_l2 over its nodes, and the worst
    status), so a collapsed layer is summed up by its worst child."""
    groups = {}
    for pair in pairs:
        node = keyed.get(_record(pair, side))
        if node is None or not node.get("group"):
            continue
        value = _rel_l2(pair)
        status = _label(pair, first, causes)
        parts = node["group"].split("/")
        for depth in range(1, len(parts) + 1):
            group = groups.setdefault("/".join(parts[:depth]), {
                "max_rel_l2": None, "worst": None, "worst_node": None, "status": "ok", "pairs": 0})
            group["pairs"] += 1
            if _rank(status) < _rank(group["status"]):
                group["status"] = status
            if value is not None and (group["max_rel_l2"] is None
                                      or _worse(float(value), group["max_rel_l2"])):
                group["max_rel_l2"] = float(value)
                group["worst"] = pair.get(f"{side}_name")
                group["worst_node"] = node["ids"][0] if node["ids"] else None
    for group in groups.values():
        if group["max_rel_l2"] is not None and not math.isfinite(group["max_rel_l2"]):
            group["max_rel_l2"] = str(group["max_rel_l2"])
    return {"schema": SCHEMA, "groups": groups}


def _mapping(pairs, nodes):
    """Model Explorer's sync-navigation mapping (``mappingEntries``): every pair of values
    whose records are nodes on both sides, A on the left."""
    entries, seen = [], set()
    for pair in pairs:
        if pair.get("kind") not in VALUE_KINDS:
            continue
        left = (nodes["a"].get(_record(pair, "a")) or {}).get("ids")
        right = (nodes["b"].get(_record(pair, "b")) or {}).get("ids")
        if not left or not right or (tuple(left), tuple(right)) in seen:
            continue
        seen.add((tuple(left), tuple(right)))
        entries.append({"leftNodeIds": list(left), "rightNodeIds": list(right)})
    return {"mappingEntries": entries}
