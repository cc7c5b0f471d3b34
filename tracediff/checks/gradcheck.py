"""``td.gradcheck``: finite differences in float64 against a hand-written backward.

Bands of the relative error |a - n| / max(|a|, |n|) (CS231n, "Gradient checks"):
<= 1e-7 good, <= 1e-5 ok, <= 1e-2 suspicious (in CS231n's words, fine only for kinks),
> 1e-2 wrong. Kinks of ReLU/max crossed by the step are detected (the one-sided slopes
disagree) and handled instead of excused: the entry is re-measured with smaller steps, and an
entry sitting on the kink is compared with the range of valid subgradients.
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import TraceDiffError

BANDS = ((1e-7, "good"), (1e-5, "ok"), (1e-2, "suspicious"))
# Central differences in float64: truncation error ~ h^2 f''', roundoff ~ eps |L| / h; h = 1e-5
# balances them at ~1e-10 relative for smooth functions (CS231n uses the same step).
DEFAULT_STEP = 1e-5
RETRY_STEPS = (1e-7, 1e-9)  # smaller steps that step over a kink the default one crosses
# One-sided slopes that disagree by more than this fraction reveal a kink within the step.
KINK_JUMP = 0.1


@dataclass
class GradcheckResult:
    """Per array: the worst relative error over the sampled entries, where, and its band."""

    results: list
    step: float = DEFAULT_STEP
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every array is good or ok. Kinks do not excuse a suspicious error here: an entry whose
        step crossed a kink is re-measured with smaller steps, or against the subgradient range."""
        return all(r["status"] in ("good", "ok") for r in self.results)

    def __getitem__(self, name) -> dict:
        for r in self.results:
            if r["name"] == name:
                return r
        raise KeyError(f"no array {name!r} was checked: names are {[r['name'] for r in self.results]}")

    def to_dict(self) -> dict:
        return {"schema": "tracediff.gradcheck/1", "ok": self.ok, "step": self.step,
                "results": [dict(r, worst_index=list(r["worst_index"])) for r in self.results]}

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return text

    def __str__(self):
        lines = [f"gradcheck: {'ok' if self.ok else 'FAILED'} (central differences, step {self.step:g}, float64)"]
        for r in self.results:
            kink = f", {r['kinks']} kink(s) crossed" if r["kinks"] else ""
            lines.append(f"  {r['status']:10} {r['name']}: max rel error {r['max_rel_error']:.2e} at "
                         f"{tuple(r['worst_index'])} (analytic {r['analytic']:.6g}, numerical "
                         f"{r['numerical']:.6g}); {r['checked']} of {r['size']} entries{kink}")
        return "\n".join(lines)


