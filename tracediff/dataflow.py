"""The dataflow a trace declares: which records each record consumed, its meta ``inputs``
(docs/conventions.md). Every reader of that meta (the diff's producing pairs, kinks and
precision, replay) parses it here."""
from __future__ import annotations


def declared_inputs(record) -> list | None:
    """``[(kind, name, call)]`` of the records ``record`` says it consumed; None where it says
    nothing (no meta ``inputs``). Entries without a name, or with a call that is no number
    (a damaged trace), are left out."""
    declared = record.meta.get("inputs")
    if not isinstance(declared, list):
        return None
    out = []
    for entry in declared:
        if not isinstance(entry, dict) or "name" not in entry:
            continue
        try:
            call = int(entry.get("call", 0))
        except (TypeError, ValueError):
            continue
        out.append((entry.get("kind", "forward"), entry["name"], call))
    return out
