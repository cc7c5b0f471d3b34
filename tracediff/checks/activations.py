"""Checks 5-7 on forward outputs: activation spread, sigmoid/tanh saturation, dead ReLU units."""
from __future__ import annotations

import math

import numpy as np

from ..report.common import fmt
from .architecture import structure_of
from .context import CheckContext, is_float_record, nonfinite_count, op_family, unit_axis, values
from .result import CheckResult, skip

SPREAD_ID, SATURATION_ID, DEAD_ID = "activation_spread", "saturation", "dead_units"

# Per-layer standard deviation. The target band 0.5..2.0 is the unit-variance goal of LSUV
# (Mishkin & Matas 2016) and of Glorot/He initialisation. PyTorch's default initialisation
# (kaiming_uniform with a=sqrt(5)) scales the variance by 1/3 per Linear/Conv layer, so healthy
# default-initialised nets sit at 0.1..0.6 a few layers in: outside the target band is reported,
# alarms start one decade beyond it, where activations have collapsed or blown up (the CS231n
# demonstration: weights 0.01 give std ~1e-2 after a few layers and ~0 after ten).
SPREAD_TARGET = (0.5, 2.0)
SPREAD_WARN = (0.05, 20.0)
SPREAD_FAIL = (1e-3, 1e3)
# Ops whose outputs are bounded or normalised by design: a small std there is no symptom.
BOUNDED_OPS = {"sigmoid", "softmax", "logsoftmax", "softmin", "hardsigmoid", "identity",
               "dropout", "flatten", "embedding", "sparsemax"}

SATURATION_INPUT = 5.0   # sigmoid'(5) = 0.0066, tanh'(5) = 1.8e-4: the gradient is gone
SATURATED_UNIT = 0.5     # a unit is saturated when most of its inputs are beyond +-5
SATURATION_WARN, SATURATION_FAIL = 0.25, 0.5   # fraction of units; "most units" fails

DEAD_WARN, DEAD_FAIL = 0.25, 0.5               # fraction of units never positive
# A unit is judged alone only with this many observations: a healthy unit on independent samples
# is never positive with chance 0.5**16 = 1.5e-5. Fewer (an MLP at batch 8, a squeeze-excite
# ReLU that sees one pooled value per sample, strongly correlated across samples) and the layer
# is judged as a whole: a healthy unit whose samples agree is still dead with chance at most 1/2
# (its sign is its weights'), so k dead units of n are beyond chance when the binomial tail
# P(>= k of n | 1/2) is below DEAD_LAYER_P (a fully dead layer of 10 units or more).
MIN_OBSERVATIONS = 16
DEAD_LAYER_P = 1e-3


def activation_spread(ctx: CheckContext) -> CheckResult:
    threshold = (f"std per layer within {SPREAD_WARN[0]:g}..{SPREAD_WARN[1]:g} (target "
                 f"{SPREAD_TARGET[0]:g}..{SPREAD_TARGET[1]:g}; fail outside {SPREAD_FAIL[0]:g}..{SPREAD_FAIL[1]:g})")
    layers = _hidden_layers(ctx)
    if not layers:
        return skip(SPREAD_ID, "no hidden float forward records (the last output is not judged)", threshold)
    layers, rescaled = _propagating(ctx, layers)
    stds = {r.name: float(r.stats["std"]) for r in layers}
    out_target = [r.name for r in layers if not SPREAD_TARGET[0] <= stds[r.name] <= SPREAD_TARGET[1]]
    warn = [r.name for r in layers if not SPREAD_WARN[0] <= stds[r.name] <= SPREAD_WARN[1]]
    fail = [r.name for r in layers if not SPREAD_FAIL[0] <= stds[r.name] <= SPREAD_FAIL[1]]
    lo, hi = min(stds, key=stds.get), max(stds, key=stds.get)
    span = (f"std from {fmt(stds[lo])} (`{lo}`) to {fmt(stds[hi])} (`{hi}`) over {len(stds)} layer(s); "
            f"{len(out_target)} outside the target {SPREAD_TARGET[0]:g}..{SPREAD_TARGET[1]:g}")
    details = {"std": stds, "rescaled": rescaled}
    if rescaled:
        span += (f"; {len(rescaled)} branch/pre-normalisation output(s) judged where they "
                 "propagate (after their normalisation or residual sum)")
    if not warn:
        furthest = max(stds, key=lambda n: abs(math.log(stds[n])) if stds[n] > 0 else math.inf)
        details["outside_target"] = out_target
        return CheckResult(SPREAD_ID, "pass", span, value=stds[furthest], threshold=threshold,
                           details=details)
    first = warn[0]
    small = stds[first] < 1
    status = "fail" if fail else "warn"
    what = "collapse" if small else "blow up"
    return CheckResult(
        SPREAD_ID, status, f"activations {what} from `{first}` on (std {fmt(stds[first])}): {span}",
        layers=warn, value=stds[first], threshold=threshold, details=details,
        advice=("initialise with He (ReLU) or Glorot (tanh) scale, add normalisation layers, or "
                "standardise the inputs" if small else
                "the weights are initialised too large or the inputs are not standardised: use "
                "He/Glorot scale, normalisation layers"))


