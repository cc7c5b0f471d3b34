"""The failure message of a golden trace that no longer matches: what a person needs to act."""
from __future__ import annotations

WORST_ROWS = 8          # rows of the worst-elements table per diverging record
LISTED = 5              # names listed before "and N more"


def mismatch(report, golden_path, obtained_path, environment, regenerated=False) -> str:
    diverged = report.diverged_pairs
    what = f"{_count(diverged, 'record')} diverged" if diverged else "the records differ"
    lines = [f"golden trace {golden_path} does not match this run ({what})"]
    first = report.first_divergence
    for which in ("forward", "backward"):
        pair = getattr(first, which)
        if pair is not None:
            lines += _pair_block(f"first diverging {which}", pair)
    shown = [first.forward, first.backward]
    if first.forward is None and first.backward is None:
        # Activations and their gradients match: a parameter or its gradient is what moved.
        pair = first.param_grad or next(iter(report.diverged_pairs), None)
        if pair is not None:
            lines += _pair_block(f"first diverging {pair.kind}", pair)
            shown.append(pair)
    others = _others(report, shown)
    if others:
        lines.append(f"also diverged: {others}")
    lines += unmatched_lines(report)
    if environment:
        lines.append("environment differs from the golden trace:")
        lines += [f"  {line}" for line in environment]
    lines.append(f"obtained trace kept at {obtained_path}; whole report: "
                 f"tracediff diff {obtained_path} {golden_path}")
    lines.append(_closing(golden_path, regenerated))
    return "\n".join(lines)


def uncomparable(golden_path, obtained_path, problem, regenerated=False) -> str:
    return "\n".join([f"golden trace {golden_path} cannot be compared with this run: {problem}",
                      f"obtained trace kept at {obtained_path}", _closing(golden_path, regenerated)])


def _closing(golden_path, regenerated) -> str:
    if regenerated:
        return (f"golden trace rewritten from this run (--tracediff-regen): review and commit "
                f"{golden_path}")
    return "if the change is intended, rewrite it with pytest --tracediff-regen"


def unmatched_lines(report) -> list:
    lines = []
    for side, label in (("a", "only in this run"), ("b", "only in the golden trace")):
        names = report.unmatched_records.get(side) or []
        if names:
            listed = [f"{r['kind']} {r['name']}" for r in names]
            lines.append(f"records {label}: {_names(listed)}")
    return lines


def _pair_block(title, pair) -> list:
    s = pair.stats or {}
    dtype = pair.dtype_b if pair.dtype_a == pair.dtype_b else f"{pair.dtype_a} (golden {pair.dtype_b})"
    shape = pair.shape_a if pair.shape_a == pair.shape_b else f"{pair.shape_a} (golden {pair.shape_b})"
    verdict = (pair.introduced or {}).get("verdict")
    lines = [f"{title}: {pair.label()} {pair.status}"
             + (f", {verdict}" if verdict else "") + f" — {dtype} {shape}"]
    numel = s.get("numel")
    fraction = s.get("mismatch_fraction")
    mismatched = (f"{round(fraction * numel)} of {numel} elements" if numel and fraction is not None
                  else _g(fraction))
    lines.append(f"  max_abs {_g(s.get('max_abs'))}  max_rel {_g(s.get('max_rel'))}  "
                 f"rel_l2 {_g(s.get('rel_l2'))}  cosine {_g(s.get('cosine'))}  "
                 f"mismatched {mismatched}" + ("  (sampled: stats-only trace)" if s.get("sampled") else ""))
    if pair.hint:
        lines.append(f"  hint: {pair.hint}")
    tol = pair.tolerance or {}
    source = tol.get("source", "")
    grown = f", grown with depth {tol.get('depth')}" if source == "default" else ""
    lines.append(f"  tolerance: rtol {_g(tol.get('rtol'))} atol {_g(tol.get('atol'))} "
                 f"({_SOURCES.get(source, source)}{grown}); an element passes when "
                 f"|obtained - expected| <= atol + rtol * {_expected(tol.get('scale', '|b|'))}")
    lines += _worst_table(pair.worst)
    return lines


def _expected(scale: str) -> str:
    return scale.replace("|b|", "|expected|").replace("(b)", "(expected)")


_SOURCES = {"default": "dtype default", "cli": "rtol/atol given", "file": "per_layer"}


def _worst_table(worst) -> list:
    rows = [(str(tuple(w["index"])), _v(w["a"]), _v(w["b"]), _g(w["diff"]))
            for w in (worst or [])[:WORST_ROWS]]
    if not rows:
        return []
    header = ("index", "obtained", "expected", "difference")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    lines = [f"  worst elements ({len(rows)} shown):"]
    for row in [header] + rows:
        lines.append("    " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return lines


def _others(report, shown) -> str:
    rest = [f"{p.kind} {p.label()}" for p in report.diverged_pairs
            if not any(p is pair for pair in shown)]
    return _names(rest) if rest else ""


def _names(items) -> str:
    head = ", ".join(items[:LISTED])
    return head if len(items) <= LISTED else f"{head} and {len(items) - LISTED} more"


def _count(items, noun) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _g(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _v(value) -> str:
    if isinstance(value, float):
        return f"{value:.7g}"
    return str(value)
