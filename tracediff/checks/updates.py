"""Check 4: the size of each weight update against the weight, between steps of a training trace."""
from __future__ import annotations

import math

import numpy as np

from ..report.common import fmt
from .architecture import structure_of
from .context import CheckContext, is_float_record, is_weight_like, values
from .result import CheckResult, skip

ID = "update_ratio"
# CS231n "Neural Networks Part 3": the ratio of update magnitude to value magnitude should be
# around 1e-3; far lower means the learning rate is too low, far higher too high.
TARGET = 1e-3
WARN = (1e-4, 1e-1)
FAIL_HIGH = 1.0  # an update larger than the weight itself


def run(ctx: CheckContext) -> CheckResult:
    threshold = f"||w[t+1] - w[t]|| / ||w[t]|| near {TARGET:g}, within {WARN[0]:g}..{WARN[1]:g} (fail above {FAIL_HIGH:g})"
    steps = sorted({r.step for r in ctx.trace.records(kind="param")})
    if len(steps) < 2:
        return skip(ID, "needs parameter records at two or more training steps "
                    "(record a training run: tdt.recording(model, path, every=N) or rec.step(n))", threshold)
    trained = {r.name for r in ctx.trace.records(kind="param_grad")}
    history = {}
    for step in steps:
        for r in ctx.trace.records(kind="param", step=step):
            if is_float_record(r) and is_weight_like(r) and (not trained or r.name in trained):
                history.setdefault(r.name, []).append(r)
    ratios, gated = {}, {}
    structure = structure_of(ctx)
    for name, recs in history.items():
        # behind a zero-init gate the first update is zero by design: judged from the next one
        gate = structure.gate_of(name) if recs[0].step == ctx.step else None
        pairs = _ratios(recs)
        if gate is not None and pairs and pairs[0] == 0:
            pairs = pairs[1:]
            if not pairs:
                gated[name] = gate
        per_pair = [v for v in pairs if math.isfinite(v)]
        if per_pair:
            ratios[name] = float(np.median(per_pair))
    if not ratios:
        return skip(ID, "no weight is recorded with a finite, non-zero value at two steps", threshold)
    lo_name, hi_name = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
    span = (f"median update/weight ratio from {fmt(ratios[lo_name])} (`{lo_name}`) to "
            f"{fmt(ratios[hi_name])} (`{hi_name}`) over {len(ratios)} weight(s), steps {steps[0]}..{steps[-1]}")
    details = {"ratios": ratios, "gated": gated}
    if gated:
        span += (f"; {len(gated)} weight(s) behind a zero-initialised gate not judged: their first "
                 "update is zero by design (record a third step to judge them)")
    high = sorted((n for n, v in ratios.items() if v > WARN[1]), key=lambda n: -ratios[n])
    low = sorted((n for n, v in ratios.items() if v < WARN[0]), key=lambda n: ratios[n])
    if high:
        worst = high[0]
        return CheckResult(
            ID, "fail" if ratios[worst] > FAIL_HIGH else "warn",
            f"updates too large at `{worst}`: {span}", layers=high + low, value=ratios[worst],
            threshold=threshold, details=details,
            advice="lower the learning rate (or warm it up); the weights are rewritten each step")
    if low:
        worst = low[0]
        frozen = ratios[worst] == 0
        return CheckResult(
            ID, "warn", (f"`{worst}` does not change between steps: " if frozen else
                         f"updates too small at `{worst}`: ") + span,
            layers=low, value=ratios[worst], threshold=threshold, details=details,
            advice=("is it in the optimizer's parameter list? (see frozen_params)" if frozen else
                    "raise the learning rate, or check that the gradient reaches it (gradient_flow)"))
    return CheckResult(ID, "pass", span, value=ratios[hi_name], threshold=threshold, details=details)


def _ratios(records) -> list:
    """||w[t+1] - w[t]|| / ||w[t]|| for consecutive records of one weight, each read once: the
    whole tensors, or their shared seeded samples for statistics-only records."""
    out = []
    previous = None
    for record in records:
        current = values(record)
        if previous is not None and previous.shape == current.shape and previous.size:
            norm = _norm(previous)
            if norm > 0 and math.isfinite(norm):
                out.append(_norm(current - previous) / norm)
        previous = current
    return out


def _norm(array) -> float:
    # np.sum over squares, not np.linalg.norm: BLAS dot spins threads on a shared machine.
    return math.sqrt(float(np.sum(np.square(array, dtype=np.float64))))