def _propagating(ctx: CheckContext, layers):
    """The records whose scale propagates, and {name: why} for those whose scale does not:
    values a normalisation rescales right after (a Conv before its BatchNorm), residual
    branches (a zero-init or layer-scaled branch, a transformer's output projection) inside a
    block whose output has their shape and a healthy std, and global poolings (a squeeze-excite
    squeeze: per-sample means of a normalised map, small by design) whose reader is healthy,
    and what a sigmoid/softmax gate is computed from inside its module."""
    structure = structure_of(ctx)
    kept, rescaled = [], {}
    for r in layers:
        std = float(r.stats["std"])
        if SPREAD_WARN[0] <= std <= SPREAD_WARN[1]:
            kept.append(r)
        elif (norm := structure.normaliser(r)) is not None:
            rescaled[r.name] = f"normalised by `{norm.name}`"
        elif (block := structure.healthy_block_around(r, *SPREAD_WARN)) is not None:
            rescaled[r.name] = f"branch of `{block.name}` (std {fmt(float(block.stats['std']))})"
        elif (gate := structure.gate_computed(r)) is not None:
            rescaled[r.name] = f"computes the gate `{gate.name}`"
        elif (after := structure.rescaled_pool(r, *SPREAD_WARN)) is not None:
            rescaled[r.name] = f"global pool read by `{after.name}` (std {fmt(float(after.stats['std']))})"
        else:
            kept.append(r)
    return kept, rescaled


def _hidden_layers(ctx: CheckContext) -> list:
    # non-finite records are the nonfinite check's: their std over the finite part misleads
    forward = [r for r in ctx.forward if is_float_record(r) and r.numel > 1 and not nonfinite_count(r)
               and math.isfinite(float(r.stats.get("std", math.nan)))]
    if not forward:
        return []
    final_names = {forward[-1].name, "<root>"}
    last_shape = forward[-1].shape
    hidden = []
    for r in forward:
        op = str(r.meta.get("op_type", "")).lower().replace("_", "")
        if r.name in final_names or op in BOUNDED_OPS or op_family(r) == "sigmoid":
            continue
        if r.shape == last_shape and r.stats == forward[-1].stats:
            continue  # the output again, under a container's name
        hidden.append(r)
    return hidden


def saturation(ctx: CheckContext) -> CheckResult:
    threshold = (f"fraction of sigmoid/tanh units whose input is beyond +-{SATURATION_INPUT:g} for most "
                 f"samples: warn above {SATURATION_WARN:g}, fail above {SATURATION_FAIL:g}")
    layers = [r for r in ctx.forward if op_family(r) in ("sigmoid", "tanh") and is_float_record(r) and r.numel]
    if not layers:
        return skip(SATURATION_ID, "no sigmoid or tanh layers (meta op_type Sigmoid/Tanh)", threshold)
    fractions, how = {}, {}
    for r in layers:
        mask, how[r.name] = _saturated(ctx, r)
        fractions[r.name] = _unit_fraction(ctx, r, mask, lambda m: m.mean() > SATURATED_UNIT)
    return _verdict(SATURATION_ID, fractions, threshold, SATURATION_WARN, SATURATION_FAIL,
                    "saturated", "units saturated (inputs beyond +-5: the gradient through them is ~0)",
                    "scale the pre-activations down: smaller initial weights (Glorot), standardised "
                    "inputs, or a normalisation layer before the activation", {"input_from": how})


def _saturated(ctx, record):
    """Boolean mask of elements whose pre-activation is beyond +-5, and where it came from.

    The pre-activation is the producer record when it verifies (f(producer) == output); else
    the output is inverted, which is exact in float32/64 (f is monotonic) and slightly
    generous in 16-bit types, where f(5) rounds to the saturation value."""
    family = op_family(record)
    f = (lambda x: 1 / (1 + np.exp(-x))) if family == "sigmoid" else np.tanh
    y = values(record)
    producer = ctx.producer(record)
    if producer is not None and producer.shape == record.shape and is_float_record(producer):
        x = values(producer)
        if x.shape == y.shape and np.allclose(f(x), y, rtol=1e-2, atol=1e-3, equal_nan=True):
            return np.abs(x) > SATURATION_INPUT, f"producer `{producer.name}`"
    limit = f(SATURATION_INPUT)
    if family == "sigmoid":
        return (y > limit) | (y < 1 - limit), "inverted output"
    return np.abs(y) > limit, "inverted output"


