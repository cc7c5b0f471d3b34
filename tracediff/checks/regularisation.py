"""Check `regularisation`: the data loss against the regularisation terms added to it.

Convention (docs/conventions.md): each term is a loss record with meta
``term="regularisation"`` or a name starting ``reg/`` (``rec.loss(l2, name="reg/weight_decay",
term="regularisation")``); the data loss is the other loss record (``loss``)."""
from __future__ import annotations

import numpy as np

from ..report.common import fmt
from .context import CheckContext, data_losses, is_float_record, is_regularisation, values
from .result import CheckResult, skip

ID = "regularisation"
# CS231n (Neural Networks Part 3, "sanity checks"): at initialisation the data loss should
# dominate (turn regularisation off to check loss@init, then on: the loss goes up a little).
# A penalty larger than the data loss steers the first steps towards zero weights.
WARN_RATIO, FAIL_RATIO = 1.0, 10.0


def run(ctx: CheckContext) -> CheckResult:
    threshold = (f"sum of regularisation terms / data loss: warn above {WARN_RATIO:g}, fail above "
                 f"{FAIL_RATIO:g}")
    terms = [r for r in ctx.records("loss") if is_regularisation(r) and r.numel == 1 and is_float_record(r)]
    if not terms:
        return skip(ID, "no regularisation term recorded (a loss record with meta "
                    "term='regularisation' or a name starting 'reg/')", threshold)
    losses = data_losses(ctx)
    if not losses:
        return skip(ID, "regularisation terms but no data loss record to compare them with", threshold)
    data = float(values(losses[0]).reshape(-1)[0])
    penalties = {r.name: float(values(r).reshape(-1)[0]) for r in terms}
    total = float(sum(penalties.values()))
    if not (np.isfinite(data) and np.isfinite(total)) or data <= 0:
        return skip(ID, f"data loss {fmt(data)} and penalties {fmt(total)}: no ratio to judge", threshold)
    ratio = total / data
    worst = max(penalties, key=penalties.get)
    summary = (f"regularisation {fmt(total)} ({len(penalties)} term(s), largest `{worst}`) vs data "
               f"loss {fmt(data)}: ratio {fmt(ratio)}")
    details = {"data_loss": data, "terms": penalties}
    if ratio <= WARN_RATIO:
        return CheckResult(ID, "pass", summary, value=ratio, threshold=threshold, details=details)
    return CheckResult(
        ID, "fail" if ratio > FAIL_RATIO else "warn",
        f"regularisation outweighs the data loss: {summary}", layers=[worst, losses[0].name],
        value=ratio, threshold=threshold, details=details,
        advice="lower the weight-decay/penalty coefficient (it is often applied per parameter and "
               "summed instead of averaged), or check that the penalty is not computed on the "
               "wrong scale (sum of squares over every weight without the 1/2 or lambda)")
