"""What the renderers share: reading a diff report dict, formatting numbers."""
from __future__ import annotations

import html
import math

from ..primes import render_shape

STAT_COLUMNS = ("max_abs", "max_rel", "rel_l2", "cosine")


def esc(value) -> str:
    """``value`` as HTML text or attribute ('' for None)."""
    return html.escape("" if value is None else str(value), quote=True)


def number(value) -> str:
    """A statistic for people: 3 significant digits, '-' when absent."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.3g}"
    return str(value)

def fmt(value) -> str:
    """A check's value for people: 3 significant digits, 'n/a' when absent."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}"
    return str(value)



def shape(value, dims) -> str:
    if value is None:
        return "-"
    try:
        return render_shape(value, dims or None)
    except (TypeError, ValueError):
        return str(value)


def is_diverged(pair: dict) -> bool:
    """The engine's verdict when it gives one (a layout between declared layouts, NHWC against
    NCHW, is not a divergence), else any status but ok."""
    if "diverged" in pair:
        return bool(pair["diverged"])
    return pair.get("status") != "ok"


def pairs_diverged_first(pairs, limit=None):
    """(pairs to show, how many were left out): diverged pairs first, then other non-ok
    statuses, then the rest, each group in report order."""
    def rank(pair):
        return 0 if is_diverged(pair) else (1 if pair.get("status") != "ok" else 2)
    ordered = sorted(pairs, key=rank)  # stable: report order within a group
    if limit is None or len(ordered) <= limit:
        return ordered, 0
    return ordered[:limit], len(ordered) - limit


def summary(report: dict) -> str:
    """One line: the verdict and the first divergences by name."""
    pairs = report.get("pairs") or []
    bad = sum(1 for p in pairs if is_diverged(p))
    if report.get("ok"):
        return f"no divergence: {len(pairs)} pairs match within tolerance"
    missing = report.get("missing") or []
    if missing:   # pairs a Dask cluster lost: never a silent "ok"
        lost = missing_text(missing)
        if not bad:
            return f"incomplete: {len(pairs)} pairs compared match within tolerance; {lost}"
    first = report.get("first_divergence") or {}
    parts = []
    for direction in ("forward", "backward"):
        pair = first.get(direction)
        if pair:
            parts.append(f"first {direction} divergence at {pair_label(pair)} ({pair.get('status')})")
    if not parts:
        grad = first.get("param_grad")
        where = f" (first: {pair_label(grad)})" if grad else ""
        parts.append(f"activations and their gradients match; parameter records diverge{where}")
    where = position_text(first)
    return (f"{bad} of {len(pairs)} pairs diverged; " + (f"in {where}: " if where else "")
            + "; ".join(parts) + (f"; {lost}" if missing else ""))


def missing_text(missing: list) -> str:
    """``2 pair(s) not compared: forward fc1, ...``: the pairs a Dask cluster lost."""
    names = ", ".join(f"{m['kind']} {m['b_name']}" for m in missing[:3])
    return f"{len(missing)} pair(s) not compared: {names}{', ...' if len(missing) > 3 else ''}"


def position_text(item) -> str:
    """``step 3, decode step 1``: the fields of a pair, first divergence or step column that
    apply (>= 0); "" where none does. ``item``: a dict or an object with those attributes."""
    get = item.get if isinstance(item, dict) else (lambda key: getattr(item, key, None))
    parts = []
    for key, label in (("step", "step"), ("decode_step", "decode step"), ("batch_index", "batch")):
        value = get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            parts.append(f"{label} {value}")
    return ", ".join(parts)


def directions(first: dict) -> tuple:
    """forward and backward always; the first diverging parameter gradient when the engine
    names one."""
    return ("forward", "backward") + (("param_grad",) if first.get("param_grad") else ())


def pair_label(pair: dict) -> str:
    a, b = pair.get("a_name"), pair.get("b_name")
    return str(b) if a == b else f"{a} ↔ {b}"


def introduced(pair: dict) -> str:
    """Whether the error starts at this pair or is inherited, in words ('' when unknown).

    The engine gives ``{"verdict", "previous", "previous_rel_l2", "rel_l2", "growth", "reason"}``.
    """
    value = pair.get("introduced")
    if value is None:
        return ""
    if isinstance(value, bool):
        return "introduced here" if value else "inherited from an earlier layer"
    if not isinstance(value, dict):
        return str(value)
    words = str(value.get("verdict") or "")
    if value.get("reason"):
        words += (": " if words else "") + str(value["reason"])
    previous, growth = value.get("previous"), value.get("growth")
    if previous is not None:
        detail = f"rel_l2 {number(value.get('previous_rel_l2'))} at {previous}"
        detail += f" → {number(value.get('rel_l2'))} here"
        if isinstance(growth, (int, float)) and not isinstance(growth, bool):
            detail += f", ×{number(float(growth))}"
        words += f" ({detail})"
    return words.strip()


def tolerance(pair: dict) -> str:
    tol = pair.get("tolerance") or {}
    if not tol:
        return "-"
    if tol.get("rule") == "fp64":
        stats = pair.get("stats") or {}
        return (f"fp64: rmse(a, G) {number(stats.get('err_a_fp64'))} <= {number(tol.get('k'))} x "
                f"rmse(b, G) {number(stats.get('err_b_fp64'))} + {number(tol.get('floor'))}")
    return f"rtol {number(tol.get('rtol'))}, atol {number(tol.get('atol'))}"


def match(pair: dict) -> str:
    how = pair.get("match")
    if not how:
        return "-"
    confidence = pair.get("confidence")
    if isinstance(confidence, (int, float)) and not isinstance(confidence, bool) and confidence < 1:
        return f"{how} ({confidence:.2f})"
    return str(how)


def local(pair: dict) -> str:
    """A replayed pair's local verdict: ``diverged (rel_l2 0.0101)``; '' where not replayed."""
    found = pair.get("local") or {}
    if not found:
        return ""
    status = str(found.get("status", ""))
    if status.startswith("skipped"):
        return status
    return f"{status} (rel_l2 {number(found.get('rel_l2'))})"


def replay_summary(report: dict) -> str:
    """``24 pairs run on the reference's inputs, 2 skipped (2: why)``."""
    summary = report.get("replay") or {}
    out = (f"{summary.get('replayed', 0)} pairs run on the reference's inputs, "
           f"{summary.get('skipped', 0)} skipped")
    why = summary.get("skipped_why") or {}
    if why:
        out += " (" + "; ".join(f"{n}: {reason}" for reason, n in why.items()) + ")"
    return out


def by_layers(cause) -> str:
    """The layer(s) whose backward gave a dL/d(input) root cause (``by``): ``L`` or ``A + B``."""
    by = cause.get("by") or ""
    return by if isinstance(by, str) else " + ".join(by)
