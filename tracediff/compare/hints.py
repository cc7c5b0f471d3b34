"""Hints: what kind of mistake a diverging pair most probably is, when the evidence shows it.

Each test explains ``a`` (candidate) as a simple function of ``b`` (reference) and accepts the
explanation when it removes nearly all of the difference: the residual must be below 1e-3 of
|b| and below a twentieth of the unexplained error.
"""
from __future__ import annotations

import math

import numpy as np

from ..primes import symbol
from .activations import ACTIVATIONS
from .metrics import dot

HINT_LIMIT = 1 << 20     # elements; larger tensors are explained from their leading slice
RESIDUAL = 1e-3
COMPUTED_KINDS = ("forward", "input", "loss")     # values a layer computes: an activation fits
GAIN = 0.05


def _norm(x):
    return math.sqrt(dot(x, x))


class _Judge:
    def __init__(self, a, b):
        self.a, self.b = a, b
        self.scale = max(_norm(b), _norm(a), 1e-300)
        self.base = _norm(a - b) / self.scale

    def explains(self, predicted_a, actual_a=None, scale=None) -> bool:
        actual = self.a if actual_a is None else actual_a
        with np.errstate(all="ignore"):
            residual = _norm(actual - predicted_a) / (scale or self.scale)
        return bool(np.isfinite(residual) and residual <= RESIDUAL and residual <= GAIN * self.base)


def axis_name(axis, shape, dims) -> str:
    name = symbol(shape[axis], dims) if dims else ""
    return f"axis {axis} ({name})" if name and not name.isdigit() else f"axis {axis}"


def explain(a, b, *, bad_mask=None, dims=None, eps=None, min_rtol=None, previous=None,
            kind="forward"):
    """One line naming the probable mistake, or None. ``a`` and ``b`` are float arrays of the
    same shape; ``bad_mask`` marks the elements outside tolerance; ``previous`` is the reference
    input of this layer (the previous aligned record), when its shape matches. ``kind``: the
    records' kind; an extra activation explains only what a layer computes (``forward``,
    ``input``), not a parameter or a gradient."""
    a, b = leading(np.asarray(a, np.float64)), leading(np.asarray(b, np.float64))
    if bad_mask is not None:
        bad_mask = leading(bad_mask)
    if previous is not None:
        previous = leading(np.asarray(previous, np.float64))
    if a.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    judge = _Judge(a, b)
    if judge.base == 0:
        return None
    tests = [_sign_or_scale, _offset, _bias, _transpose, _activation, _substitution, _shift,
             _permuted_values]
    if kind not in COMPUTED_KINDS:
        tests.remove(_activation)
    for test in tests:
        text = test(judge, a, b, dims=dims, previous=previous)
        if text:
            return text
    if eps and min_rtol is not None and min_rtol <= 64 * eps:
        return (f"differences at the level of floating-point precision only (at most "
                f"{min_rtol / eps:.0f} units of roundoff relative to the tensor's scale): "
                "accumulated rounding, not a bug; loosen --rtol for this layer")
    text = _rows(a, b, bad_mask, dims)
    if text:
        return text
    return None


