"""``td.check``: run every health check on one trace and collect the verdicts."""
from __future__ import annotations

import os

from ..errors import TraceDiffError
from ..ranks import open_any
from ..trace import Trace
from . import (activations, batchnorm, gradients, inputs, labels, loss, loss_input, mode, nonfinite,
               params, regularisation, updates)
from .context import CheckContext
from .result import CheckReport, CheckResult

# Execution order of the checklist: data first, then the forward pass, gradients, training.
CHECKS = {
    "input_data": inputs.run,
    "nonfinite": nonfinite.run,
    "initial_loss": loss.run,
    "activation_spread": activations.activation_spread,
    "saturation": activations.saturation,
    "dead_units": activations.dead_units,
    "gradient_flow": gradients.gradient_flow,
    "grad_weight_ratio": gradients.grad_weight_ratio,
    "frozen_params": params.run,
    "update_ratio": updates.run,
    "train_mode": mode.run,
    "loss_input": loss_input.run,
    "batchnorm_batch": batchnorm.run,
    "labels": labels.run,
    "regularisation": regularisation.run,
}


def check(trace, classes=None, *, only=None, extra=()) -> CheckReport:
    """Run the health checks on ``trace`` (a path or an open ``td.Trace``).

    ``classes`` sets the class count for ``initial_loss`` (default: the last output's width);
    ``only`` restricts to some check ids; ``extra`` appends results computed elsewhere, such as
    ``tdt.check_batch_independence(...)`` or ``tdt.overfit_check(...)``.
    """
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 2):
        raise TraceDiffError(f"classes must be an integer >= 2, got {classes!r}: pass the number of "
                             "classes of the classification head")
    selected = _select(only)
    for result in extra:
        if not isinstance(result, CheckResult):
            raise TraceDiffError(f"extra results must be CheckResult objects (from tdt.check_batch_"
                                 f"independence or tdt.overfit_check), got {type(result).__name__}")
    if isinstance(trace, Trace):
        return _run(trace, classes, selected, extra)
    if not isinstance(trace, (str, os.PathLike)):
        raise TraceDiffError(f"td.check takes a trace path or a td.Trace, got {type(trace).__name__}")
    with open_any(trace) as opened:
        return _run(opened, classes, selected, extra)


def _select(only):
    if only is None:
        return list(CHECKS)
    ids = [only] if isinstance(only, str) else list(only)
    unknown = [i for i in ids if i not in CHECKS]
    if unknown:
        raise TraceDiffError(f"unknown check id(s) {', '.join(map(repr, unknown))}: use "
                             f"{', '.join(CHECKS)}")
    return ids


def _run(trace: Trace, classes, selected, extra) -> CheckReport:
    ctx = CheckContext(trace, classes=classes)
    results = [CHECKS[check_id](ctx) for check_id in selected]
    return CheckReport(results + list(extra), path=trace.path)
