"""Which records a forward record consumed: its meta ``inputs`` (docs/conventions.md), or, in a
trace recorded without it, the forward (or input) record just before it."""
from __future__ import annotations

from ..dataflow import declared_inputs


def consumed(trace, record) -> list:
    """``[(kind, name, call)]`` of the records ``record`` consumed."""
    declared = declared_inputs(record)
    if declared:
        return declared
    previous = None
    for r in trace:
        if r.index == record.index:
            break
        if r.step == record.step and r.kind in ("forward", "input"):
            previous = r
    return [] if previous is None else [(previous.kind, previous.name, previous.call)]