def leading(x):
    """At most HINT_LIMIT elements, cut along axis 0 so that rows stay whole."""
    if x is None or x.size <= HINT_LIMIT or x.ndim == 0:
        return x
    rows = max(1, HINT_LIMIT // max(1, x.size // x.shape[0]))
    return x[:rows]


def _sign_or_scale(judge, a, b, **_):
    bb = dot(b, b)
    if bb == 0:
        return None
    s = dot(b, a) / bb
    if abs(s - 1) < 1e-3 or s == 0 or not judge.explains(s * b):   # s = 0: a is all zeros
        return None
    if abs(s + 1) < 1e-3:
        return "a = -b: a sign flip (a subtraction the wrong way round, or a negated term)"
    return (f"a = {s:.6g} x b: a constant scale factor (a missing or extra scaling, e.g. "
            f"1/sqrt(d) in attention, a mean instead of a sum, or a wrong gain); 1/s = {1 / s:.6g}")


def _offset(judge, a, b, **_):
    c = float(np.mean(a - b))
    if c == 0 or not judge.explains(b + c):
        return None
    return f"a = b + {c:.6g}: a constant offset (a wrong bias or shift added everywhere)"


def _bias(judge, a, b, dims=None, **_):
    if a.ndim < 2:
        return None
    d = a - b
    axes = sorted(range(a.ndim), key=lambda k: (k != a.ndim - 1, k != 1, k))
    for axis in axes:
        if a.shape[axis] < 2 or a.size // a.shape[axis] < 2:
            continue
        others = tuple(k for k in range(a.ndim) if k != axis)
        offset = d.mean(axis=others, keepdims=True)
        if judge.explains(b + offset):
            values = offset.reshape(-1)
            shown = ", ".join(f"{v:.4g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
            return (f"missing or wrong bias: a - b is a constant offset per index along "
                    f"{axis_name(axis, a.shape, dims)} (offsets {shown})")
    return None


def _transpose(judge, a, b, dims=None, **_):
    for i in range(a.ndim):
        for j in range(i + 1, a.ndim):
            if a.shape[i] != a.shape[j] or a.shape[i] < 2:
                continue
            if judge.explains(np.swapaxes(b, i, j)):
                return (f"a is b with axes {i} and {j} swapped (a transpose; both have size "
                        f"{a.shape[i]}, so the shapes cannot show it)")
    return None


def _activation(judge, a, b, **_):
    with np.errstate(all="ignore"):
        for name, f in ACTIVATIONS.items():
            if judge.explains(f(b)):
                return (f"a = {name}(b): a applies an extra {name} (activation applied twice, or "
                        "applied where the reference has none)")
            fa = f(a)
            if judge.explains(fa, actual_a=b, scale=max(_norm(b), 1e-300)) and judge.base > 0:
                return f"b = {name}(a): a is missing the {name} activation"
    return None


def _substitution(judge, a, b, previous=None, **_):
    """A wrong activation: a = f(x) and b = g(x) for the layer's input x."""
    if previous is None or previous.shape != a.shape:
        return None
    with np.errstate(all="ignore"):
        fits_b = [n for n, f in ACTIVATIONS.items() if judge.explains(f(previous), actual_a=b,
                                                                      scale=max(_norm(b), 1e-300))]
        if not fits_b:
            return None
        for name, f in ACTIVATIONS.items():
            if name not in fits_b and judge.explains(f(previous)):
                return (f"wrong activation: a applies {name} to the layer's input where the "
                        f"reference applies {fits_b[0]}")
    return None


def _shift(judge, a, b, dims=None, **_):
    """a equals b moved by one position along one axis, or along two axes at once (a
    convolution padded on the wrong side), compared where the two overlap."""
    sizes = [axis for axis in range(a.ndim) if a.shape[axis] >= 3]
    moves = [((axis, s),) for axis in sizes for s in (1, -1)]
    moves += [((i, si), (j, sj)) for k, i in enumerate(sizes) for j in sizes[k + 1:]
              for si in (1, -1) for sj in (1, -1)]
    for move in moves:
        take_a = [slice(None)] * a.ndim
        take_b = [slice(None)] * a.ndim
        for axis, step in move:
            take_a[axis], take_b[axis] = (slice(1, None), slice(None, -1)) if step > 0 else \
                (slice(None, -1), slice(1, None))
        part_a, part_b = a[tuple(take_a)], b[tuple(take_b)]
        local = _Judge(part_a, part_b)
        local.base = judge.base
        if not local.explains(part_b, actual_a=part_a):
            continue
        where = " and ".join(axis_name(axis, a.shape, dims) for axis, _ in move)
        index = ", ".join(f"{'ij'[k]}{'-' if step > 0 else '+'}1" for k, (_, step) in enumerate(move))
        here = ", ".join("ij"[k] for k in range(len(move)))
        return (f"a is b shifted by one position along {where}: a[{here}] = b[{index}] "
                "(off-by-one, padding on the wrong side, or a causal shift)")
    return None


def _permuted_values(judge, a, b, **_):
    if a.size < 2:
        return None
    sa, sb = np.sort(a.reshape(-1)), np.sort(b.reshape(-1))
    if judge.explains(sb, actual_a=sa):
        return ("a holds the same values as b in a different order (a permutation: check "
                "reshape, flatten, transpose or gather order)")
    return None


def _rows(a, b, bad_mask, dims):
    """Only some indices along one axis are wrong."""
    if bad_mask is None or a.ndim == 0:
        return None
    bad = np.asarray(bad_mask, bool)
    count = int(bad.sum())
    if count == 0 or count == bad.size:
        return None
    if count <= 3:
        where = [list(map(int, np.unravel_index(i, bad.shape))) for i in np.flatnonzero(bad)]
        return f"only {count} element(s) differ, at {', '.join(map(str, where))}"
    best = None
    for axis in range(bad.ndim):
        if bad.shape[axis] < 2:
            continue
        others = tuple(k for k in range(bad.ndim) if k != axis)
        hit = np.flatnonzero(bad.any(axis=others)) if others else np.flatnonzero(bad)
        fraction = hit.size / bad.shape[axis]
        if fraction <= 0.5 and (best is None or fraction < best[0]):
            best = (fraction, axis, hit)
    if best is None:
        return None
    _, axis, hit = best
    shown = ", ".join(str(int(i)) for i in hit[:10]) + (", ..." if hit.size > 10 else "")
    return (f"only indices [{shown}] along {axis_name(axis, bad.shape, dims)} differ "
            f"({hit.size} of {bad.shape[axis]}); the others match")


def explain_inputs(a, b, layout_a=None, layout_b=None) -> str:
    """What differs between two runs' inputs of one shape: the channel order reversed (RGB
    against BGR), a per-channel (or global) scale and offset (normalised against raw), two
    axes swapped (a transposed image); else how far apart they are."""
    judge = _Judge(a, b)
    if judge.base == 0:
        return "the inputs are equal"
    channel = _channel_axis(a.shape, layout_a if isinstance(layout_a, str) else layout_b)
    channels = ([channel] if channel is not None else []) + \
        [k for k in range(a.ndim) if a.shape[k] in (3, 4) and k != channel]
    for axis in channels:
        flipped = np.flip(b, axis=axis)
        if a.shape[axis] > 1 and judge.explains(flipped):
            return (f"a's channels are b's in reverse order along axis {axis} (RGB against BGR): "
                    "convert one side's images")
    for axis in channels + [None]:
        text = _affine(judge, a, b, axis)
        if text:
            return text
    for i in range(a.ndim):
        for j in range(i + 1, a.ndim):
            if a.shape[i] == a.shape[j] > 1 and judge.explains(np.swapaxes(b, i, j)):
                return (f"a is b with axes {i} and {j} swapped (a transposed image: height and "
                        "width, or channels, exchanged)")
    return (f"the inputs differ (relative L2 error {judge.base:.3g}): the two runs were not fed "
            "the same data")


def _channel_axis(shape, layout):
    if isinstance(layout, str) and "C" in layout and len(layout) == len(shape):
        return layout.index("C")
    return None


def _affine(judge, a, b, axis):
    """a = scale * b + offset (per index along ``axis``, or one pair for the whole tensor)."""
    if axis is None:
        a2, b2 = a.reshape(1, -1), b.reshape(1, -1)
    else:
        a2 = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
        b2 = np.moveaxis(b, axis, 0).reshape(b.shape[axis], -1)
    mb, ma = b2.mean(axis=1, keepdims=True), a2.mean(axis=1, keepdims=True)
    var = ((b2 - mb) ** 2).sum(axis=1, keepdims=True)
    if (var == 0).any():
        return None
    scale = ((b2 - mb) * (a2 - ma)).sum(axis=1, keepdims=True) / var
    offset = ma - scale * mb
    predicted = scale * b2 + offset
    if not judge.explains(np.moveaxis(predicted.reshape(np.moveaxis(a, axis, 0).shape), 0, axis)
                          if axis is not None else predicted.reshape(a.shape)):
        return None
    s, o = scale.ravel(), offset.ravel()
    uniform = np.allclose(s, s[0], rtol=1e-4) and np.allclose(o, o[0], atol=1e-6 * (np.abs(a).max() + 1e-30))
    if uniform:
        s, o = s[:1], o[:1]
    where = "" if uniform else f" per index along axis {axis} (per channel)"
    if np.allclose(o, 0, atol=1e-6 * (np.abs(a).max() + 1e-30)) and uniform:
        factor = float(s[0])
        for k in (255.0, 127.5):
            if abs(factor * k - 1) < 1e-4:
                return f"a = b / {k:g}: a is scaled to unit range and b holds raw pixel values"
            if abs(factor / k - 1) < 1e-4:
                return f"a = b * {k:g}: a holds raw pixel values and b is scaled to unit range"
        return f"a = {factor:.4g} * b: the inputs are scaled differently"
    mean = -o / s
    std = 1 / s
    return (f"a = (b - mean) / std{where} with mean {_short(mean)}, std {_short(std)}: one side "
            "is normalised and the other is not (or with other statistics)")


def _short(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values[:4]) + (", ..." if len(values) > 4 else "") + "]"
