"""Kink-aware gradients: where a ReLU-family gate flips because its input sits within
tolerance of the kink (+3.5e-8 on one side, -2.8e-8 on the other in a correct float32 port),
the gradient differs there by the whole upstream gradient. Such a difference, and what it
causes upstream (dL/d earlier layers, dW) while it grows less than GROWTH times, is no
divergence: the pairs are reported ``ok`` with a hint that says why.

The flips are found from the gate's outputs (one side exactly at the kink, the other within
tolerance of it: fused and functional activations have no recorded input) and, where the
producing pair is recorded, from its values (the two sides on either side of the kink, both
within tolerance of it)."""
from __future__ import annotations

import numpy as np

from ..dataflow import declared_inputs
from ..dtypes import as_float
from .align import owner
from . import steps
from .families import family
from .tolerances import SCALE_FLOOR

GROWTH = 10.0          # upstream differences may grow this much beyond the excused one
GATES = {"relu": (0.0,), "relu6": (0.0, 6.0), "leakyrelu": (0.0,), "hardtanh": (-1.0, 1.0),
         "clamp": (0.0,), "clip": (0.0,), "elu": (0.0,)}


def excuse(pairs, ta, tb):
    """Mark the gradient pairs a kink flip explains as not diverged (in place)."""
    forward = [p for p in pairs if p.kind == "forward"]
    by_key = {(p.kind, p.a_name, p.a_call, p.b_name, p.b_call): p for p in pairs}
    for gate in forward:
        kinks = _kinks(ta[gate.a_index], tb[gate.b_index])
        if not kinks or gate.diverged or not (ta[gate.a_index].stored and tb[gate.b_index].stored):
            continue
        producer = _producer(gate, forward, tb, elementwise=kinks != MAX_POOL)
        if producer is None:
            continue
        gated = by_key.get(("backward", producer.a_name, producer.a_call, producer.b_name, producer.b_call))
        if gated is None or not gated.diverged or gated.status not in ("diverged", "shape_mismatch"):
            continue
        flips = (_pool_ties(gate, producer, ta, tb) if kinks == MAX_POOL
                 else _flips(gate, producer, kinks, ta, tb))
        if flips is None or not flips.any():
            continue
        bad = _failing(gated, ta, tb)
        if bad is None or bad.shape != flips.shape or not bad.any() or (bad & ~flips).any():
            continue
        budget = gated.rel_l2 or 0.0
        where = [int(i) for i in np.argwhere(flips)[0]]
        if kinks == MAX_POOL:
            what = (f"a max-pool tie: {gate.label()} has windows whose maximum is tied within "
                    f"tolerance ({int(flips.sum())} element(s), first at {where}); the gradient "
                    f"differs only there, routed to another tied element (rel_l2 {budget:.3g}): "
                    "not a divergence")
        else:
            what = (f"a ReLU-family kink: the gate of {gate.label()} flips at {int(flips.sum())} "
                    f"element(s) (first at {where}) where the forward value is within tolerance of "
                    f"the kink on both sides; the gradient differs only there (rel_l2 {budget:.3g}): "
                    "not a divergence")
        _clear(gated, what)
        _upstream(pairs, gated, producer, budget, gate, tb)


MAX_POOL = ("max-pool",)


def _kinks(ra, rb):
    for record in (rb, ra):
        op = record.meta.get("op_type")
        if isinstance(op, str) and op:
            key = "".join(ch for ch in op.rsplit(".", 1)[-1].lower() if ch.isalnum())
            if key in GATES:
                return GATES[key]
            if family(op) == "relu":
                return GATES["relu"]
            if family(op) == "pool" and "max" in key:
                return MAX_POOL
    return None


