"""The layout replay assumes for each pair: the one the diff found, or, for a pair whose values
disagree (so the diff could not find one), the one its producing pair establishes.

A channels-last port with a wrong activation: the activation's pair diverges, so the diff finds
no permutation for it, yet its values are NHWC like the BatchNorm's before it, and its consumer
(the pooling) must be fed the reference's activation in NHWC. A flatten of such a map follows
its producer's permutation as well, through the merge of the trailing axes.
"""
from __future__ import annotations

import math

from ..compare.layout import Rearrangement
from .dataflow import consumed

KINDS = ("input", "forward", "backward", "param_grad")


def assumed(report, trace_a) -> dict:
    """``{id(pair): Rearrangement or None}`` for the input, forward, backward and parameter-
    gradient pairs; None means no rearrangement (same shape), a missing entry that none could
    be assumed."""
    forward = {(p.kind, p.a_name, p.a_call): p for p in report.pairs if p.kind in ("input", "forward")}
    out = {}
    for pair in report.pairs:
        if pair.kind not in KINDS:
            continue
        same_shape = list(pair.shape_a) == list(pair.shape_b)
        if pair.rearrangement is not None and pair.diverged and same_shape:
            out[id(pair)] = None     # a layout no declaration explains is the mistake itself
        elif pair.rearrangement is not None:
            out[id(pair)] = pair.rearrangement
        elif same_shape and not pair.diverged:
            out[id(pair)] = None
        elif pair.kind == "param_grad":
            if same_shape:
                out[id(pair)] = None
        elif pair.kind == "backward":
            own = forward.get(("forward", pair.a_name, pair.a_call))
            if own is not None and id(own) in out:
                out[id(pair)] = out[id(own)]
            elif same_shape:
                out[id(pair)] = None
        else:
            derived = _from_producer(pair, trace_a, forward, out)
            if derived is not None or same_shape:
                out[id(pair)] = derived
    return out


def _from_producer(pair, trace_a, forward, known):
    """The rearrangement a diverged pair inherits from the pair of a record it consumed: a
    flatten of a permuted map (same shapes on both sides) still needs the permutation."""
    if pair.kind != "forward":
        return None
    for source in consumed(trace_a, trace_a[pair.a_index]):
        producer = forward.get(source)
        found = known.get(id(producer)) if producer is not None else None
        derived = merged(found, pair.shape_a, pair.shape_b) if found is not None else None
        if derived is not None and not derived.is_identity(math.prod(pair.shape_b)):
            return derived
    return None


def merged(r: Rearrangement, shape_a, shape_b):
    """``r`` carried over to tensors whose shapes merge consecutive atoms of ``r``'s two sides
    (the same map, or a flatten of it); None where they do not."""
    axis_a = _groups(shape_a, r.a_atoms)
    axis_b = _groups(shape_b, r.b_atoms)
    if axis_a is None or axis_b is None:
        return None
    flatten = len(set(axis_a)) < len(axis_a) or len(set(axis_b)) < len(axis_b)
    return Rearrangement(tuple(r.a_atoms), tuple(r.perm), tuple(r.b_atoms), tuple(shape_b),
                         flatten, axis_a, axis_b)


def _groups(shape, atoms):
    """The axis of ``shape`` each atom falls in, when ``shape`` merges consecutive atoms."""
    if math.prod(shape) != math.prod(atoms):
        return None
    axes, atom = [], 0
    for axis, size in enumerate(shape):
        product = 1
        while atom < len(atoms) and product * atoms[atom] <= size and (product < size or atoms[atom] == 1):
            product *= atoms[atom]
            axes.append(axis)
            atom += 1
        if product != size:
            return None
    return tuple(axes) if atom == len(atoms) else None
