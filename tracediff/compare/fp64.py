"""``td.diff(a, b, fp64=g)``: judge each pair against a float64 run of the reference, the way
PyTorch's accuracy checks do (``torch._dynamo.utils.same(fp64_ref=...)``).

A pair passes when the candidate is about as close to the float64 truth as the reference is:
``rmse(a, g) <= k * rmse(b, g) + floor``, with ``k = 2`` for float32 work and ``3`` where the
lowest precision on the way is 16-bit or lower (the pair's tolerance ``precision``), and
``floor = atol / 10`` (the pair's atol). Where ``b`` equals ``g`` exactly (parameters, integer
values, anything computed without rounding) the ratio says nothing, and the pair keeps its
elementwise verdict. ``a``'s layout is rearranged first. See docs/diff.md.
"""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import as_float
from ..errors import TraceDiffError
from . import steps
from .metrics import dot
from .tolerances import LOW_PRECISION, dtype_default

K_FLOAT32 = 2.0
K_LOW_PRECISION = 3.0
FLOOR_FRACTION = 0.1        # floor = FLOOR_FRACTION * the pair's atol
JUDGED = ("ok", "diverged", "layout")


def check_float64(trace):
    """Refuse a G that is not a float64 run: one line saying which record and what to do."""
    for r in trace:
        if r.dtype.startswith(("float", "bfloat", "complex")) and r.dtype not in ("float64", "complex128"):
            raise TraceDiffError(
                f"--fp64 {trace.path}: {r.kind} record {r.name!r} is {r.dtype}, not float64: "
                "record G from the reference model in float64 (model.double(), inputs as "
                "float64, outside autocast; see docs/diff.md)")


def judge(pairs, ta, tb, tg):
    """Re-judge every comparable pair of ``pairs`` against ``tg``, matched to b's records by
    (position, kind, name, call): the same step, decode step and batch."""
    truth = {(r.position, r.kind, r.name, r.call): r for r in tg}
    if not any((r.position, r.kind, r.name, r.call) in truth for r in tb):
        raise TraceDiffError(
            f"--fp64 {tg.path}: none of its records has the name of a record of {tb.path}: "
            "record G from the reference model itself, in float64 (docs/diff.md)")
    for pair in pairs:
        if pair.status not in JUDGED:
            continue
        rb = tb[pair.b_index]
        rg = truth.get((rb.position, rb.kind, rb.name, rb.call))
        ra = ta[pair.a_index]
        if pair.window is not None:   # a decode step against a whole run
            ra, rb = steps.records(pair, ta, tb)
            if pair.window[0] == "b" and rg is not None:   # G, a run like b's, is cut like it
                rg = steps.Window(rg, *pair.window[1:]) if rg.stored else None
        if rg is None or not (ra.stored and rb.stored and rg.stored) or rg.shape != rb.shape:
            continue
        a = ra.view()
        if pair.rearrangement is not None:
            a = pair.rearrangement.apply(a)
        if a.shape != rb.shape:
            continue
        g = _wide(rg.view())
        err_a = _rmse(_wide(a), g)
        err_b = _rmse(_wide(rb.view()), g)
        del a, g
        tol = pair.tolerance
        k = K_LOW_PRECISION if _low_precision(tol, pair) else K_FLOAT32
        floor = FLOOR_FRACTION * float(tol.get("atol", 0.0))
        pair.stats["err_a_fp64"] = err_a
        pair.stats["err_b_fp64"] = err_b
        if not (math.isfinite(err_a) and math.isfinite(err_b)) or err_b == 0.0:
            tol["fp64"] = "b equals G: elementwise verdict kept" if err_b == 0.0 else "non-finite"
            continue
        tol.update({"rule": "fp64", "k": k, "floor": floor})
        passed = err_a <= k * err_b + floor
        if pair.status == "layout":
            if not passed:
                pair.diverged = True
            continue
        pair.status = "ok" if passed else "diverged"
        pair.diverged = not passed


def _low_precision(tol, pair) -> bool:
    precision = tol.get("precision") or pair.dtype_a
    return max(dtype_default(precision)[0], dtype_default(pair.dtype_a)[0]) >= LOW_PRECISION


def _wide(x) -> np.ndarray:
    x = as_float(x)
    return np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)


def _rmse(x, y) -> float:
    d = np.abs(x - y).reshape(-1)
    if d.size == 0:
        return 0.0
    return math.sqrt(dot(d, d) / d.size)
