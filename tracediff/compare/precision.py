"""The lowest precision on each record's way from the inputs (docs/diff.md, "Precision that
flows").

A float32 LayerNorm whose input came out of bfloat16 matmuls carries bfloat16's error: its
tolerance must be bfloat16's, not its own dtype's. Each record's *flowed precision* is the
lowest of: its own dtype; the dtype its op computed in (torch ``autocast`` on its device,
TF32 / ``float32_matmul_precision`` for float32 work on CUDA, a Keras ``dtype_policy``); and,
for ``forward`` and ``loss`` records, the flowed precisions of the records it consumed (meta
``inputs``), or of every earlier ``input``/``forward`` record of its step where the dataflow
is not recorded (or ``inputs_partial``). Gradients (``backward``, ``param_grad``) pass through
the whole forward on their way back from the loss: they take the lowest precision of their step.
"""
from __future__ import annotations

import functools
import json

from ..dataflow import declared_inputs
from .tolerances import dtype_default

FLOWING = ("forward", "loss")
# torch modules whose output precision is their inputs' under autocast: autocast runs them in
# float32 or leaves them alone (its lower-precision list holds matmuls and convolutions).
AUTOCAST_EXACT = frozenset({
    "Embedding", "EmbeddingBag", "LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm1d",
    "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "Dropout", "Identity", "ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Tanh", "Sigmoid",
    "Softmax", "LogSoftmax", "Flatten", "Unflatten", "MaxPool1d", "MaxPool2d", "MaxPool3d",
    "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d", "NewGELUActivation", "GELUActivation"})


def lowest(dtypes) -> str | None:
    """The least precise float dtype among ``dtypes`` (by its default rtol); None if none."""
    best, best_rtol = None, -1.0
    for dtype in dtypes:
        if dtype is None:
            continue
        rtol = _float_rtol(dtype)
        if rtol > best_rtol:
            best, best_rtol = dtype, rtol
    return best


@functools.lru_cache(maxsize=256)    # a trace names a few dtypes, asked about per record
def _float_rtol(dtype: str) -> float:
    """The default rtol of a float dtype; -1 for any other."""
    return dtype_default(dtype)[0] if is_float(dtype) else -1.0


def is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex", "tensorfloat"))


def compute_dtype(record, run_meta: dict) -> str | None:
    """The dtype the record's op computed in, below its own, if the metadata says so."""
    meta = record.meta
    device = str(meta.get("device", "cpu")).split(":")[0]
    candidates = []
    autocast = meta.get("autocast")
    if isinstance(autocast, dict) and device in autocast and meta.get("op_type") not in AUTOCAST_EXACT:
        candidates.append(str(autocast[device]))
    policy = meta.get("dtype_policy")
    if isinstance(policy, str) and policy.startswith("mixed_"):
        candidates.append(policy[len("mixed_"):])
    if record.dtype in ("float32", "complex64") and record.kind in FLOWING:
        matmul = run_meta.get("float32_matmul_precision")
        if matmul == "medium":
            candidates.append("bfloat16")
        elif device == "cuda" and (matmul == "high" or run_meta.get("cuda_matmul_allow_tf32")
                                   or run_meta.get("cudnn_allow_tf32")
                                   and record.meta.get("op_type", "").startswith("Conv")):
            candidates.append("tensorfloat32")
    return lowest(candidates)


def flowed_dtypes(trace) -> dict:
    """Record index -> the lowest precision on its way (its own dtype for integer records)."""
    run_meta = _run_meta(trace)
    out = {}
    by_key = {}          # (step, kind, name, call) -> flowed dtype
    upstream = None      # running lowest of the step's inputs and forwards
    step_lowest = {}     # step -> lowest of its input, forward and loss records
    step = object()
    records = list(trace)
    for position, r in enumerate(records):
        if r.position != step:
            step, upstream = r.position, None
        own = r.dtype
        if not is_float(own):
            out[r.index] = own
            continue
        flowed = lowest([own, compute_dtype(r, run_meta)])
        if r.kind == "forward":
            flowed = lowest([flowed, _submodules(records, position, out)])
        if r.kind in FLOWING:
            inputs = declared_inputs(r)
            if inputs is not None and not r.meta.get("inputs_partial"):
                found = [by_key.get((r.position, kind, name, call)) for kind, name, call in inputs]
                flowed = lowest([flowed, *found])
            else:
                flowed = lowest([flowed, upstream])
        if r.kind in ("input", "forward", "loss"):
            by_key[(r.position, r.kind, r.name, r.call)] = flowed
            upstream = lowest([upstream, flowed]) if r.kind != "loss" else upstream
            step_lowest[r.position] = lowest([step_lowest.get(r.position), flowed])
        out[r.index] = flowed
    for r in records:   # gradients: after the whole step's forward is known
        if r.kind in ("backward", "param_grad") and is_float(r.dtype):
            out[r.index] = lowest([out[r.index], step_lowest.get(r.position)])
    return out


def _submodules(records, position, out) -> str | None:
    """A module's record carries what its submodules computed (a block whose float32 output
    adds a bfloat16 attention output to its input): the lowest precision among the records of
    its submodules' calls (and its own other outputs), which come right before it."""
    r = records[position]
    path = r.meta.get("module")
    if not isinstance(path, str):
        return None
    prefixes = (path + ".", path + "/") if path else ("",)   # torch paths, Keras nested models
    found = []
    for j in range(position - 1, -1, -1):
        inner = records[j]
        inner_path = inner.meta.get("module")
        if inner.kind != "forward" or inner.position != r.position or not isinstance(inner_path, str):
            break
        if not (inner_path.startswith(prefixes) and inner_path != path
                or inner_path == path and inner.name != r.name):
            break
        found.append(out.get(inner.index))
    return lowest(found)


def _run_meta(trace) -> dict:
    raw = getattr(trace, "attrs", {}).get("meta")
    try:
        meta = json.loads(raw) if isinstance(raw, str) else (raw or {})
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}
