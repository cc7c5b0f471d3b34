"""Check 8: the loss at initialisation against chance level, ln(number of classes)."""
from __future__ import annotations

import json
import math

from ..report.common import fmt
from .context import CheckContext, data_losses, values
from .result import CheckResult, skip

ID = "initial_loss"
# Karpathy, "A Recipe for Training Neural Networks" (2019), "verify loss @ init", and CS231n
# "look for correct loss at chance performance": a softmax classifier with small initial
# logits predicts uniformly, so its cross-entropy is ln(C). Healthy initialisations land
# within +-50% of it; several times it means overconfident (too large) initial logits.
# Logits of std s at init give a loss of about ln(C) + s^2/2: the warn bound 2 ln(C) is logits
# of std ~sqrt(2 ln C) (2.1 for 10 classes). Keras ResNet50 (weights=None, no zero-init
# residual: 16 blocks add up) starts at 1.67 ln(C), which is healthy.
LOW, HIGH, FAIL = 0.5, 2.0, 3.0
CLASSIFICATION_HINTS = ("cross_entropy", "crossentropy", "nll", "categorical", "softmax", "bce", "binary")


def run(ctx: CheckContext) -> CheckResult:
    threshold = f"first loss within {LOW:g}..{HIGH:g} x ln(classes) (fail above {FAIL:g} x)"
    losses = data_losses(ctx)
    if not losses:
        return skip(ID, "no scalar loss record: record with a loss_fn (or rec.loss(value))", threshold)
    loss_record = losses[0]
    loss = float(values(loss_record).reshape(-1)[0])
    if not math.isfinite(loss):
        return skip(ID, f"the first loss is {loss} (see the nonfinite check)", threshold)
    classes, source, confirmed = _classes(ctx, loss_record)
    if classes is None:
        return skip(ID, source, threshold)
    if classes < 2:
        return skip(ID, f"{source}: {classes} class(es) is no classification: pass classes=N "
                    "(--classes N) with N >= 2", threshold)
    chance = math.log(classes)
    ratio = loss / chance
    summary = (f"first loss {fmt(loss)} vs ln({classes}) = {chance:.3f} (chance level, {source}): "
               f"{ratio:.2f} x")
    details = {"loss": loss, "classes": classes, "chance": chance}
    if not confirmed:
        # Unconfirmed classification: only a loss far above chance is worth a word, and only a warning.
        summary += " (assuming a classification loss: pass classes=N to confirm)"
        if ratio <= FAIL:
            return CheckResult(ID, "pass", summary, value=loss, threshold=threshold, details=details)
    if LOW <= ratio <= HIGH:
        return CheckResult(ID, "pass", summary, value=loss, threshold=threshold, details=details)
    last = ctx.forward[-1].name if ctx.forward else loss_record.name
    if ratio < LOW:
        return CheckResult(
            ID, "warn", f"loss below chance at the first step: {summary}", layers=[loss_record.name],
            value=loss, threshold=threshold, details=details,
            advice="expected for a pretrained model; for a fresh one the labels leak into the inputs, "
                   "or the class count is wrong (pass classes=N)")
    batch = _batch_size(ctx)
    summed = batch and batch > 1 and abs(loss / (batch * chance) - 1) < 0.5
    advice = (f"the loss is about {batch} x ln(C): it is summed over the batch of {batch}, not "
              "averaged (reduction='mean')" if summed else
              "the initial logits are too large: scale the last layer's weights down (or init "
              "them near zero) and check the inputs are standardised")
    status = "fail" if ratio > FAIL and confirmed else "warn"
    return CheckResult(ID, status, f"loss too high at the first step: {summary}",
                       layers=[last, loss_record.name], value=loss, threshold=threshold,
                       details=details, advice=advice)


def _classes(ctx: CheckContext, loss_record):
    """(number of classes, where it came from, whether the loss is known to classify)."""
    if ctx.classes is not None:
        return int(ctx.classes), "classes given", True
    if not ctx.forward:
        return None, "no forward records to take the class count from: pass classes=N (--classes N)", False
    last = ctx.forward[-1]
    if not last.shape:
        return None, f"the last output `{last.name}` is a scalar: pass classes=N (--classes N)", False
    width = int(last.shape[-1])
    confirmed = _is_classification(ctx, loss_record)
    if width == 1 and not confirmed:
        return None, (f"the last output `{last.name}` has width 1 and nothing says the loss "
                      "classifies: pass classes=N (--classes N)"), False
    return (2 if width == 1 else width), f"width of `{last.name}`", confirmed


def _is_classification(ctx: CheckContext, loss_record) -> bool:
    """The loss record's meta or a trace meta key naming the loss says so (the ONNX adapter
    writes loss='cross_entropy'), or integer labels within the output width are recorded."""
    try:
        trace_meta = json.loads(ctx.trace.attrs.get("meta") or "{}")
    except (TypeError, ValueError):
        trace_meta = {}
    named = [v for k, v in (trace_meta.items() if isinstance(trace_meta, dict) else ()) if "loss" in str(k)]
    text = " ".join(str(v) for v in (*loss_record.meta.values(), *named, loss_record.name)).lower()
    if any(h in text for h in CLASSIFICATION_HINTS):
        return True
    if not ctx.forward or not ctx.forward[-1].shape:
        return False
    width = ctx.forward[-1].shape[-1]
    for r in ctx.records("input"):
        if r.dtype.startswith(("int", "uint")) and len(r.shape) == 1 and r.numel > 0:
            lo, hi = r.stats["min"], r.stats["max"]
            if 0 <= lo and hi < max(width, 2) and any(k in r.name.lower() for k in ("label", "target", "y", "class")):
                return True
    return False


def _batch_size(ctx: CheckContext):
    inputs = [r for r in ctx.records("input") if r.shape]
    return int(inputs[0].shape[0]) if inputs else None