def dead_units(ctx: CheckContext) -> CheckResult:
    threshold = (f"fraction of ReLU units never positive across the batch: warn above {DEAD_WARN:g}, "
                 f"fail above {DEAD_FAIL:g} (units with >= {MIN_OBSERVATIONS} observations; layers with fewer "
                 f"when the binomial tail of their dead units is below {DEAD_LAYER_P:g})")
    layers = [r for r in ctx.forward if op_family(r) == "relu" and is_float_record(r) and r.numel]
    if not layers:
        return skip(DEAD_ID, "no ReLU layers (meta op_type ReLU/Relu)", threshold)
    fractions, small = {}, []
    for r in layers:
        if not r.stored:
            fractions[r.name] = 1.0 if float(r.stats["max"]) <= 0 else 0.0
            continue
        axis = unit_axis(r, ctx)
        observations = r.numel // max(1, r.shape[axis] if r.shape else 1)
        fraction = _unit_fraction(ctx, r, values(r) > 0, lambda m: not m.any())
        if observations < MIN_OBSERVATIONS:
            units = r.shape[axis] if r.shape else 1
            if _layer_tail(round(fraction * units), units) >= DEAD_LAYER_P:
                small.append(r.name)
                continue
        fractions[r.name] = fraction
    stats_only = [r.name for r in layers if not r.stored]
    if not fractions:
        return CheckResult(DEAD_ID, "pass", f"{len(small)} layer(s) with fewer than {MIN_OBSERVATIONS} "
                           "samples per unit, judged as a whole: no more dead units than chance "
                           "allows (record a larger batch to judge units one by one)",
                           value=0.0, threshold=threshold)
    result = _verdict(DEAD_ID, fractions, threshold, DEAD_WARN, DEAD_FAIL, "dead",
                      "units never positive across the batch (no gradient flows through them)",
                      "lower the learning rate, initialise biases slightly positive or with He scale, "
                      "use LeakyReLU/GELU, or standardise the inputs", {})
    if stats_only:
        result.message += (f" ({len(stats_only)} layer(s) recorded as statistics only: only a layer "
                           "dead everywhere is visible there)")
    if small:
        result.message += (f" ({len(small)} layer(s) with fewer than {MIN_OBSERVATIONS} samples per unit "
                           "judged as a whole only: no more dead units than chance allows)")
    return result


def _layer_tail(dead: int, units: int) -> float:
    """P(at least ``dead`` of ``units`` healthy units dead) when each is dead with chance 1/2."""
    if 2 * dead <= units:
        return 1.0   # no more than half: what chance gives
    return sum(math.comb(units, k) for k in range(dead, units + 1)) / (1 << units)  # exact ints


def _unit_fraction(ctx, record, mask, unit_is_bad) -> float:
    """Fraction of units (along the record's unit axis) for which ``unit_is_bad(mask slice)``."""
    if mask.shape != tuple(record.shape) or mask.ndim == 0:
        return float(mask.mean()) if mask.size else 0.0  # a stats-only sample: element fraction
    axis = unit_axis(record, ctx)
    per_unit = np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1)
    return float(np.mean([unit_is_bad(row) for row in per_unit]))


def _verdict(check_id, fractions, threshold, warn, fail, adjective, what, advice, extra):
    worst = max(fractions, key=fractions.get)
    bad = [n for n, v in fractions.items() if v > warn]
    details = {"fraction": fractions, **extra}
    if not bad:
        return CheckResult(check_id, "pass", f"at most {fmt(fractions[worst])} of units {adjective} "
                           f"(`{worst}`) over {len(fractions)} layer(s)", value=fractions[worst],
                           threshold=threshold, details=details)
    status = "fail" if any(fractions[n] > fail for n in bad) else "warn"
    first = bad[0]
    return CheckResult(check_id, status, f"{fmt(fractions[first])} of `{first}`'s {what}"
                       + (f"; {len(bad) - 1} more layer(s)" if len(bad) > 1 else ""),
                       layers=bad, value=fractions[first], threshold=threshold, advice=advice,
                       details=details)
