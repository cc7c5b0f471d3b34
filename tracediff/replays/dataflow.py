"""Which records a forward record consumed: its meta ``inputs`` (docs/conventions.md), or, in a
trace recorded without it, the forward (or input) record just before it."""
from __future__ import annotations


def consumed(trace, record) -> list:
    """``[(kind, name, call)]`` of the records ``record`` consumed."""
    declared = record.meta.get("inputs")
    if isinstance(declared, list) and declared:
        return [(entry.get("kind", "forward"), entry["name"], int(entry.get("call", 0)))
                for entry in declared if isinstance(entry, dict) and "name" in entry]
    previous = None
    for r in trace:
        if r.index == record.index:
            break
        if r.step == record.step and r.kind in ("forward", "input"):
            previous = r
    return [] if previous is None else [(previous.kind, previous.name, previous.call)]
