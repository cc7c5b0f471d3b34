"""Check 10: dropout/batch-norm left in training mode in an evaluation trace, and outputs that
differ between two identical forward passes."""
from __future__ import annotations

import json
import math

import numpy as np

from ..format import hash_algorithm, tensor_hash
from .context import CheckContext, is_float_record, op_family, values
from .result import CheckResult, skip

ID = "train_mode"
TRAINING_KINDS = ("loss", "backward", "param_grad")
# Two passes agree when every output matches to this relative tolerance: dropout changes
# outputs by O(1), float reassociation (nondeterministic kernels) by ~1e-6.
PASS_RTOL, PASS_ATOL = 1e-4, 1e-6


def run(ctx: CheckContext) -> CheckResult:
    threshold = ("no Dropout/BatchNorm layer with training=True in an evaluation trace; "
                 f"identical passes agree within rtol {PASS_RTOL:g}")
    if not ctx.forward:
        return skip(ID, "no forward records", threshold)
    mode_layers = [r for r in ctx.forward if op_family(r) in ("dropout", "batchnorm") and "training" in r.meta]
    evaluation, why = _is_evaluation(ctx)
    repeat = _repeated_pass_difference(ctx)
    if repeat is not None and not evaluation and _random_on_purpose(ctx, repeat[0]):
        repeat = None   # dropout in a training run differs between passes by design
    if repeat is not None:
        layer, first_pass, second_pass, diff = repeat
        return CheckResult(
            ID, "fail", f"two identical forward passes ({first_pass} and {second_pass}: same inputs "
            f"and parameters) differ first at `{layer}` (max abs difference {diff:.3g})",
            layers=[layer], value=diff, threshold=threshold,
            advice="a dropout (or other random) layer is active: call model.eval() for evaluation, "
                   "or seed and disable nondeterministic kernels")
    if evaluation:
        training = [r for r in mode_layers if r.meta.get("training") is True]
        if training:
            kinds = sorted({op_family(r) for r in training})
            return CheckResult(
                ID, "fail", f"{len(training)} {'/'.join(kinds)} layer(s) in training mode in an "
                f"evaluation trace ({why}), first `{training[0].name}`",
                layers=[r.name for r in training], value=len(training), threshold=threshold,
                advice="call model.eval() (Keras: training=False) before evaluating: dropout drops "
                       "units at random and batch norm uses the batch's statistics")
        if not mode_layers:
            return CheckResult(ID, "pass", f"evaluation trace ({why}) without dropout or batch-norm "
                               "layers", value=0, threshold=threshold)
        return CheckResult(ID, "pass", f"all {len(mode_layers)} dropout/batch-norm layer(s) in evaluation "
                           f"mode ({why})", value=0, threshold=threshold)
    if not mode_layers:
        return skip(ID, f"a training trace ({why}) without dropout or batch-norm layers recording "
                    "their mode, and no repeated identical forward pass", threshold)
    return CheckResult(ID, "pass", f"training trace ({why}): {len(mode_layers)} dropout/batch-norm layer(s) "
                       "may train", value=0, threshold=threshold)


def _random_on_purpose(ctx: CheckContext, name) -> bool:
    return any(r.name == name and op_family(r) == "dropout" and r.meta.get("training") is not False
               for r in ctx.trace.records(kind="forward"))


def _is_evaluation(ctx: CheckContext):
    meta = ctx.trace.attrs.get("meta") or "{}"
    try:
        meta = json.loads(meta) if isinstance(meta, str) else dict(meta)
    except (ValueError, TypeError):
        meta = {}
    if not isinstance(meta, dict):  # a damaged or foreign trace's meta: JSON, but not an object
        meta = {}
    mode = str(meta.get("mode", "")).lower()
    if mode in ("eval", "evaluation", "inference", "test"):
        return True, f"trace meta mode={mode!r}"
    if mode in ("train", "training"):
        return False, f"trace meta mode={mode!r}"
    if isinstance(meta.get("training"), bool):   # the Keras adapter's record(training=...)
        return not meta["training"], f"trace meta training={meta['training']}"
    if any(ctx.trace.records(kind=k) for k in TRAINING_KINDS):
        return False, "it has a loss or gradients"
    return True, "no loss or gradients recorded"


def _passes(ctx: CheckContext) -> list:
    """[(step, decode_step, label, inputs, forward records, params)] for each forward pass: one
    per step, decode step and batch, or one per repetition of the first input record within
    one. A decode step is no training step: its outputs depend on the cache of the steps before,
    so it is never an identical pass of another decode step."""
    out = []
    for step in ctx.trace.steps:
        records = ctx.trace.records(step=step)
        params = [r for r in records if r.kind == "param"]
        groups = {}
        for r in records:
            groups.setdefault((r.decode_step, r.batch_index), []).append(r)
        for (decode_step, batch_index), group in groups.items():
            inputs = [r for r in group if r.kind == "input"]
            if not inputs:
                continue
            where = f"step {step}" + (f" decode step {decode_step}" if decode_step >= 0 else "") \
                + (f" batch {batch_index}" if batch_index >= 0 else "")
            starts = [r.index for r in inputs if r.name == inputs[0].name] + [float("inf")]
            for k, (lo, hi) in enumerate(zip(starts, starts[1:])):
                inside = [r for r in group if lo <= r.index < hi]
                label = where + (f" pass {k}" if len(starts) > 2 else "")
                out.append((step, decode_step, label, [r for r in inside if r.kind == "input"],
                            [r for r in inside if r.kind == "forward"], params))
    return out


def _fingerprint(records) -> tuple:
    """Identity of a group of records (inputs, parameters): names, shapes and content hashes."""
    out = []
    # v2 hashes every record; a v1 trace hashed (with SHA-256) its stats-only records alone
    algorithm = next((hash_algorithm(r.hash) for r in records if r.hash), "xxh3")
    for r in records:
        digest = r.hash or (tensor_hash(r.read(), algorithm) if r.stored else "")
        out.append((r.name, r.shape, r.dtype, digest))
    return tuple(out)


def _close(a, b) -> bool:
    """Outputs of two passes agree (whole tensors, or their shared samples when stats-only)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return np.allclose(values(a), values(b), rtol=PASS_RTOL, atol=PASS_ATOL, equal_nan=True)


def _repeated_pass_difference(ctx: CheckContext):
    """(first differing layer, pass labels, max abs difference) for two identical passes."""
    groups = {}
    for step, decode_step, label, inputs, forward, params in _passes(ctx):
        if not inputs:
            continue
        # across steps the weights may have been updated: passes are identical only if shown
        weights = _fingerprint(params) if params else ("step", step)
        groups.setdefault((_fingerprint(inputs), weights, decode_step), []).append((label, forward))
    for same in groups.values():
        (la, fa) = same[0]
        for lb, fb in same[1:]:
            for x, y in zip(fa, fb):
                if x.name != y.name:
                    break
                if is_float_record(x) and not _close(x, y):
                    diff = float(np.nanmax(np.abs(values(x) - values(y)))) if x.shape == y.shape else math.nan
                    return x.name, la, lb, diff
    return None
