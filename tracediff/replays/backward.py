"""The backward half of a replay, for candidates whose adapter differentiates each layer call
on its own (Keras, ONNX, Flax): each call's VJP with the reference's dL/d(its output), taken
with respect to the reference's values it was given, is its contribution to dL/d of the records
it consumed. The reference's dL/d of a record is the sum over everything that consumed it, so a
record is judged only where every consumer the candidate's dataflow (meta ``inputs``) lists
was differentiated, and the sum of their contributions is compared.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .dataflow import consumed


class LocalBackward:
    """What an adapter's replay fills: ``params`` ``{parameter record name: gradient}`` summed
    over calls; ``contributions`` ``{(layer, call): {(kind, name, call): dL/d}}``, each layer
    call's VJP for the records it consumed; ``complete``: the layer calls whose every tensor
    input held the reference's value of a record, so ``contributions`` is all they send back
    (a call fed a value made outside the layers is not: its VJP reaches unknown records)."""

    def __init__(self):
        self.params = {}
        self.contributions = defaultdict(dict)
        self.complete = set()
        # ``{(record name, call): ([consumers], dL/d)}`` an adapter that checks completeness
        # itself (Flax: by the graph it traced) judged ready; None: judge ``contributions``
        self.sums = None

    def param(self, name, grad):
        self.params[name] = accumulate(self.params.get(name), np.asarray(grad))

    def contribute(self, layer, call, source, grad):
        if grad is None:
            return
        found = self.contributions[(layer, call)]
        found[source] = accumulate(found.get(source), np.asarray(grad))


def accumulate(total, value):
    """``total + value``, summed in float64 (``total`` None: ``value`` as it is). One term
    keeps its dtype, so a VJP that repeats the reference's own arithmetic stays bit-identical
    to the reference's gradient, and judging it needs no comparison."""
    if total is None:
        return value
    return np.asarray(total, np.float64) + value


def input_gradients(trace, backward) -> dict:
    """``{(record name, call): ([consumer layers], summed dL/d)}`` of the records replay can
    judge: every consumer complete, at least one contribution. Where some record of ``trace``
    consumed values made outside the layers (meta ``inputs_partial``), an op nobody recorded
    may consume any record: nothing is judged."""
    step = next(iter(trace)).step
    consumers = defaultdict(set)
    for record in trace:
        if record.kind != "forward" or record.step != step:
            continue
        if record.meta.get("inputs_partial"):
            return {}
        layer = (record.name.partition(":")[0], record.call)
        for source in consumed(trace, record):
            consumers[source].add(layer)
    out = {}
    for source, layers in consumers.items():
        if not all(layer in backward.complete for layer in layers):
            continue
        parts = [(layer, backward.contributions[layer].get(source)) for layer in sorted(layers)]
        parts = [(layer, grad) for layer, grad in parts if grad is not None]
        if parts:
            total = None
            for _, grad in parts:
                total = accumulate(total, grad)
            out[(source[1], source[2])] = ([layer for (layer, _), _ in parts], total)
    return out
