"""Check `loss_input`: what the loss was fed. Probabilities given to a loss that applies
log_softmax itself (softmax before ``cross_entropy``), logits or probabilities given to
``nll_loss`` (which expects log-probabilities).

Read from values alone: the loss's last-axis rows and the scalar loss. Whatever the labels, a
cross-entropy of rows x lies within [min(lse(x) - max x), max(lse(x) - min x)] over the rows,
and an NLL of rows x within [min(-max x), max(-min x)]: the loss value says which was computed.
"""
from __future__ import annotations

import numpy as np

from ..report.common import fmt
from .context import CheckContext, data_losses, is_float_record, values
from .loss import _is_classification
from .result import CheckResult, skip

ID = "loss_input"
ROW_SUM_TOL = 1e-3       # float32 softmax rows sum to 1 within ~1e-6; 1e-3 leaves room for fp16
RANGE_TOL = 1e-4         # relative slack on the loss ranges (the loss is rounded in float32)


def run(ctx: CheckContext) -> CheckResult:
    threshold = ("rows of the loss input are logits for a logits loss, log-probabilities for "
                 f"nll_loss (rows summing to 1 within {ROW_SUM_TOL:g} are probabilities)")
    losses = data_losses(ctx)
    if not losses:
        return skip(ID, "no scalar loss record", threshold)
    head = _loss_input(ctx)
    if head is None:
        return skip(ID, "no float forward output with a class axis (last axis >= 2) to read the "
                    "loss input from", threshold)
    loss_values = values(losses[0]).reshape(-1)
    x = values(head).reshape(-1, head.shape[-1])
    if loss_values.size == 0 or x.size == 0:
        return skip(ID, "the loss or its input holds no values", threshold)
    loss = float(loss_values[0])
    if not np.isfinite(x).all() or not np.isfinite(loss):
        return skip(ID, "non-finite loss or loss input (see nonfinite)", threshold)
    lse = _logsumexp(x)
    ce = (float(np.min(lse - x.max(axis=1))), float(np.max(lse - x.min(axis=1))))
    nll = (float(np.min(-x.max(axis=1))), float(np.max(-x.min(axis=1))))
    probabilities = bool(x.min() >= 0 and x.max() <= 1 and np.all(np.abs(x.sum(axis=1) - 1) < ROW_SUM_TOL))
    log_probabilities = bool(np.all(np.abs(lse) < ROW_SUM_TOL))
    details = {"input": head.name, "loss": loss, "cross_entropy_range": ce, "nll_range": nll,
               "probabilities": probabilities, "log_probabilities": log_probabilities}
    where = f"`{head.name}` (last axis {head.shape[-1]})"
    if probabilities and _within(loss, ce):
        return CheckResult(
            ID, "fail", f"the loss {fmt(loss)} is a cross-entropy of probabilities: every row of "
            f"{where} sums to 1, and cross_entropy applies log_softmax itself (softmax is applied "
            "twice; gradients shrink)", layers=[head.name, losses[0].name], value=loss,
            threshold=threshold, details=details,
            advice="remove the softmax at the end of the model and feed the logits to "
                   "cross_entropy; apply softmax only for predictions")
    if probabilities and _within(loss, nll):
        return CheckResult(
            ID, "fail", f"the loss {fmt(loss)} is an NLL of probabilities: every row of {where} "
            "sums to 1, but nll_loss expects log-probabilities (the loss is minus a probability, "
            "in -1..0)", layers=[head.name, losses[0].name], value=loss, threshold=threshold,
            details=details,
            advice="use log_softmax instead of softmax before nll_loss, or feed logits to cross_entropy")
    classifies = ctx.classes is not None or _is_classification(ctx, losses[0])
    if not log_probabilities and not probabilities and _within(loss, nll) and not _within(loss, ce) \
            and (classifies or loss < 0):
        return CheckResult(
            ID, "fail", f"the loss {fmt(loss)} is an NLL of logits: it lies outside every "
            f"cross-entropy of {where} ({fmt(ce[0])}..{fmt(ce[1])}) but within minus its values, "
            "and the rows are not log-probabilities (their logsumexp is not 0): nll_loss "
            "expects log_softmax outputs", layers=[head.name, losses[0].name], value=loss,
            threshold=threshold, details=details,
            advice="apply log_softmax before nll_loss, or use cross_entropy on the logits")
    kind = ("log-probabilities" if log_probabilities else "probabilities" if probabilities else "logits")
    return CheckResult(ID, "pass", f"{where} holds {kind}, consistent with the loss {fmt(loss)}",
                       value=loss, threshold=threshold, details=details)


def _loss_input(ctx: CheckContext):
    """The model output the loss reads: a root output (``<root>``, ``<root>:logits``) with a
    class axis, preferring one named logits; else the last forward record with one."""
    candidates = [r for r in ctx.forward if is_float_record(r) and len(r.shape) >= 2
                  and r.shape[-1] >= 2 and r.stored]
    root = [r for r in candidates if r.name == "<root>" or r.name.startswith("<root>:")]
    named = [r for r in root if "logit" in r.name.lower()]
    pool = named or root or candidates
    return pool[-1] if pool else None


def _logsumexp(x):
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def _within(value, bounds) -> bool:
    lo, hi = bounds
    slack = RANGE_TOL * max(1.0, abs(lo), abs(hi))
    return lo - slack <= value <= hi + slack
