"""Check 11: the input data: zeros, constants, non-finite values, scale, duplicate samples,
a single label in the batch."""
from __future__ import annotations

import numpy as np

from ..report.common import fmt
from .context import CheckContext, is_float_record, nonfinite_count
from .result import CheckResult, skip

ID = "input_data"
# LeCun et al., "Efficient BackProp" (1998): inputs should be centred with comparable, unit-order
# variances. Mild offsets (images in [0, 1]) train fine; the alarm is for unscaled data such as
# raw pixels in 0..255 or physical units, and for inputs with almost no variation.
MAX_ABS_MEAN, MAX_STD, MIN_STD = 10.0, 10.0, 1e-2
DUPLICATE_WARN = 0.5        # fraction of samples that repeat another sample of the batch
MIN_LABELS = 8              # a single label among fewer samples happens by chance
LABEL_PREFIXES = ("label", "target", "class")


def run(ctx: CheckContext) -> CheckResult:
    threshold = (f"finite, not all zero or constant, |mean| <= {MAX_ABS_MEAN:g} and std in "
                 f"{MIN_STD:g}..{MAX_STD:g}, distinct samples, more than one label per batch "
                 f"of >= {MIN_LABELS}")
    inputs = ctx.records("input")
    if not inputs:
        return skip(ID, "no input records: record the model inputs (rec.input(name, x))", threshold)
    problems = []  # (status, name, text, advice)
    judged = 0
    # axis 0 is the batch when the model's outputs share it (an unbatched (C, H, W) image is not
    # a batch of C samples: replicated grey channels are no duplicates)
    batch = ctx.forward[0].shape[0] if ctx.forward and ctx.forward[0].shape else None
    for r in inputs:
        if r.numel == 0:
            continue
        if is_float_record(r):
            judged += 1
            problems += _float_problems(r, batch)
        elif r.dtype.startswith(("int", "uint")) and _is_label(r, inputs):
            judged += 1
            problems += _label_problems(r)
    if not judged:
        return skip(ID, f"none of the {len(inputs)} input(s) is float data or a 1-D integer label "
                    "(token ids and masks are not judged)", threshold)
    if not problems:
        return CheckResult(ID, "pass", f"{judged} input(s) look standardised and varied"
                           + (f" ({len(inputs) - judged} token/mask input(s) not judged)"
                              if judged < len(inputs) else ""), value=0, threshold=threshold)
    status = "fail" if any(p[0] == "fail" for p in problems) else "warn"
    ordered = sorted(problems, key=lambda p: p[0] != "fail")
    return CheckResult(ID, status, "; ".join(f"`{p[1]}`: {p[2]}" for p in ordered),
                       layers=list(dict.fromkeys(p[1] for p in ordered)), value=len(problems),
                       threshold=threshold, advice=ordered[0][3])


def _float_problems(r, batch) -> list:
    s = r.stats
    if nonfinite_count(r):
        return [("fail", r.name, f"{int(s['nan'])} NaN and {int(s['inf'])} Inf values",
                 "clean the data pipeline: drop or impute missing values before batching")]
    if s["zero_frac"] == 1.0:
        return [("fail", r.name, "all zeros",
                 "the data loader returns zeros: check file paths, decoding and the dtype cast")]
    if r.numel > 1 and s["std"] == 0:
        return [("fail", r.name, f"constant ({fmt(s['min'])} everywhere)",
                 "the batch carries no information: check the data loader and any fill/expand")]
    out = []
    duplicates = _duplicate_fraction(r) if batch in (None, r.shape[0]) else None
    if duplicates is not None and duplicates >= 1.0:
        out.append(("fail", r.name, f"all {r.shape[0]} samples of the batch are identical",
                    "a broadcast/expand or an indexing bug repeats one sample: check the collate step"))
    elif duplicates is not None and duplicates > DUPLICATE_WARN:
        out.append(("warn", r.name, f"{duplicates:.0%} of the batch's samples are repeats",
                    "check the sampler: shuffling, augmentation, or an index that does not advance"))
    mean, std = float(s["mean"]), float(s["std"])
    if abs(mean) > MAX_ABS_MEAN or std > MAX_STD or std < MIN_STD:
        out.append(("warn", r.name, f"far from standardised (mean {fmt(mean)}, std {fmt(std)})",
                    "standardise the inputs: subtract the mean and divide by the std of the training set"))
    return out


def _duplicate_fraction(r):
    if not r.stored or len(r.shape) < 2 or r.shape[0] < 2:
        return None
    rows = np.ascontiguousarray(r.read()).reshape(r.shape[0], -1)
    distinct = len({row.tobytes() for row in rows})
    return (r.shape[0] - distinct) / (r.shape[0] - 1)


def _is_label(r, inputs) -> bool:
    if len(r.shape) != 1:
        return False
    leaf = r.name.lower().replace(":", ".").replace("/", ".").rsplit(".", 1)[-1]
    if leaf == "y" or leaf.startswith(LABEL_PREFIXES):
        return True
    return any(o is not r and o.shape and o.shape[0] == r.shape[0] and is_float_record(o) for o in inputs)


def _label_problems(r) -> list:
    if r.numel < MIN_LABELS or r.stats["min"] != r.stats["max"]:
        return []
    return [("warn", r.name, f"a single label ({fmt(r.stats['min'])}) for all {r.numel} samples",
             "shuffle the dataset: batches drawn from data sorted by class teach one class at a time")]
