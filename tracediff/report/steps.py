"""The per-step summary of a report (``report["steps"]``) for people: where a divergence lies
(``step 3``, ``decode step 1``, ``batch 2``), a terminal table of each step and of the error of
each diverging layer at each step, and the HTML heat map of the error per layer per step."""
from __future__ import annotations

import math

from .common import esc, number, position_text

MAX_LAYERS = 20        # terminal rows: the layers that diverge somewhere, first first
MAX_COLUMNS = 12       # terminal step columns: around the first divergent step
HEATMAP_LAYERS = 400
HEATMAP_COLUMNS = 200


def _short(column) -> str:
    return position_text(column).replace("decode step ", "d").replace("step ", "s").replace("batch ", "b")


def terminal_tables(report) -> list:
    """Rich tables: the steps (pairs, diverged, first divergent layer) and the error (rel_l2) of
    the layers that diverge, per step; [] for a report of one step."""
    summary = report.steps
    if not summary:
        return []
    from rich.table import Table
    from rich.text import Text

    columns = summary["columns"]
    steps = Table(title=Text(f"per step ({len(columns)})"), title_justify="left")
    for name in ("", "pairs", "diverged", "first divergence"):
        steps.add_column(name, justify="right" if name in ("pairs", "diverged") else "left")
    first_bad = next((i for i, c in enumerate(columns) if c["diverged"]), None)
    shown = _window(len(columns), first_bad)
    for i in shown:
        c = columns[i]
        steps.add_row(position_text(c) or "-", str(c["pairs"]), str(c["diverged"]),
                      Text(f"{c['first_kind']} {c['first']}" if c["first"] else "",
                           style="bold red" if c["first"] else ""))
    tables = [steps]
    layers = [layer for layer in summary["layers"] if layer["diverged"]][:MAX_LAYERS]
    if layers:
        errors = Table(title=Text("rel_l2 per layer per step (diverging layers; * diverged)"),
                       title_justify="left")
        errors.add_column("layer")
        for i in shown:
            errors.add_column(_short(columns[i]) or "-", justify="right")
        worst = any(layer.get("worst") for layer in layers)
        if worst:
            errors.add_column("worst batch/row", justify="right")
        for layer in layers:
            cells = [number(layer["rel_l2"][i]) + ("*" if i in layer["diverged"] else "") for i in shown]
            row = [Text(f"{layer['kind']} {layer['label']}"), *cells]
            if worst:
                w = layer.get("worst")
                row.append(f"{w['batch_index']}/{w['row']}" if w else "-")
            errors.add_row(*row)
        tables.append(errors)
    return tables


def markdown_lines(report: dict, code, text) -> list:
    """The same two tables in Markdown (``code``, ``text``: the Markdown renderer's escapes);
    [] for a report of one step."""
    summary = report.get("steps")
    if not summary:
        return []
    columns = summary["columns"]
    first_bad = next((i for i, c in enumerate(columns) if c["diverged"]), None)
    shown = _window(len(columns), first_bad)
    lines = [f"### Per step ({len(columns)})", "", "| | pairs | diverged | first divergence |",
             "|---|---:|---:|---|"]
    for i in shown:
        c = columns[i]
        first = f"{text(c['first_kind'])} {code(c['first'])}" if c["first"] else ""
        lines.append(f"| {text(position_text(c) or '-')} | {c['pairs']} | {c['diverged']} | {first} |")
    lines.append("")
    layers = [layer for layer in summary["layers"] if layer["diverged"]][:MAX_LAYERS]
    if layers:
        worst = any(layer.get("worst") for layer in layers)
        head = ["layer", *(_short(columns[i]) or "-" for i in shown)] + (["worst batch/row"] if worst else [])
        lines += ["rel_l2 per layer per step (diverging layers; * diverged)", "",
                  "| " + " | ".join(text(h) for h in head) + " |",
                  "|---" + "|---:" * (len(head) - 1) + "|"]
        for layer in layers:
            cells = [number(layer["rel_l2"][i]) + ("\\*" if i in layer["diverged"] else "") for i in shown]
            if worst:
                w = layer.get("worst")
                cells.append(f"{w['batch_index']}/{w['row']}" if w else "-")
            lines.append(f"| {text(layer['kind'])} {code(layer['label'])} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _window(n, first_bad) -> list:
    if n <= MAX_COLUMNS:
        return list(range(n))
    start = max(0, min((first_bad or 0) - 2, n - MAX_COLUMNS))
    return list(range(start, start + MAX_COLUMNS))


def html_heatmap(report: dict) -> str:
    """``<section id="step-heatmap">``: a table of rel_l2, one row per layer, one column per
    step, each cell coloured by its error on a log scale (red border: diverged); "" for a
    report of one step."""
    summary = report.get("steps")
    if not summary:
        return ""
    columns = summary["columns"][:HEATMAP_COLUMNS]
    layers = summary["layers"][:HEATMAP_LAYERS]
    head = "<tr><th>layer</th>" + "".join(
        f'<th title="{esc(position_text(c))}">{esc(_short(c) or "-")}</th>' for c in columns)
    batched = any(layer.get("worst") for layer in layers)
    head += ("<th>worst batch / row</th>" if batched else "") + "</tr>"
    rows = []
    for layer in layers:
        cells = []
        for i, _ in enumerate(columns):
            value = layer["rel_l2"][i]
            bad = i in layer["diverged"]
            cells.append(f'<td class="heat{" bad" if bad else ""}" style="background:{_colour(value)}"'
                         f' title="{esc(number(value))}">{esc(number(value))}</td>')
        extra = ""
        if batched:
            w = layer.get("worst")
            extra = f"<td>{esc(w['batch_index'])} / {esc(w['row'])}</td>" if w else "<td>-</td>"
        rows.append(f"<tr><td>{esc(layer['kind'])} {esc(layer['label'])}</td>{''.join(cells)}{extra}</tr>")
    more = ""
    if len(summary["layers"]) > len(layers) or len(summary["columns"]) > len(columns):
        more = f'<p class="note">first {len(layers)} layers and {len(columns)} steps shown</p>'
    return ('<section id="step-heatmap"><h2>Error per layer per step</h2>'
            '<p class="note">rel_l2 (‖a−b‖/‖b‖) of each layer at each step, decode step or batch; '
            'darker: larger error (log scale, 1e-8 to 1); red border: diverged.</p>'
            '<style>td.heat{font-size:11px;text-align:right} td.heat.bad{outline:2px solid #c00}</style>'
            f'<table id="step-table">{head}{"".join(rows)}</table>{more}</section>')


def _colour(value) -> str:
    if value is None:
        return "#f4f4f4"
    level = 0.0 if value <= 0 else min(1.0, max(0.0, (math.log10(value) + 8) / 8))
    light = int(round(96 - 50 * level))
    return f"hsl(10, 80%, {light}%)"
