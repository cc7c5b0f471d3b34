"""``write_overlays``: a diff report's Model Explorer node data for both sides, written into a
directory (the files are docs/graph.md's; report/model_explorer.py renders them)."""
from __future__ import annotations

import os

from ..errors import TraceDiffError
from ..report import model_explorer
from ..trace import open_trace
from .keys import KINDS, PairedRecord, framework_of_model, side_nodes


def write_overlays(report: dict, directory, models=(None, None)) -> dict:
    """Write ``<side>.status.json``, ``.forward.json``, ``.backward.json`` (``.local.json`` after
    replay), ``.groups.json``, ``mapping.json`` and ``index.json`` into ``directory``;
    ``models`` is the model drawn for A and for B (None: that side's trace graph)."""
    nodes, info = {}, {}
    for side, model in zip(("a", "b"), models):
        about = report.get(side) or {}
        framework = about.get("framework", "")
        if model is not None and framework_of_model(model) != framework:
            raise TraceDiffError(
                f"model explorer: {model} is a {framework_of_model(model)} model but trace "
                f"{side.upper()} was recorded with {framework or 'an unknown framework'}")
        records = _records(about.get("path"), report, side)
        keyed, graph = side_nodes(framework, records, model)
        nodes[side] = keyed
        info[side] = {"trace": about.get("path"), "framework": framework,
                      "model": None if model is None or not isinstance(model, (str, os.PathLike))
                      else os.path.abspath(model),
                      "graph": graph, "keyed": len(keyed)}
    try:
        return model_explorer.write(report, directory, nodes, info)
    except OSError as exc:
        raise TraceDiffError(f"model explorer: cannot write {directory}: {exc.strerror}; "
                             "choose a writable directory") from None


def _records(path, report, side):
    """The side's input, forward and param records: from its trace, or (a replayed candidate, whose
    trace is gone) from the report's pairs."""
    if path and os.path.isfile(path):
        with open_trace(path) as trace:
            records = [r for r in trace.records() if r.kind in KINDS]
            for record in records:
                record.meta   # parsed while the file is open
            return records
    seen = {}
    for pair in report.get("pairs") or []:
        if pair.get("kind") in KINDS:
            key = (pair["kind"], pair[f"{side}_name"], int(pair.get(f"{side}_call") or 0))
            seen.setdefault(key, PairedRecord(key[1], kind=key[0], call=key[2]))
    return list(seen.values())