def gradcheck(f, arrays, params=None, *, samples=32, step=DEFAULT_STEP, seed=0) -> GradcheckResult:
    """Compare the analytic gradients of ``f`` with central differences on sampled entries.

    ``f(arrays) -> (loss, grads)``: ``arrays`` maps names to NumPy inputs and parameters, ``grads``
    maps the same names to dL/d(array). ``f`` may also be a layer with ``forward``/``backward``
    (``backward(dout) -> grads``, or CS231n style ``forward(...) -> (out, cache)``,
    ``backward(dout, cache)``), or a ``(forward, backward)`` pair: the loss is then
    sum(out * R) for a fixed random R, and the arrays are passed to ``forward`` in order.
    ``samples`` entries of every array are checked (all of them when smaller), always
    including the entry with the largest analytic gradient. ``params`` (a dict) is merged into
    ``arrays``, for the ``gradcheck(f, inputs, params)`` spelling; ``f`` still gets one dict.
    """
    if params is not None:
        if not isinstance(params, dict) or not isinstance(arrays, dict):
            raise TraceDiffError("gradcheck: inputs and params must be dicts mapping names to arrays")
        clash = sorted(set(arrays) & set(params))
        if clash:
            raise TraceDiffError(f"gradcheck: {clash} named both in inputs and params: rename one")
        arrays = {**arrays, **params}
    arrays = _validate_arrays(arrays)
    if not (isinstance(samples, int) and samples >= 1):
        raise TraceDiffError(f"gradcheck: samples must be a positive integer, got {samples!r}")
    if not (isinstance(step, float) and 0 < step < 1):
        raise TraceDiffError(f"gradcheck: step must be a float in (0, 1), got {step!r}")
    fn = _as_loss_and_grads(f, list(arrays), seed)
    loss0, grads = _call(fn, arrays)
    scale = max(1.0, abs(loss0))
    # Below this magnitude both gradients are roundoff of the loss; comparing them is noise.
    floor = 1e-8 * scale
    rng = np.random.default_rng(seed)
    results = []
    for name, x in arrays.items():
        g = grads[name]
        flat_x, flat_g = x.reshape(-1), g.reshape(-1)
        indices = _sample(flat_g, samples, rng)
        worst = None
        kinks = 0
        for i in indices:
            entry = _check_entry(fn, arrays, name, flat_x, i, float(flat_g[i]), step, floor, loss0)
            kinks += entry["kink"]
            if worst is None or entry["rel"] > worst["rel"]:
                worst = dict(entry, index=i)
        status = _band(worst["rel"])
        results.append({
            "name": name, "max_rel_error": worst["rel"],
            "worst_index": tuple(int(k) for k in np.unravel_index(worst["index"], x.shape)),
            "status": status, "analytic": worst["analytic"], "numerical": worst["numerical"],
            "kink": bool(worst["kink"]), "kinks": int(kinks), "checked": len(indices),
            "size": int(x.size)})
    return GradcheckResult(results, step=step)


def _check_entry(fn, arrays, name, flat_x, i, analytic, step, floor, loss0) -> dict:
    numerical, kink, slopes = _central(fn, arrays, flat_x, i, step, loss0)
    rel = _rel(analytic, numerical, floor)
    crossed = kink
    if kink and rel > BANDS[1][0]:
        # The step crossed a kink: smaller steps may land on one side of it.
        for small in RETRY_STEPS:
            n2, kink, slopes = _central(fn, arrays, flat_x, i, small, loss0)
            r2 = _rel(analytic, n2, floor)
            if r2 < rel:
                numerical, rel = n2, r2
            if not kink:
                break
        if kink:
            # The entry sits on the kink (ReLU at exactly 0, a tie in max): any value between
            # the one-sided slopes is a valid subgradient, so measure the distance to that range.
            lo, hi = min(slopes), max(slopes)
            nearest = min(max(analytic, lo), hi)
            numerical, rel = nearest, _rel(analytic, nearest, floor)
    return {"rel": rel, "analytic": analytic, "numerical": numerical, "kink": bool(crossed)}


def _central(fn, arrays, flat_x, i, h, loss0):
    """Central difference at entry i, whether one-sided slopes reveal a kink, and the slopes."""
    original = flat_x[i]
    try:
        flat_x[i] = original + h
        plus = _call(fn, arrays, need_grads=False)[0]
        flat_x[i] = original - h
        minus = _call(fn, arrays, need_grads=False)[0]
    finally:
        flat_x[i] = original
    numerical = (plus - minus) / (2 * h)
    right, left = (plus - loss0) / h, (loss0 - minus) / h
    roundoff = 1e-9 * max(1.0, abs(loss0)) / h
    kink = abs(right - left) > max(KINK_JUMP * max(abs(right), abs(left)), roundoff)
    return numerical, kink, (left, right)


def _rel(a, n, floor) -> float:
    denominator = max(abs(a), abs(n))
    if denominator < floor:
        return 0.0
    return abs(a - n) / denominator


def _band(rel) -> str:
    if not math.isfinite(rel):
        return "wrong"
    for limit, name in BANDS:
        if rel <= limit:
            return name
    return "wrong"


