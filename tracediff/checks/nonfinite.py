"""Check 1: the first record holding NaN or Inf, and whether what fed it was finite."""
from __future__ import annotations

from .context import CheckContext, nonfinite_count
from .result import CheckResult

ID = "nonfinite"
# Within a step: what feeds the forward pass, the forward pass, the loss, then the backward pass
# from the loss towards the input, then the parameter gradients it produces.
PHASE = {"input": 0, "param": 0, "forward": 1, "loss": 2, "backward": 3, "param_grad": 4}
ADVICE = {
    "input": "clean the data: drop or impute NaN/Inf before it reaches the model",
    "param": "a previous update blew the parameter up: lower the learning rate, clip gradients, "
             "or look for a division by a near-zero value in the optimizer",
    "forward": "look at the op inside this layer: log/sqrt/div of values that can reach zero or "
               "below, exp without max-subtraction, fp16 overflow; add an epsilon or compute in float32",
    "loss": "the loss op overflows: use the fused, stable form (cross_entropy on logits, "
            "BCEWithLogits) instead of log(softmax(x)) or log(sigmoid(x))",
    "backward": "the backward of this layer overflows: look for sqrt/log/div at zero "
                "(e.g. the norm of a zero vector) or use loss scaling/clipping",
    "param_grad": "the gradient of this parameter overflows: clip gradients or lower the learning rate",
}


def run(ctx: CheckContext) -> CheckResult:
    ordered = sorted(ctx.trace, key=lambda r: (r.step, PHASE.get(r.kind, 5), r.index))
    offenders = [r for r in ordered if nonfinite_count(r)]
    threshold = "no NaN or Inf in any record"
    if not offenders:
        return CheckResult(ID, "pass", f"all {len(ordered)} records are finite", value=0,
                           threshold=threshold)
    first = offenders[0]
    has_nan = any(r.stats.get("nan") for r in offenders)
    only_forward_inf = not has_nan and all(r.kind == "forward" for r in offenders)
    what = _what(first)
    where = _where(first)
    feeder = _feeder(ctx, first)
    if feeder is None:
        fed = ""
    elif nonfinite_count(feeder):
        fed = f", and its input `{feeder.name}` ({feeder.kind}) was already non-finite"
    else:
        fed = f", whose input `{feeder.name}` ({feeder.kind}) was finite"
    step = f" at step {first.step}" if len(ctx.trace.steps) > 1 else ""
    message = f"{what} first appears in {where}{step}{fed}; {len(offenders)} record(s) non-finite"
    layers = list(dict.fromkeys(r.name for r in offenders))
    if only_forward_inf:
        return CheckResult(
            ID, "warn", message + " (Inf only in forward outputs, loss and gradients finite: "
            "masking with -inf is fine)", layers=layers, value=len(offenders), threshold=threshold,
            advice="if this is not an attention mask, " + ADVICE["forward"])
    return CheckResult(ID, "fail", message, layers=layers, value=len(offenders),
                       threshold=threshold, advice=ADVICE.get(first.kind, ADVICE["forward"]))


def _what(record) -> str:
    nan, inf = int(record.stats.get("nan") or 0), int(record.stats.get("inf") or 0)
    if nan and inf:
        return "NaN and Inf"
    return "NaN" if nan else "Inf"


def _where(record) -> str:
    return {
        "input": f"the input `{record.name}`",
        "param": f"the parameter `{record.name}`",
        "forward": f"the output of `{record.name}`",
        "loss": f"the loss `{record.name}`",
        "backward": f"the gradient of `{record.name}`'s output (backward)",
        "param_grad": f"the gradient of the parameter `{record.name}`",
    }.get(record.kind, f"`{record.name}`")


def _feeder(ctx: CheckContext, record):
    """What the offending record was computed from, as far as the trace shows it."""
    step = record.step
    if record.kind == "forward":
        previous = ctx.producer(record)
        if previous is not None:
            return previous
        inputs = ctx.records("input", step)
        return inputs[0] if inputs else None
    if record.kind == "loss":
        forward = ctx.records("forward", step)
        return forward[-1] if forward else None
    if record.kind == "backward":
        before = [r for r in ctx.records("backward", step) if r.index < record.index]
        if before:
            return before[-1]
        losses = ctx.records("loss", step)
        return losses[-1] if losses else None
    if record.kind == "param_grad":
        backward = ctx.records("backward", step)
        return backward[-1] if backward else None
    return None
