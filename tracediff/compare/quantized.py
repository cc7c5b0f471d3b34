"""Quantized against float: an integer record with a ``scale`` (and ``zero_point``) in its
meta, as the LiteRT adapter stores int8/int16 tensors, is compared with a float record through
its dequantized values, ``(q - zero_point) * scale``, within about one quantization step
(docs/diff.md "Quantized against float"), not called a ``dtype_mismatch``."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..quantization import dequantize, quantized, step  # noqa: F401 (quantized: re-exported)

STEPS = 1.0     # the atol a quantized pair gets, in quantization steps (its largest scale)


class Dequantized:
    """A quantized record seen as the float32 tensor it stands for: what ``compare_pair`` reads
    of it (values, sample, dtype, statistics) is dequantized; the rest is the record's."""

    def __init__(self, record):
        self._record = record
        self.dtype = "float32"
        self.hash = ""
        self._values = None
        self._stats = None

    def __getattr__(self, name):
        return getattr(self._record, name)

    def view(self):
        if self._values is None:
            self._values = dequantize(self._record.view(), self._record.meta)
        return self._values

    read = view

    def sample(self):
        indices, values = self._record.sample()
        return indices, dequantize(values, self._record.meta, self._record.shape, indices)

    @property
    def stats(self):
        if self._stats is None:
            stats = dict(self._record.stats)
            values = self.view() if self._record.stored else self.sample()[1]
            stats["l2"] = float(np.sqrt(np.sum(np.square(values, dtype=np.float64))))
            if not self._record.stored:
                stats["l2"] *= math.sqrt(max(self._record.numel, 1) / max(values.size, 1))
            self._stats = stats
        return self._stats


def pairing(ra, rb, tol):
    """``(a, b, tolerance, note)`` for a quantized record against a float one: the quantized
    side dequantized, the tolerance's atol at least one step; None for any other pair."""
    floats = [str(r.dtype).startswith(("float", "bfloat")) for r in (ra, rb)]
    sides = [not floats[0] and quantized(ra), not floats[1] and quantized(rb)]
    if not ((sides[0] and floats[1]) or (sides[1] and floats[0])):
        return _dequantized_output(ra, rb, tol, floats)
    record = ra if sides[0] else rb
    quantum = step(record.meta)
    tolerance = replace(tol, atol=max(tol.atol, STEPS * quantum))
    note = (f"{'a' if sides[0] else 'b'} is {record.dtype} quantized (scale "
            f"{_brief(record.meta.get('scale'))}, zero point "
            f"{_brief(record.meta.get('zero_point', 0))}): compared dequantized, atol one "
            f"quantization step ({quantum:.3g})")
    a = Dequantized(ra) if sides[0] else ra
    b = Dequantized(rb) if sides[1] else rb
    return a, b, tolerance, {"rule": "quantized", "step": quantum, "steps": STEPS}, note


def _dequantized_output(ra, rb, tol, floats):
    """A float record a DEQUANTIZE op wrote (meta ``quantization_step``, the step of the int
    tensor it dequantized) against a float one: judged within that step too."""
    if not all(floats):
        return None
    marked = [r.meta.get("quantization_step") for r in (ra, rb)]
    side = 0 if isinstance(marked[0], (int, float)) else 1 if isinstance(marked[1], (int, float)) else None
    if side is None or not marked[side] > 0:
        return None
    quantum = float(marked[side])
    note = (f"{'ab'[side]} is a dequantized output (step {quantum:.3g}): atol one "
            "quantization step")
    return (ra, rb, replace(tol, atol=max(tol.atol, STEPS * quantum)),
            {"rule": "quantized", "step": quantum, "steps": STEPS}, note)


def _brief(value):
    if isinstance(value, list):
        return f"per axis, {len(value)} values" if len(value) > 1 else _brief(value[0])
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def ranked(pairs):
    """The quantized-against-float pairs of a report, worst first: lowest SQNR (dB), then
    largest rel_l2."""
    chosen = [p for p in pairs if isinstance(p.tolerance, dict) and p.tolerance.get("rule") == "quantized"]

    def key(p):
        sqnr = p.stats.get("sqnr_db")
        rel = p.stats.get("rel_l2")
        return (math.inf if sqnr is None or (isinstance(sqnr, float) and math.isnan(sqnr)) else sqnr,
                -(rel or 0.0))
    return sorted(chosen, key=key)