def _sample(flat_g, samples, rng) -> list:
    if flat_g.size <= samples:
        return list(range(flat_g.size))
    chosen = set(rng.choice(flat_g.size, size=samples - 1, replace=False).tolist())
    chosen.add(int(np.argmax(np.abs(flat_g))))
    return sorted(chosen)


def _validate_arrays(arrays) -> dict:
    if not isinstance(arrays, dict) or not arrays:
        raise TraceDiffError("gradcheck: arrays must be a non-empty dict mapping names to NumPy "
                             f"arrays, got {type(arrays).__name__}")
    out = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fiu" or array.size == 0:
            raise TraceDiffError(f"gradcheck: array {name!r} must be a non-empty real numeric array, "
                                 f"got dtype {array.dtype} and shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise TraceDiffError(f"gradcheck: array {name!r} holds NaN or Inf: check finite points")
        out[str(name)] = np.array(array, dtype=np.float64, copy=True)
    return out


def _call(fn, arrays, need_grads=True):
    loss, grads = fn(arrays)
    loss_value = np.asarray(loss, dtype=np.float64)
    if loss_value.size != 1:
        raise TraceDiffError(f"gradcheck: f must return a scalar loss, got shape {loss_value.shape}")
    loss_value = float(loss_value.reshape(-1)[0])
    if not math.isfinite(loss_value):
        raise TraceDiffError("gradcheck: the loss is not finite at the given arrays: check at a finite point")
    if not need_grads:
        return loss_value, None
    if not isinstance(grads, dict):
        raise TraceDiffError(f"gradcheck: f must return (loss, grads) with grads a dict of arrays, "
                             f"got {type(grads).__name__}")
    checked = {}
    for name, x in arrays.items():
        if name not in grads or grads[name] is None:
            raise TraceDiffError(f"gradcheck: f returned no gradient for {name!r}: return one for "
                                 "every array, or leave it out of arrays")
        g = np.asarray(grads[name], dtype=np.float64)
        if g.shape != x.shape:
            raise TraceDiffError(f"gradcheck: the gradient of {name!r} has shape {g.shape}, the "
                                 f"array {x.shape}: they must match")
        checked[name] = g
    return loss_value, checked


def _as_loss_and_grads(f, names, seed):
    """f itself, or a wrapper turning a forward/backward layer into f(arrays) -> (loss, grads)."""
    if isinstance(f, tuple) and len(f) == 2 and all(callable(p) for p in f):
        forward, backward = f
    elif callable(getattr(f, "forward", None)) and callable(getattr(f, "backward", None)):
        forward, backward = f.forward, f.backward
    elif callable(f):
        return f
    else:
        raise TraceDiffError("gradcheck: f must be a function f(arrays) -> (loss, grads), a layer "
                             f"with forward/backward, or a (forward, backward) pair; got {type(f).__name__}")
    with_cache = _positional_count(backward) >= 2
    projections = {}

    def fn(arrays):
        result = forward(*(arrays[n] for n in names))
        out, cache = (result if with_cache else (result, None))
        out = np.asarray(out, dtype=np.float64)
        if out.shape not in projections:
            projections[out.shape] = np.random.default_rng(seed + 1).standard_normal(out.shape)
        r = projections[out.shape]
        loss = float(np.sum(out * r))
        grads = backward(r, cache) if with_cache else backward(r)
        if isinstance(grads, dict):
            return loss, grads
        grads = grads if isinstance(grads, (tuple, list)) else (grads,)
        if len(grads) < len(names):
            raise TraceDiffError(f"gradcheck: backward returned {len(grads)} gradient(s) for "
                                 f"{len(names)} array(s) {names}: return one per forward argument")
        return loss, dict(zip(names, grads))

    return fn


def _positional_count(fn) -> int:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(1 for p in parameters
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)
