"""Checks 2 and 3: gradient flow across depth, and gradient against weight magnitude."""
from __future__ import annotations

import math

from ..report.common import fmt
from .architecture import structure_of
from .context import CheckContext, is_float_record, is_weight_like, l2, nonfinite_count
from .result import CheckResult, skip

FLOW_ID = "gradient_flow"
RATIO_ID = "grad_weight_ratio"
# ||dL/d(first layer output)|| / ||dL/d(last layer output)||. Healthy nets keep this within a
# few orders of magnitude (Glorot & Bengio 2010 aim for equal back-propagated variance); deep
# saturating or badly initialised nets lose or gain 10x per layer (Pascanu et al. 2013).
FLOW_WARN = (1e-3, 1e3)
FLOW_FAIL = (1e-5, 1e5)
# ||g|| / ||w||: with learning rates of 1e-5..1 the update/weight ratio lr*||g||/||w|| should
# be near 1e-3 (CS231n); a ratio below 1e-6 needs a learning rate above 1e3 to move the weight,
# one above 1e2 moves it by more than 10% even at lr = 1e-3.
GW_WARN = (1e-6, 1e2)
GW_FAIL_HIGH = 1e4

NO_BACKWARD = "no backward records: record with a loss to check gradients"


def gradient_flow(ctx: CheckContext) -> CheckResult:
    threshold = (f"first/last layer gradient norm ratio within {FLOW_WARN[0]:g}..{FLOW_WARN[1]:g} "
                 f"(fail outside {FLOW_FAIL[0]:g}..{FLOW_FAIL[1]:g}); no layer gradient zero or non-finite")
    layers = _by_depth(ctx)
    if not layers:
        return skip(FLOW_ID, NO_BACKWARD, threshold)
    bad = [r for r in layers if nonfinite_count(r)]
    if bad:
        return CheckResult(
            FLOW_ID, "fail", f"the gradient of `{bad[-1].name}` is non-finite "
            f"({len(bad)} layer(s)); no learning signal reaches the layers before it",
            layers=[r.name for r in reversed(bad)], value=math.nan, threshold=threshold,
            advice="see the nonfinite check for where it starts; clip gradients or lower the learning rate")
    zero_tail = _blocked_prefix(layers)
    if zero_tail:
        after = layers[layers.index(zero_tail[-1]) + 1:]
        stopper = next((r.name for r in after if l2(r) > 0), None)
        names = ([stopper] if stopper else []) + [r.name for r in reversed(zero_tail)]
        where = f": it stops at `{stopper}`" if stopper else ""
        return CheckResult(
            FLOW_ID, "fail", f"the gradient is exactly zero at `{zero_tail[-1].name}` and every "
            f"layer before it{where}", layers=names, value=0.0, threshold=threshold,
            advice="a dead ReLU layer, a detach()/no_grad, an integer cast or a comparison cuts the "
                   "graph there: check dead_units and the code of that layer")
    live = [r for r in layers if l2(r) > 0]
    if not live:
        return skip(FLOW_ID, "every backward record is a zero part of a structured output", threshold)
    if len(live) < 2:
        return skip(FLOW_ID, f"a single layer (`{live[0].name}`) has a gradient: nothing to compare "
                    "it with", threshold)
    first, last = live[0], live[-1]
    ratio = l2(first) / l2(last)
    details = {"norms": {r.name: l2(r) for r in live}}
    outside = [r for r in reversed(live) if not FLOW_WARN[0] <= l2(r) / l2(last) <= FLOW_WARN[1]]
    summary = (f"gradient norm {fmt(l2(first))} at `{first.name}` (first layer) vs {fmt(l2(last))} "
               f"at `{last.name}` (last): ratio {fmt(ratio)}")
    if FLOW_WARN[0] <= ratio <= FLOW_WARN[1]:
        # Judged on the end-to-end ratio: a middle layer with little influence on the loss (a
        # gate, an auxiliary output) may have a small gradient on its own without harm.
        note = (f"; {len(outside)} middle layer(s) outside the band relative to the last, first "
                f"`{outside[0].name}`" if outside else "")
        details["outside_band"] = [r.name for r in outside]
        return CheckResult(FLOW_ID, "pass", summary + note, value=ratio, threshold=threshold,
                           details=details)
    vanishing = ratio < FLOW_WARN[0]
    status = "fail" if not FLOW_FAIL[0] <= ratio <= FLOW_FAIL[1] else "warn"
    kind = "vanishing" if vanishing else "exploding"
    advice = ("vanishing: use ReLU-family activations, He/Glorot initialisation, normalisation "
              "layers or residual connections" if vanishing else
              "exploding: lower the initial weight scale, add normalisation, clip gradients")
    return CheckResult(FLOW_ID, status, f"{kind} gradients: {summary}",
                       layers=[r.name for r in outside] or [first.name], value=ratio,
                       threshold=threshold, advice=advice, details=details)


