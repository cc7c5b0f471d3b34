"""What every check needs from a trace: the step analysed, record groups, values, op families.

Checks read statistics first (no tensor data) and values only where they must; a record kept as
statistics only (``values=False``) falls back to its seeded sample or to the statistics.
"""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import as_float, is_float
from ..trace import Record, Trace

ROLE_BUFFERS = {"running_mean", "running_var", "num_batches_tracked"}


class CheckContext:
    """A trace with the records of its first step grouped for the checks.

    Init-time checks (activations, gradients, initial loss) look at the first step that has
    forward records: that is the state the checklists reason about. Checks across training
    (update ratio, frozen parameters, non-finite values) look at every step.
    """

    def __init__(self, trace: Trace, *, classes=None):
        self.trace = trace
        self.classes = classes
        steps = trace.steps
        with_forward = [s for s in steps if trace.records(kind="forward", step=s)]
        self.step = (with_forward or steps or [-1])[0]
        # of a generation or an evaluation set, the first decode step and batch of that step:
        # the init-time checks reason about one forward pass
        first = next((r for r in trace if r.step == self.step and r.kind == "forward"), None)
        self.decode_step = first.decode_step if first is not None else -1
        self.batch_index = first.batch_index if first is not None else -1
        self._by_step = {}

    def records(self, kind, step=None) -> list:
        """Records of ``kind`` at ``step``, by default the analysed step (and its first decode
        step and batch)."""
        key = (kind if isinstance(kind, str) else tuple(kind), step)
        if key not in self._by_step:
            if step is None:
                found = self.trace.records(kind=kind, step=self.step)
                self._by_step[key] = [r for r in found if (r.decode_step, r.batch_index) in
                                      ((self.decode_step, self.batch_index), (-1, -1))]
            else:
                self._by_step[key] = self.trace.records(kind=kind, step=step)
        return self._by_step[key]

    @property
    def forward(self) -> list:
        return self.records("forward")

    @property
    def framework(self) -> str:
        return self.trace.framework

    def find(self, kind, name, call=0, step=None):
        for r in self.records(kind, step):
            if r.name == name and r.call == call:
                return r
        return None

    def producer(self, record: Record):
        """The forward record just before ``record`` in execution order: its input in a
        sequential net (or None for the first layer)."""
        forward = self.records("forward", record.step)
        key = ("position", record.step)
        if key not in self._by_step:
            self._by_step[key] = {r.index: i for i, r in enumerate(forward)}
        position = self._by_step[key].get(record.index)
        return forward[position - 1] if position else None


def values(record: Record):
    """The record's values as float64 (the whole tensor, or its sample when stats-only)."""
    if record.numel == 0:
        return np.zeros(0)
    data = record.read() if record.stored else record.sample()[1]
    return np.asarray(as_float(np.asarray(data)), dtype=np.float64)


def is_float_record(record: Record) -> bool:
    return is_float(record.dtype)


def nonfinite_count(record: Record) -> int:
    return int(record.stats.get("nan", 0) or 0) + int(record.stats.get("inf", 0) or 0)


def l2(record: Record) -> float:
    value = record.stats.get("l2")
    return float(value) if value is not None else math.nan


def role(record: Record) -> str:
    explicit = record.meta.get("role")
    if explicit:
        return str(explicit)
    leaf = record.name.replace("/", ".").rsplit(".", 1)[-1].lower()
    if leaf in ROLE_BUFFERS or leaf.startswith("moving_"):
        return "running_mean" if "mean" in leaf else "running_var"
    if leaf in ("bias", "beta"):
        return "bias"
    return "weight" if len(record.shape) >= 2 else ""


def is_weight_like(record: Record) -> bool:
    """Weights whose scale the heuristics of Karpathy/CS231n reason about (biases excluded:
    they are often initialised to zero, which makes every ratio to their norm meaningless)."""
    return role(record) in ("weight", "embedding", "recurrent_weight")


def op_family(record: Record) -> str:
    """relu, sigmoid, tanh, dropout, batchnorm or '' from meta op_type / activation."""
    names = [str(record.meta.get("op_type", "")), str(record.meta.get("activation", ""))]
    for raw in names:
        op = raw.lower().replace("_", "")
        if op in ("relu", "relu6"):
            return "relu"
        if op in ("sigmoid", "tanh"):
            return op
        if "dropout" in op:
            return "dropout"
        if "batchnorm" in op:
            return "batchnorm"
    return ""


def unit_axis(record: Record, ctx: CheckContext) -> int:
    """The axis of a record's units (features/channels): from its layout, its producer's, or
    the framework's default (channels first for 4-D/5-D torch and ONNX tensors)."""
    ndim = len(record.shape)
    if ndim <= 1:
        return 0
    layout = record.meta.get("layout")
    if not layout:
        previous = ctx.producer(record)
        if previous is not None and previous.shape == record.shape:
            layout = previous.meta.get("layout")
    if isinstance(layout, str) and len(layout) == ndim and "C" in layout:
        return layout.index("C")
    if ctx.framework in ("torch", "onnx") and ndim >= 4:
        return 1
    return ndim - 1



REGULARISATION_TERMS = ("regularisation", "regularization")


def is_regularisation(record: Record) -> bool:
    """A loss record of a regularisation term (docs/conventions.md): meta ``term`` says so, or
    its name starts with ``reg/``."""
    return str(record.meta.get("term", "")).lower() in REGULARISATION_TERMS or record.name.startswith("reg/")


def data_losses(ctx: CheckContext, step=None) -> list:
    """Scalar float loss records of the step that are not regularisation terms."""
    return [r for r in ctx.records("loss", step) if r.numel == 1 and is_float_record(r)
            and not is_regularisation(r)]
