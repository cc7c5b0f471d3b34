"""Check 9: parameters that should train but receive no gradient, or an exactly zero one."""
from __future__ import annotations

import math

from .architecture import structure_of
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
    grads, later = {}, set()
    for g in all_grads:
        norm = l2(g) if math.isfinite(l2(g)) else math.inf
        grads[g.name] = max(grads.get(g.name, 0.0), norm)
        if g.step > ctx.step:
            later.add(g.name)
    declared, undeclared, frozen = [], [], []
    for r in _first_records(ctx.trace.records(kind="param")):
        if not is_float_record(r) or r.name in grads:
            continue
        requires_grad = r.meta.get("requires_grad", r.meta.get("trainable"))  # torch / Keras
        if requires_grad is False:
            if role(r) in TRAINABLE_ROLES:   # buffers (running statistics) are no parameters
                frozen.append(r.name)
        elif requires_grad is True:
            declared.append(r.name)
        elif role(r) in TRAINABLE_ROLES:
            undeclared.append(r.name)
    zero = [n for n, v in grads.items() if v == 0.0]
    live = [n for n, v in grads.items() if v > 0]
    gated = _behind_gates(ctx, [n for n in zero if n not in later]) if live else {}
    zero = [n for n in zero if n not in gated]
    half = _weight_frozen_bias_trains(ctx, frozen, grads)
    note = f" ({len(frozen)} marked requires_grad/trainable=False not counted)" if frozen else ""
    if gated:
        gates = structure_of(ctx).in_forward_order(set(gated.values()))
        note += (f"; cannot judge at step {ctx.step} (zero-initialised gate {_names(gates, 3)}): "
                 f"{len(gated)} parameter(s) behind it have an exactly zero gradient by design, "
                 "until the gate has taken one update (record a second step to judge them)")
    if not live:
        return CheckResult(
            ID, "fail", f"every parameter gradient is exactly zero ({len(grads)} parameter(s)){note}",
            layers=list(grads), value=len(grads), threshold=threshold,
            advice="nothing reaches the parameters: a dead layer blocks every gradient (see "
                   "dead_units, gradient_flow), or the loss is cut from them (detach(), no_grad, "
                   "a loss computed on constants)")
    if not (declared or undeclared or zero or half):
        return CheckResult(ID, "pass", f"all {len(grads) - len(gated)} parameter(s) with gradients "
                           f"receive a non-zero one{note}", value=0, threshold=threshold,
                           details={"gated": gated})
    if not (declared or undeclared or zero):
        return CheckResult(
            ID, "warn", f"{_names(half)} marked requires_grad=False while the bias of the same "
            f"layer trains{note}", layers=half, value=len(half), threshold=threshold,
            details={"gated": gated},
            advice="freezing a layer's weight but not its bias is almost never intended: freeze "
                   "the whole layer (module.requires_grad_(False)) or unfreeze the weight")
    parts = []
    if zero:
        parts.append(f"a gradient of exactly zero for {_names(zero)}")
    if declared:
        parts.append(f"no gradient for {_names(declared)} (requires_grad=True)")
    if undeclared:
        parts.append(f"no gradient for {_names(undeclared)}")
    if half:
        parts.append(f"{_names(half)} marked requires_grad=False while the bias of the same layer trains")
    offenders = zero + declared + undeclared
    # Without requires_grad in the record, "no gradient" may be an intentional freeze: warn.
    status = "fail" if zero or declared else "warn"
    return CheckResult(
        ID, status, "; ".join(parts) + f", while {len(live)} other parameter(s) train{note}",
        layers=offenders + half, value=len(offenders), threshold=threshold, details={"gated": gated},
        advice="the parameter is cut from the loss (detach(), an unused branch, a zeroed or "
               "masked gradient) or left out of training by mistake; freeze it on purpose with "
               "requires_grad=False, or connect it")


def _behind_gates(ctx, names) -> dict:
    """{parameter: gate} for zero-gradient parameters inside a block that a zero-initialised
    gate closes at this step (they cannot be judged until the gate has moved)."""
    if not names:
        return {}
    structure = structure_of(ctx)
    if not structure.gates():
        return {}
    out = {}
    for name in names:
        gate = structure.gate_of(name)
        if gate is not None:
            out[name] = gate
    return out


def _weight_frozen_bias_trains(ctx, frozen, grads) -> list:
    """Weights marked requires_grad=False whose layer's bias trains (has a gradient)."""
    out = []
    for name in frozen:
        leaf = name.replace("/", ".").rpartition(".")[2]
        if leaf not in ("weight", "kernel") or leaf == name:
            continue
        bias = name[: -len(leaf)] + "bias"   # fc.weight -> fc.bias, dense/kernel -> dense/bias
        if grads.get(bias, 0.0) > 0:
            out.append(name)
    return out


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
