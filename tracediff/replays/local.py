"""A replayed layer's local error, judged at depth 1, and the root causes of a report."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..compare import hints
from ..compare.engine import rms_from_stats
from ..compare.metrics import compare, same_bytes
from ..dtypes import as_float


def skipped(why) -> dict:
    return {"status": f"skipped: {why}", "rel_l2": None, "max_abs": None}


def judge(pair, local_a, record_b, policy, layout, by=None) -> dict:
    """``local`` of one pair: the candidate layer's output (or parameter gradient) from the
    reference's inputs against the reference's, at the tolerance of a layer one deep (no
    growth with depth: that growth is what hides a small bug in a deep network). ``layout``:
    the rearrangement from the candidate's layout (None: the same; False: none known). A
    layout the diff found but no declared layout explains (a flatten in the wrong order, a
    transposed weight gradient) is this layer's own mistake: the local result is ``diverged``
    with the diff's hint even where the permutation makes the values agree. ``by``: the layer
    whose backward computed it, for a replayed dL/d(input), or the layers whose backwards
    sum to it (a record several layers consume)."""
    b = record_b.view()
    a = local_a
    if layout:
        a = layout.apply(a)
    elif tuple(a.shape) != tuple(b.shape):
        return skipped("its layout against the reference's is unknown (its shapes differ and "
                       "the values of neither it nor its producer match)")
    b_rms = rms_from_stats(record_b)    # the recorder's statistics: no pass over b
    if pair.status == "layout" and pair.diverged and layout:
        local = _compared(pair, a, b, policy, b_rms)
        local.update(status="diverged", hint=pair.hint)
        return local
    local = _compared(pair, a, b, policy, b_rms)
    if by is not None:
        local["by"] = by[0] if isinstance(by, (list, tuple)) and len(by) == 1 else by
    return local


def _compared(pair, a, b, policy, b_rms) -> dict:
    tol = policy.resolve(pair.kind, pair.a_name, pair.b_name, pair.dtype_a, pair.dtype_b, 1)
    if pair.tolerance.get("rule") == "quantized":     # a quantized layer: one step, as the diff
        tol = replace(tol, atol=max(tol.atol, pair.tolerance["step"] * pair.tolerance["steps"]))
    if a.dtype.kind == b.dtype.kind == "f" and a.dtype.itemsize > b.dtype.itemsize:
        # a sum taken in float64 (several consumers' VJPs), or a float64 port, against a float32
        # reference: judged in the reference's precision, where two terms add up bit for bit as
        # the reference's own sum did, and the comparison takes the compiled kernel
        a = a.astype(b.dtype)
    if same_bytes(a, b):      # the reference's own computation repeated: nothing to compare
        return {"status": "ok", "rel_l2": 0.0, "max_abs": 0.0, "sqnr_db": math.inf,
                "tolerance": tol.to_dict()}
    result = compare(np.asarray(as_float(a)), np.asarray(as_float(b)), tol.rtol, tol.atol,
                     b_rms=b_rms)
    stats = result.stats()
    local = {"status": "ok" if result.passed else "diverged", "rel_l2": stats.get("rel_l2"),
             "max_abs": stats.get("max_abs"), "sqnr_db": stats.get("sqnr_db"),
             "tolerance": tol.to_dict()}
    if not result.passed:
        local["hint"] = hints.explain(np.asarray(as_float(hints.leading(a)), np.float64),
                                      np.asarray(as_float(hints.leading(b)), np.float64),
                                      kind=pair.kind)
    return local


def root_causes(pairs) -> list:
    """Every pair whose local error exceeds its tolerance, worst first, one entry a mistake:

    - a container (a block, the model's ``<root>``) whose output carries a wrong child's local
      error is not a cause of its own: only one whose children are all right on the reference's
      inputs (the error is in the container's own glue, an ``out += identity`` say) is listed;
    - a layer whose forward is wrong has a backward and parameter gradients consistent with
      that mistake: its dL/d(input) (or a sum over consumers it is among) and its parameters'
      gradients are not listed again. A dL/d(input) names the layers whose backward gave it
      (``by``): a wrong backward alone (a custom gradient) is named there;
    - a layer with several outputs (an LSTM's output, h and c) is one entry, its worst output.
    """
    found = [p for p in pairs if getattr(p, "local", None) and p.local["status"] == "diverged"]
    forward = [p for p in found if p.kind == "forward"]
    paths = [_module_path(p.a_name) for p in forward]
    wrong = {path for p, path in zip(forward, paths)
             if not any(other != path and _contains(path, other) for other in paths)}
    kept = [p for p in found if _own_cause(p, wrong)]
    kept.sort(key=lambda p: -(p.local["rel_l2"] or 0.0))
    causes, listed = [], set()
    for p in kept:
        if p.kind == "forward":
            if _module_path(p.a_name) in listed:
                continue        # another output of a layer already listed
            listed.add(_module_path(p.a_name))
        causes.append({"a_name": p.a_name, "b_name": p.b_name, "kind": p.kind,
                       "local_rel_l2": p.local["rel_l2"], "hint": p.local.get("hint") or p.hint,
                       **({"by": p.local["by"]} if "by" in p.local else {})})
    return causes


def _own_cause(pair, wrong_layers) -> bool:
    """Whether a diverged local result is a mistake of its own, not one of ``wrong_layers``
    (the module paths of the layers whose forward is a root cause) seen again."""
    if pair.kind == "forward":
        return _module_path(pair.a_name) in wrong_layers
    if pair.kind == "param_grad" and _module_path(pair.a_name)[:-1] in wrong_layers:
        return False     # the gradient of a wrong layer's own parameter
    by = pair.local.get("by")
    layers = [by] if isinstance(by, str) else list(by or ())
    return not any(_module_path(layer) in wrong_layers for layer in layers)


def _module_path(name) -> tuple:
    """``encoder.layers.0:last_hidden_state`` -> ("encoder", "layers", "0"); ``<root>`` -> ()."""
    name = name.partition(":")[0]
    return () if name in ("", "<root>") else tuple(name.replace("/", ".").split("."))


def _contains(outer, inner) -> bool:
    return len(inner) > len(outer) and inner[:len(outer)] == outer


def settle_introduced(report) -> None:
    """Where replay ran, its verdict replaces the growth heuristic of a first divergence: a
    layer wrong on the reference's inputs introduced the error, one right on them inherited it."""
    for pair in (report.first_divergence.forward, report.first_divergence.backward,
                 report.first_divergence.param_grad):
        if pair is None or pair.local is None or pair.local["status"].startswith("skipped"):
            continue
        rel = pair.local["rel_l2"]
        if pair.local["status"] == "diverged":
            verdict, reason = "introduced here", (
                f"replay: on the reference's inputs this layer is still off (local rel_l2 {rel:.3g})")
        else:
            verdict, reason = "inherited", (
                f"replay: on the reference's inputs this layer matches (local rel_l2 {rel:.3g}): "
                "the error comes from upstream")
        pair.introduced = {**(pair.introduced or {}), "verdict": verdict, "reason": reason,
                           "local_rel_l2": rel}
