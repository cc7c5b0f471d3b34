"""Check `labels`: the targets of a classification or language-model loss. Labels out of the
class range, one class for the whole batch, and padding counted in the loss (the pad id is the
dominant target and the loss does not ignore it).

Conventions (docs/conventions.md): the loss record's meta ``ignore_index`` (the torch adapter
writes it where the loss exposes it; -100 for a Hugging Face model's own loss) and ``pad_id``
(or the trace meta ``pad_token_id``)."""
from __future__ import annotations

import json

import numpy as np

from .context import CheckContext, data_losses, values
from .inputs import MIN_LABELS   # one class among fewer samples happens by chance
from .result import CheckResult, skip

ID = "labels"
DOMINANT = 0.25         # a target id above this share of a language model's targets is suspect
LABEL_NAMES = ("label", "labels", "target", "targets", "y", "class", "classes")


def run(ctx: CheckContext) -> CheckResult:
    threshold = (f"labels within 0..classes-1 (or ignore_index), more than one class over >= "
                 f"{MIN_LABELS} labels, no unignored target id above {DOMINANT:g} of the targets "
                 "equal to the pad id")
    labels = [r for r in ctx.records("input") if r.dtype.startswith(("int", "uint")) and r.numel
              and r.stored and _leaf(r.name) in LABEL_NAMES]
    if not labels:
        return skip(ID, "no integer label input recorded (an input named labels/targets/y: "
                    "rec.input('labels', y), or pass labels to a Hugging Face model)", threshold)
    record = labels[0]
    losses = data_losses(ctx)
    meta = losses[0].meta if losses else {}
    ignore = meta.get("ignore_index")
    pad = meta.get("pad_id", _trace_meta(ctx).get("pad_token_id"))
    y = values(record).astype(np.int64).reshape(-1)
    kept = y[y != ignore] if ignore is not None else y
    classes = ctx.classes or _class_width(ctx)
    details = {"input": record.name, "ignore_index": ignore, "pad_id": pad, "classes": classes}
    if kept.size and classes and (kept.min() < 0 or kept.max() >= classes):
        bad = kept[(kept < 0) | (kept >= classes)]
        return CheckResult(
            ID, "fail", f"{bad.size} label(s) of `{record.name}` outside 0..{classes - 1} "
            f"(from {int(bad.min())} to {int(bad.max())})"
            + ("" if ignore is None else f"; ignore_index is {ignore}"),
            layers=[record.name], value=int(bad.size), threshold=threshold, details=details,
            advice="labels must index the classes of the output: check the label encoding "
                   "(1-based ids, a wrong num_classes), or record the loss's ignore_index "
                   "(ignore_index=... in the loss record's meta) if these are masked positions")
    ids, counts = np.unique(kept, return_counts=True)
    if kept.size >= MIN_LABELS and ids.size == 1:
        return CheckResult(
            ID, "warn", f"all {kept.size} labels of `{record.name}` are class {int(ids[0])}",
            layers=[record.name], value=1, threshold=threshold, details=details,
            advice="shuffle the dataset: batches drawn from data sorted by class teach one class at a time")
    if record.numel > record.shape[0] and kept.size:   # per-token targets: a language model
        top = int(ids[np.argmax(counts)])
        share = float(counts.max()) / kept.size
        details["dominant"] = {"id": top, "share": share}
        if share > DOMINANT and pad is not None and top == pad:
            return CheckResult(
                ID, "fail", f"padding counted in the loss: the pad id {pad} is {share:.0%} of the "
                f"targets in `{record.name}` and the loss does not ignore it "
                f"(ignore_index {ignore if ignore is not None else 'not recorded'})",
                layers=[record.name], value=share, threshold=threshold, details=details,
                advice="set the pad positions of the labels to the loss's ignore_index (-100 for "
                       "torch's cross_entropy and Hugging Face models), or pass "
                       "ignore_index=pad_id to the loss")
        if share > DOMINANT and pad is None and ignore is None:
            return CheckResult(
                ID, "warn", f"target id {top} is {share:.0%} of the targets in `{record.name}` "
                "and no ignore_index or pad id is recorded: if it is padding, the loss counts it",
                layers=[record.name], value=share, threshold=threshold, details=details,
                advice="record the loss's ignore_index and the pad id (rec.loss(..., ignore_index=, "
                       "pad_id=)); mask padding with ignore_index")
    return CheckResult(ID, "pass", f"{kept.size} label(s) of `{record.name}` within "
                       f"0..{(classes or 0) - 1}, {ids.size} class(es)"
                       + (f" ({y.size - kept.size} ignored: ignore_index {ignore})" if ignore is not None else ""),
                       value=int(ids.size), threshold=threshold, details=details)


def _leaf(name: str) -> str:
    return name.lower().replace(":", ".").replace("/", ".").rsplit(".", 1)[-1]


def _class_width(ctx):
    from .loss_input import _loss_input
    head = _loss_input(ctx)
    return int(head.shape[-1]) if head is not None else None


def _trace_meta(ctx) -> dict:
    try:
        meta = json.loads(ctx.trace.attrs.get("meta") or "{}")
    except (TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
