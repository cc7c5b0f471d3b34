"""The terminal report (rich): summary line, the pairs around each first divergence with the
divergence marked, its hint, and the unmatched names."""
from __future__ import annotations

import sys

from ..report.common import by_layers, missing_text, number, position_text
from .steps import terminal_tables as step_tables

STATUS_STYLE = {"ok": "green", "diverged": "bold red", "shape_mismatch": "bold magenta",
                "dtype_mismatch": "bold magenta", "nonfinite": "bold red", "layout": "yellow"}
MAX_LISTED = 20
PLAIN_WIDTH = 160   # the width the rich path gives a console that is not a terminal


def summary_line(report) -> str:
    fd = report.first_divergence
    n = len(report.pairs)
    if report.ok:
        text = f"OK: {n} aligned pairs match within tolerance"
    else:
        parts = []
        if fd.forward:
            parts.append(f"forward at {fd.forward.label()} ({fd.forward.status})")
        if fd.backward:
            parts.append(f"backward at {fd.backward.label()} ({fd.backward.status})")
        if fd.param_grad and not (fd.forward or fd.backward):
            parts.append(f"parameter gradient {fd.param_grad.label()}")
        others = len(report.diverged_pairs)
        if not parts and report.diverged_pairs:  # a loss, input or parameter pair: name it
            first = report.diverged_pairs[0]
            parts.append(f"{first.kind} at {first.label()} ({first.status})")
        where = position_text(fd.first) if fd.first is not None else ""
        text = (f"DIVERGED: first divergence {f'in {where}: ' if where else ''}"
                f"{'; '.join(parts) if parts else 'in parameters'} ({others} of {n} pairs diverge)")
    missing = getattr(report, "missing", None)
    if missing and not report.diverged_pairs:
        text = f"INCOMPLETE: {n} aligned pairs compared match within tolerance"
    unmatched = len(report.unmatched["a"]) + len(report.unmatched["b"])
    if unmatched:
        text += f"; {len(report.unmatched['a'])} record(s) of a and {len(report.unmatched['b'])} of b unmatched"
    if missing:
        text += f"; {missing_text(missing)}"
    return text


def render(report, console=None, context=3):
    if console is None and report.ok and not sys.stdout.isatty():
        lines = plain_ok_lines(report)
        if all(len(line) <= PLAIN_WIDTH for line in lines):  # rich would not wrap them either
            sys.stdout.write("".join(line + "\n" for line in lines))
            return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console.width = max(console.width, PLAIN_WIDTH)
    ok_style = "bold green" if report.ok else "bold red"
    console.print(Text(summary_line(report), style=ok_style))
    console.print(Text(_paths_line(report), style="dim"))
    for finding in report.findings:
        console.print(Text(f"finding ({finding['kind']}): {finding['message']}", style="bold yellow"))
    fd = report.first_divergence
    shown = False
    for kind, first in (("forward", fd.forward), ("backward", fd.backward), ("param_grad", fd.param_grad)):
        if first is None:
            continue
        if kind == "param_grad" and (fd.forward or fd.backward):
            continue
        rows = [p for p in report.pairs if p.kind == kind and p.position == first.position]
        at = rows.index(first)
        window = rows[max(0, at - context):at + context + 1]
        table = Table(title=Text(f"{kind} pairs around the first divergence"), title_justify="left")
        for column in ("", "a", "b", "status", "max_abs", "rel_l2", "cosine", "mismatch", "rtol", "match"):
            table.add_column(column, justify="right" if column in ("max_abs", "rel_l2", "cosine",
                                                                  "mismatch", "rtol") else "left")
        for p in window:
            marker = ">>" if p is first else ""
            s = p.stats or {}
            table.add_row(marker, Text(_name(p.a_name, p.a_call)), Text(_name(p.b_name, p.b_call)),
                          Text(p.status, style=STATUS_STYLE.get(p.status, "")), number(s.get("max_abs")),
                          number(s.get("rel_l2")), number(s.get("cosine")), number(s.get("mismatch_fraction")),
                          number(p.tolerance.get("rtol")), p.match,
                          style="bold" if p is first else None)
        console.print(table)
        if first.hint:
            console.print(Text(f"hint: {first.hint}", style="yellow"))
        if first.introduced:
            intro = first.introduced
            console.print(Text(f"{intro['verdict']}: {intro.get('reason', '')}", style="cyan"))
        shown = True
    other = [p for p in report.diverged_pairs if p.kind in ("param", "param_grad", "input", "loss")]
    if other:
        console.print(Text(f"diverged {', '.join(sorted({p.kind for p in other}))} pairs:", style="bold"))
        for p in other[:MAX_LISTED]:
            hint = f": {p.hint}" if p.hint else ""
            where = position_text(p)
            console.print(Text(f"  {p.kind} {p.label()}{f' at {where}' if where else ''} {p.status} "
                               f"(rel_l2 {number((p.stats or {}).get('rel_l2'))}){hint}"))
        if len(other) > MAX_LISTED:
            console.print(Text(f"  ... and {len(other) - MAX_LISTED} more"))
    if not shown and report.ok:
        console.print(Text(_compared_line(report), style="dim"))
    for table in step_tables(report):
        console.print(table)
    for line in replay_lines(report):
        console.print(Text(line, style="bold red" if report.root_causes else "cyan"))
    for line in _unmatched_lines(report):
        console.print(Text(line, style="magenta"))


def plain_ok_lines(report) -> list:
    """What the rich path prints for a report without divergences, unstyled: the usual answer
    to a script or CI job, which need not wait for rich's import (~50 ms)."""
    return [summary_line(report), _paths_line(report),
            *(f"finding ({f['kind']}): {f['message']}" for f in report.findings),
            _compared_line(report), *replay_lines(report), *_unmatched_lines(report)]


def replay_lines(report) -> list:
    """The root causes replay found (none without replay), worst first."""
    summary = report.replay_summary()
    if summary is None:
        return []
    head = (f"replay: {summary['replayed']} pairs run on the reference's inputs, "
            f"{summary['skipped']} skipped")
    if summary["skipped_why"]:
        head += " (" + "; ".join(f"{n}: {why}" for why, n in summary["skipped_why"].items()) + ")"
    causes = report.root_causes or []
    if not causes:
        return [head, "no root cause: every replayed layer matches on the reference's inputs"]
    lines = [head, f"{len(causes)} root cause(s), worst first:"]
    for cause in causes[:MAX_LISTED]:
        a, b = cause["a_name"], cause["b_name"]
        hint = f": {cause['hint']}" if cause.get("hint") else ""
        by = f" by {by_layers(cause)}" if cause.get("by") else ""
        lines.append(f"  {cause['kind']} {b if a == b else f'{a} <-> {b}'}{by} "
                     f"local rel_l2 {number(cause['local_rel_l2'])}{hint}")
    return lines


def _paths_line(report) -> str:
    return (f"a = {report.a['path']} ({report.a['framework']})   "
            f"b = {report.b['path']} ({report.b['framework']}, reference)")


def _compared_line(report) -> str:
    return f"{len(report.pairs)} pairs compared; largest rel_l2 {number(_largest(report))}"


def _unmatched_lines(report) -> list:
    lines = []
    for side in ("a", "b"):
        names = report.unmatched[side]
        if names:
            listed = ", ".join(names[:MAX_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")
            lines.append(f"unmatched in {side}: {listed}")
    return lines


def _name(name, call):
    return name + (f"#{call}" if call else "")


def _largest(report):
    values = [p.stats.get("rel_l2") for p in report.pairs if p.stats and p.stats.get("rel_l2") is not None]
    return max(values) if values else None
