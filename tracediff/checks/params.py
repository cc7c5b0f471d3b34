"""Check 9: parameters that should train but receive no gradient, or an exactly zero one."""
from __future__ import annotations

import math

from .context import CheckContext, is_float_record, l2, role
from .result import CheckResult, skip

ID = "frozen_params"
# Roles that are trainable parameters in every framework. A param record with another role may
# be a buffer (a positional-encoding table, a running statistic) that never has a gradient.
TRAINABLE_ROLES = ("weight", "bias", "embedding", "recurrent_weight")


def run(ctx: CheckContext) -> CheckResult:
    threshold = "every trainable parameter has a non-zero gradient at some step (when others do)"
    all_grads = ctx.trace.records(kind="param_grad")
    if not all_grads:
        return skip(ID, "no param_grad records: record parameter gradients "
                    "(loss_fn=..., or rec.param(name, w, grad=g))", threshold)
    grads = {}
    for g in all_grads:
        norm = l2(g) if math.isfinite(l2(g)) else math.inf
        grads[g.name] = max(grads.get(g.name, 0.0), norm)
    declared, undeclared, frozen = [], [], []
    for r in _first_records(ctx.trace.records(kind="param")):
        if not is_float_record(r) or r.name in grads:
            continue
        requires_grad = r.meta.get("requires_grad", r.meta.get("trainable"))  # torch / Keras
        if requires_grad is False:
            frozen.append(r.name)
        elif requires_grad is True:
            declared.append(r.name)
        elif role(r) in TRAINABLE_ROLES:
            undeclared.append(r.name)
    zero = [n for n, v in grads.items() if v == 0.0]
    live = [n for n, v in grads.items() if v > 0]
    note = f" ({len(frozen)} marked requires_grad/trainable=False not counted)" if frozen else ""
    if not live:
        return CheckResult(
            ID, "fail", f"every parameter gradient is exactly zero ({len(grads)} parameter(s)){note}",
            layers=list(grads), value=len(grads), threshold=threshold,
            advice="nothing reaches the parameters: a dead layer blocks every gradient (see "
                   "dead_units, gradient_flow), or the loss is cut from them (detach(), no_grad, "
                   "a loss computed on constants)")
    if not (declared or undeclared or zero):
        return CheckResult(ID, "pass", f"all {len(grads)} parameter(s) with gradients receive a "
                           f"non-zero one{note}", value=0, threshold=threshold)
    parts = []
    if zero:
        parts.append(f"a gradient of exactly zero for {_names(zero)}")
    if declared:
        parts.append(f"no gradient for {_names(declared)} (requires_grad=True)")
    if undeclared:
        parts.append(f"no gradient for {_names(undeclared)}")
    offenders = zero + declared + undeclared
    # Without requires_grad in the record, "no gradient" may be an intentional freeze: warn.
    status = "fail" if zero or declared else "warn"
    return CheckResult(
        ID, status, "; ".join(parts) + f", while {len(live)} other parameter(s) train{note}",
        layers=offenders, value=len(offenders), threshold=threshold,
        advice="the parameter is cut from the loss (detach(), an unused branch, a zeroed or "
               "masked gradient) or left out of training by mistake; freeze it on purpose with "
               "requires_grad=False, or connect it")


def _first_records(records) -> list:
    seen, out = set(), []
    for r in records:
        if r.name not in seen:
            seen.add(r.name)
            out.append(r)
    return out


def _names(names, limit=5) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
