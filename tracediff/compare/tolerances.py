"""Which tolerance a pair is judged at, and the rule that judges it.

Defaults are torch.testing's per-dtype table, taken at the looser of the two dtypes (a float64
port against a float32 reference is judged as float32). Rounding error accumulates along the
computation, so the default relative tolerance grows with the record's depth (its position
among the computed records of the reference); explicit ``--rtol/--atol`` and per-layer TOML
tolerances are applied exactly as given. ``docs/diff.md`` explains the rule and why it works.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

# torch.testing.assert_close defaults: dtype -> (rtol, atol)
TORCH_DEFAULTS = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex32": (1e-3, 1e-5),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}
# TF32 (float32 matmuls on CUDA with 10 mantissa bits): float16's precision.
TF32_DEFAULT = (1e-3, 1e-5)
FLOAT8_DEFAULT = (0.125, 1e-3)     # 3 mantissa bits at most: torch.testing has no entry
EXACT = (0.0, 0.0)                 # integers and bools compare exactly

# An element passes when |a - b| <= atol + rtol * max(|b|, SCALE_FLOOR * rms(b)).
SCALE_FLOOR = 1.0
SCALE_TEXT = f"max(|b|, {SCALE_FLOOR:g}*rms(b))"     # the rule as reports state it
# The default rtol at depth d is rtol * DEPTH_GROWTH * sqrt(d) (d >= 1) ...
DEPTH_GROWTH = 4.0
# ... but for 16-bit and lower precisions (rtol >= 1e-3) at most rtol * this factor: their
# rounding error does not grow like float32's chain of roundings (normalisations rescale it,
# and one bfloat16 rounding already dominates), and an unbounded growth would let a 5% weight
# error pass at depth (docs/diff.md, "Precision that flows").
LOW_PRECISION = 1e-3
LOW_PRECISION_CAP = {"forward": 2.5, "loss": 2.5, "input": 2.5, "param": 2.5,
                     "backward": 8.0, "param_grad": 8.0}
# ... and their whole-tensor error, rel_l2 = |a - b| / |b|, at most this many machine epsilons
# (bfloat16: 0.031): gradients have heavy-tailed elementwise noise in 16-bit (softmax, small
# rows), while a planted error raises the whole tensor's.
LOW_PRECISION_REL_L2 = 4.0
EPSILON_16 = {"bfloat16": 2.0 ** -7, "float16": 2.0 ** -10, "tensorfloat32": 2.0 ** -10}


def dtype_default(dtype: str) -> tuple:
    if dtype in TORCH_DEFAULTS:
        return TORCH_DEFAULTS[dtype]
    if dtype == "tensorfloat32":
        return TF32_DEFAULT
    if dtype.startswith(("float8", "float6", "float4")):
        return FLOAT8_DEFAULT
    return EXACT


def looser_default(dtype_a: str, dtype_b: str) -> tuple:
    ra, aa = dtype_default(dtype_a)
    rb, ab = dtype_default(dtype_b)
    return max(ra, rb), max(aa, ab)


def depth_factor(depth: int, rtol: float = 0.0, kind: str = "forward") -> float:
    factor = DEPTH_GROWTH * math.sqrt(max(1, int(depth)))
    if rtol >= LOW_PRECISION:
        factor = min(factor, LOW_PRECISION_CAP.get(kind, 2.5))
    return factor


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    source: str          # "default" | "cli" | "file"
    depth: int = 1
    precision: str = ""  # the dtype whose defaults apply: the lowest precision on the way
    rel_l2: float | None = None   # a limit on the whole tensor's relative error, if any

    def to_dict(self) -> dict:
        out = {"rtol": self.rtol, "atol": self.atol, "source": self.source, "depth": self.depth,
               "scale": SCALE_TEXT}
        if self.precision:
            out["precision"] = self.precision
        if self.rel_l2 is not None:
            out["rel_l2"] = self.rel_l2
        return out


@dataclass(frozen=True)
class LayerTolerance:
    pattern: str
    rtol: float | None
    atol: float | None

    def matches(self, kind: str, a_name: str, b_name: str) -> bool:
        pattern = self.pattern
        if ":" in pattern and pattern.split(":", 1)[0] in (
                "forward", "backward", "param", "param_grad", "input", "loss"):
            want, pattern = pattern.split(":", 1)
            if want != kind:
                return False
        return fnmatch.fnmatchcase(b_name, pattern) or fnmatch.fnmatchcase(a_name, pattern)


class TolerancePolicy:
    """Resolves the tolerance of one pair: per-layer TOML entry, else --rtol/--atol, else the
    dtype default grown with depth."""

    def __init__(self, rtol=None, atol=None, layers=()):
        self.rtol = None if rtol is None else float(rtol)
        self.atol = None if atol is None else float(atol)
        self.layers = tuple(layers)

    def resolve(self, kind, a_name, b_name, dtype_a, dtype_b, depth) -> Tolerance:
        base_rtol, base_atol = looser_default(dtype_a, dtype_b)
        for entry in self.layers:
            if entry.matches(kind, a_name, b_name):
                rtol = entry.rtol if entry.rtol is not None else (
                    self.rtol if self.rtol is not None else base_rtol)
                atol = entry.atol if entry.atol is not None else (
                    self.atol if self.atol is not None else base_atol)
                return Tolerance(rtol, atol, "file", depth)
        if self.rtol is not None or self.atol is not None:
            rtol = self.rtol if self.rtol is not None else base_rtol
            atol = self.atol if self.atol is not None else base_atol
            return Tolerance(rtol, atol, "cli", depth)
        precision = dtype_a if dtype_default(dtype_a)[0] >= dtype_default(dtype_b)[0] else dtype_b
        rel_l2 = None
        if base_rtol >= LOW_PRECISION:
            rel_l2 = LOW_PRECISION_REL_L2 * EPSILON_16.get(precision, base_rtol)
        return Tolerance(base_rtol * depth_factor(depth, base_rtol, kind), base_atol, "default",
                         depth, precision, rel_l2)
