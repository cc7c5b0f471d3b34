"""The check report on a terminal: a rich table when rich is there, plain lines otherwise."""
from __future__ import annotations

from .common import fmt

MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def plain_text(report) -> str:
    lines = [f"tracediff check {report.path}".rstrip()]
    for c in report.checks:
        where = f" [{', '.join(c.layers[:3])}{', ...' if len(c.layers) > 3 else ''}]" if c.layers and c.status in ("warn", "fail") else ""
        lines.append(f"{MARK[c.status]:4}  {c.id:18} {c.message}{where}")
        if c.advice and c.status in ("warn", "fail"):
            lines.append(f"{'':24}advice: {c.advice}")
    lines.append(_summary(report))
    return "\n".join(lines)


def _summary(report) -> str:
    counts = {s: len(report.by_status(s)) for s in ("fail", "warn", "pass", "skip")}
    verdict = "FAILED" if not report.ok else "ok"
    return f"{verdict}: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def print_report(report, file=None) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but a plain report beats an import error
        print(plain_text(report), file=file)
        return
    console = Console(file=file, highlight=False, soft_wrap=False)
    table = Table(title=f"tracediff check {report.path}", show_lines=True, expand=True)
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("value", no_wrap=True, max_width=10)
    table.add_column("finding", ratio=4, overflow="fold")
    table.add_column("layers", ratio=1, overflow="fold")
    for c in report.checks:
        finding = _escape(c.message)
        if c.advice and c.status in ("warn", "fail"):
            finding += f"\n[italic]advice: {_escape(c.advice)}[/italic]"
        layers = ", ".join(c.layers[:3]) + (", ..." if len(c.layers) > 3 else "")
        table.add_row(f"[{STYLE[c.status]}]{MARK[c.status]}[/]", c.id, _escape(fmt(c.value)), finding,
                      _escape(layers) if c.status in ("warn", "fail") else "")
    console.print(table)
    console.print(_summary(report), style="bold red" if not report.ok else "green")


def _escape(text: str) -> str:
    from rich.markup import escape
    return escape(text)