def _pool_ties(gate, producer, ta, tb):
    """Every element of a max-pool window whose maximum is tied within tolerance (on either
    side): the gradient may go to any of the tied elements. Non-overlapping windows (stride =
    kernel, read off the shapes), spatial axes after the channels (b's declared layout, else
    channels-first)."""
    inputs, outputs = _values(producer, ta, tb), _values(gate, ta, tb)
    if inputs is None or outputs is None:
        return None
    (xa, xb), (_, yb) = inputs, outputs
    if xb.ndim != yb.ndim or xb.ndim < 3:
        return None
    declared = tb[producer.b_index].meta.get("layout") or tb[gate.b_index].meta.get("layout")
    spatial = [i for i, letter in enumerate(declared) if letter in "DHWL"] \
        if isinstance(declared, str) and len(declared) == xb.ndim else list(range(2, xb.ndim))
    if any(xb.shape[i] != yb.shape[i] for i in range(xb.ndim) if i not in spatial):
        return None
    if any(yb.shape[i] == 0 or xb.shape[i] % yb.shape[i] for i in spatial):
        return None
    shape, axes = [], []
    for i in range(xb.ndim):
        if i in spatial:
            shape += [yb.shape[i], xb.shape[i] // yb.shape[i]]
            axes.append(len(shape) - 1)
        else:
            shape.append(xb.shape[i])
    bound = _bound(producer, xb, xb).reshape(shape)
    tied = np.zeros(shape, bool)
    for x in (xa, xb):
        blocks = x.reshape(shape)
        top = blocks.max(axis=tuple(axes), keepdims=True)
        near = np.abs(blocks - top) <= bound
        tied |= np.broadcast_to(near.sum(axis=tuple(axes), keepdims=True) >= 2, shape)
    return tied.reshape(xb.shape)


def _producer(gate, forward, tb, elementwise=True):
    """The forward pair whose output the gate consumed: meta ``inputs``, else the one before."""
    for kind, name, call in declared_inputs(tb[gate.b_index]) or []:
        if kind == "forward":
            for p in forward:
                if (p.b_name, p.b_call) == (name, call):
                    return p
    before = [p for p in forward if p.b_index < gate.b_index and p.position == gate.position]
    if before and (not elementwise or _numel(before[-1].shape_b) == _numel(gate.shape_b)):
        return before[-1]
    return None


def _numel(shape):
    return int(np.prod(shape)) if shape else 1


def _values(pair, ta, tb):
    """Both tensors in b's shape (a rearranged as the pair was compared), float64."""
    ra, rb = steps.records(pair, ta, tb)
    if not (ra.stored and rb.stored):
        return None
    a, b = np.asarray(as_float(ra.view()), np.float64), np.asarray(as_float(rb.view()), np.float64)
    if pair.rearrangement is not None and a.shape != b.shape:
        a = pair.rearrangement.apply(a)
    if a.size != b.size:
        return None
    return a.reshape(b.shape), b


def _bound(pair, b, level):
    tol = pair.tolerance
    rms = float(np.sqrt(np.mean(b * b))) if b.size else 0.0
    return tol["atol"] + tol["rtol"] * np.maximum(np.abs(level), SCALE_FLOOR * rms)


def _flips(gate, producer, kinks, ta, tb):
    out = _values(gate, ta, tb)
    if out is None:
        return None
    ya, yb = out
    flips = np.zeros(yb.shape, bool)
    for k in kinks:
        near = (np.abs(ya - k) <= _bound(gate, yb, k)) & (np.abs(yb - k) <= _bound(gate, yb, k))
        flips |= near & (np.sign(ya - k) != np.sign(yb - k))
    inputs = _values(producer, ta, tb)
    if inputs is not None and inputs[1].shape == yb.shape:
        xa, xb = inputs
        for k in kinks:
            near = (np.abs(xa - k) <= _bound(producer, xb, k)) & (np.abs(xb - k) <= _bound(producer, xb, k))
            flips |= near & ((xa > k) != (xb > k))
    return flips


def _failing(pair, ta, tb):
    out = _values(pair, ta, tb)
    if out is None:
        return None
    a, b = out
    rms = float(np.sqrt(np.mean(b * b))) if b.size else 0.0
    tol = pair.tolerance
    return np.abs(a - b) > tol["atol"] + tol["rtol"] * np.maximum(np.abs(b), SCALE_FLOOR * rms)


def _clear(pair, note):
    pair.status = "layout" if pair.shape_a != pair.shape_b else "ok"
    pair.diverged = False
    pair.hint = note


def _upstream(pairs, gated, producer, budget, gate, tb):
    """Gradients upstream of the flip (earlier layers, and the weights of the producing layer and
    before) that differ no more than GROWTH times the excused difference."""
    forward_at = {p.b_name: p.b_index for p in pairs if p.kind == "forward" and p.b_call == 0}
    for p in pairs:
        if not p.diverged or p.position != gated.position or p.status not in ("diverged", "shape_mismatch"):
            continue
        if p.rel_l2 is None or p.rel_l2 > GROWTH * max(budget, 1e-300):
            continue
        if p.kind == "backward" and p.b_index > gated.b_index:
            pass
        elif p.kind == "param_grad":
            at = forward_at.get(owner(tb[p.b_index]))
            if at is None or at > producer.b_index:
                continue
        else:
            continue
        _clear(p, f"inherits the ReLU-family kink at {gate.label()}: rel_l2 {p.rel_l2:.3g}, within "
                  f"{GROWTH:g}x the excused {budget:.3g}: not a divergence")
