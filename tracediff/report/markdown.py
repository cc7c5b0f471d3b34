"""The diff report as Markdown, for CI summaries (GitHub's $GITHUB_STEP_SUMMARY and the like).

Names are arbitrary unicode: they go into code spans (fenced with more backticks than they
contain), free text has its HTML characters escaped, and table cells escape ``|``.
"""
from __future__ import annotations

import re

from . import common, steps

TABLE_LIMIT = 50


def render_markdown(report: dict, *, limit: int = TABLE_LIMIT) -> str:
    """Summary, first divergence forward and backward (statistics, hint, origin), a table of
    the pairs (diverged first, at most ``limit`` rows) and the unmatched records."""
    dims = report.get("dims") or {}
    lines = [f"## tracediff: {'✅' if report.get('ok') else '❌'} {text(common.summary(report))}", ""]
    a, b = report.get("a") or {}, report.get("b") or {}
    lines.append(f"**a** (candidate): {code(a.get('path', '?'))} ({text(a.get('framework') or '?')}) · "
                 f"**b** (reference): {code(b.get('path', '?'))} ({text(b.get('framework') or '?')})")
    lines.append("")
    for finding in report.get("findings") or []:
        lines.append(f"- **finding** ({text(finding.get('kind', ''))}): {text(finding.get('message', ''))}")
    if report.get("findings"):
        lines.append("")
    lines += _first_divergence(report.get("first_divergence") or {}, dims)
    lines += steps.markdown_lines(report, code, text)
    lines += _root_causes(report)
    lines += _pairs_table(report.get("pairs") or [], dims, limit)
    lines += _unmatched(report.get("unmatched") or {})
    return "\n".join(lines).rstrip() + "\n"


def _first_divergence(first: dict, dims: dict) -> list:
    lines = ["### First divergence", ""]
    for direction in common.directions(first):
        pair = first.get(direction)
        if not pair:
            lines += [f"- **{direction}**: none", ""]
            continue
        stats = pair.get("stats") or {}
        names = code(pair.get("b_name"))
        if pair.get("a_name") != pair.get("b_name"):
            names = f"{code(pair.get('a_name'))} (a) ↔ {code(pair.get('b_name'))} (b)"
        lines.append(f"- **{direction}**: {names}, {text(pair.get('kind', ''))}, "
                     f"status **{text(pair.get('status', '?'))}**")
        shapes = f"shape a {code(common.shape(pair.get('shape_a'), dims))}"
        if pair.get("shape_b") != pair.get("shape_a"):
            shapes += f", shape b {code(common.shape(pair.get('shape_b'), dims))}"
        lines.append(f"  - {shapes}; tolerance {common.tolerance(pair)}")
        lines.append("  - " + ", ".join(f"{key} {common.number(stats.get(key))}"
                                        for key in ("max_abs", "max_rel", "mean_abs", "rel_l2",
                                                    "cosine", "mismatch_fraction")))
        origin = common.introduced(pair)
        if origin:
            lines.append(f"  - {text(origin)}")
        if pair.get("hint"):
            lines.append(f"  - hint: {text(pair['hint'])}")
        lines.append("")
    return lines


def _root_causes(report: dict) -> list:
    """Replay's root causes, worst first; nothing in a plain diff (``root_causes`` null)."""
    causes = report.get("root_causes")
    if causes is None:
        return []
    lines = ["### Root causes (replay)", "", text(common.replay_summary(report)), ""]
    if not causes:
        return lines + ["None: every replayed layer matches on the reference's inputs.", ""]
    for cause in causes:
        hint = f": {text(cause['hint'])}" if cause.get("hint") else ""
        by = f" by {text(common.by_layers(cause))}" if cause.get("by") else ""
        lines.append(f"- {text(cause.get('kind', ''))} {code(common.pair_label(cause))}{by}, "
                     f"local rel_l2 {common.number(cause.get('local_rel_l2'))}{hint}")
    return lines + [""]


def _pairs_table(pairs: list, dims: dict, limit: int) -> list:
    shown, left_out = common.pairs_diverged_first(pairs, limit)
    lines = [f"### Pairs ({len(pairs)}, diverged first)", ""]
    if not pairs:
        return lines + ["No pairs were aligned.", ""]
    replayed = any(pair.get("local") for pair in pairs)
    lines.append("| kind | a | b | status | shape a | shape b | max_abs | max_rel | rel_l2 | cosine | match |"
                 + (" local |" if replayed else ""))
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if replayed else ""))
    for pair in shown:
        stats = pair.get("stats") or {}
        cells = [text(pair.get("kind", "")), code(pair.get("a_name")), code(pair.get("b_name")),
                 text(pair.get("status", "")),
                 code(common.shape(pair.get("shape_a"), dims)), code(common.shape(pair.get("shape_b"), dims))]
        cells += [common.number(stats.get(key)) for key in common.STAT_COLUMNS]
        cells.append(text(common.match(pair)))
        if replayed:
            cells.append(text(common.local(pair)))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if left_out:
        lines.append("")
        lines.append(f"_… {left_out} more pairs not shown (all in the JSON report)._")
    lines.append("")
    return lines


def _unmatched(unmatched: dict) -> list:
    lines = ["### Unmatched records", ""]
    a, b = unmatched.get("a") or [], unmatched.get("b") or []
    if not a and not b:
        return lines + ["Every record was paired.", ""]
    for side, names in (("a", a), ("b", b)):
        listed = ", ".join(code(n) for n in names) if names else "none"
        lines.append(f"- only in **{side}** ({len(names)}): {listed}")
    lines.append("")
    return lines


def code(value) -> str:
    """``value`` as an inline code span that no character of it can break out of."""
    s = " ".join(str(value).splitlines()) if value is not None else "-"
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def text(value) -> str:
    """Free text with HTML characters as entities, on one line."""
    s = " ".join(str(value).splitlines())
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