def _scale_free(ctx: CheckContext, ratios) -> dict:
    """{weight: why} for weights whose ratio says nothing at initialisation: weights in front of
    a normalisation are scale-invariant (the loss does not change when they are scaled, so
    ||g|| ~ 1/||w|| and the ratio only reflects the arbitrary init scale; van Laarhoven 2017),
    and weights behind a zero-initialised gate or a small layer scale receive a gradient scaled
    by the gate (ConvNeXt's 1e-6) by design."""
    outside = [n for n, v in ratios.items() if not GW_WARN[0] <= v <= GW_WARN[1]]
    if not outside:
        return {}
    structure = structure_of(ctx)
    params = {p.name: p for p in ctx.records("param")}
    out = {}
    for name in outside:
        gate = structure.gate_of(name)
        if gate is not None and ratios[name] < GW_WARN[0]:
            out[name] = f"behind the gate `{gate}`"
            continue
        layer = structure.module_output(params[name])
        norm = structure.normaliser(layer) if layer is not None else None
        if norm is not None:
            out[name] = f"normalised by `{norm.name}`"
    return out


def _by_depth(ctx: CheckContext) -> list:
    """Float backward records of the analysed step, ordered from the input to the loss."""
    forward_index = {(r.name, r.call): r.index for r in ctx.forward}
    backward = [r for r in ctx.records("backward") if is_float_record(r) and r.numel]
    # records without a forward twin keep their place: backward runs from the loss, so reversed
    fallback = {id(r): -i for i, r in enumerate(backward)}
    return sorted(backward, key=lambda r: forward_index.get((r.name, r.call), fallback[id(r)]))


def _blocked_prefix(layers) -> list:
    """The layers nearest the input whose gradients are all exactly zero. A zero gradient on a
    part of a structured output (``attn:1``, often unused) is no blockage and is passed over."""
    prefix = []
    for r in layers:
        if l2(r) == 0:
            if ":" not in r.name:
                prefix.append(r)
        else:
            break
    return prefix


def grad_weight_ratio(ctx: CheckContext) -> CheckResult:
    threshold = (f"||grad|| / ||weight|| within {GW_WARN[0]:g}..{GW_WARN[1]:g} "
                 f"(fail above {GW_FAIL_HIGH:g})")
    grads = {r.name: r for r in ctx.records("param_grad") if is_float_record(r)}
    params = [r for r in ctx.records("param") if r.name in grads and is_weight_like(r)]
    if not grads:
        return skip(RATIO_ID, "no param_grad records: record parameter gradients "
                    "(loss_fn=..., or rec.param(name, w, grad=g))", threshold)
    ratios = {}
    for p in params:
        w, g = l2(p), l2(grads[p.name])
        if w > 0 and g > 0 and math.isfinite(w) and math.isfinite(g):
            ratios[p.name] = g / w
    exempt = _scale_free(ctx, ratios)
    if not ratios:
        return skip(RATIO_ID, "no weight with both a non-zero value and a non-zero gradient "
                    "(zero or non-finite ones are reported by frozen_params and nonfinite)", threshold)
    high = sorted((n for n, v in ratios.items() if v > GW_WARN[1] and (n not in exempt or v > GW_FAIL_HIGH)),
                  key=lambda n: -ratios[n])
    low = sorted((n for n, v in ratios.items() if v < GW_WARN[0] and n not in exempt), key=lambda n: ratios[n])
    lo_name, hi_name = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
    span = (f"||g||/||w|| from {fmt(ratios[lo_name])} (`{lo_name}`) to {fmt(ratios[hi_name])} "
            f"(`{hi_name}`) over {len(ratios)} weight(s)")
    if exempt:
        span += (f"; {len(exempt)} weight(s) in front of a normalisation or behind a zero-init gate "
                 "judged by the fail bound only")
    details = {"ratios": ratios, "exempt": exempt}
    if not high and not low:
        return CheckResult(RATIO_ID, "pass", span, value=ratios[hi_name], threshold=threshold,
                           details=details)
    if high:
        worst = high[0]
        status = "fail" if ratios[worst] > GW_FAIL_HIGH else "warn"
        return CheckResult(
            RATIO_ID, status, f"gradient large against its weight at `{worst}`: {span}",
            layers=high + low, value=ratios[worst], threshold=threshold, details=details,
            advice="updates will overshoot: scale the initial weights up (He/Glorot), lower the "
                   "learning rate or clip gradients")
    worst = low[0]
    return CheckResult(
        RATIO_ID, "warn", f"gradient tiny against its weight at `{worst}`: {span}",
        layers=low, value=ratios[worst], threshold=threshold, details=details,
        advice="training will stall there: the weights are too large (check the init scale) or "
               "the gradient vanishes on its way (see gradient_flow)")
