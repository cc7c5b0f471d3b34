"""The diff report as ONE self-contained HTML file: no network, no external script or style.

Text and table are rendered here, escaped. The two charts (the per-layer error on a log scale,
forward and backward series, and the histogram of the first divergence's error) are drawn in
the browser by an inline script into inline SVG, from a JSON block whose ``<``, ``>`` and ``&``
are \\u-escaped so that no name can close the script element; the script inserts names only
through ``textContent``. When it has drawn, it sets ``data-rendered="true"`` on ``<body>``.
The graph panel (the traced dataflow, coloured by error) is ``html_graph.py``'s: its section,
its data in the same JSON block and its script ahead of the plots' in the same element.
"""
from __future__ import annotations

import json
import math

from . import common, steps
from .common import esc
from .html_graph import GRAPH_CSS, GRAPH_SCRIPT, graph_data, graph_section

TABLE_LIMIT = 2000
PLOT_METRIC = "rel_l2"


def render_html(report: dict, *, title: str = "tracediff report", limit: int = TABLE_LIMIT) -> str:
    dims = report.get("dims") or {}
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="summary {"ok" if report.get("ok") else "bad"}" id="summary">'
        f"{esc(common.summary(report))}</p>",
        _sides(report),
        _findings(report.get("findings") or []),
        graph_section(report),
        '<section><h2>Error per layer</h2>'
        f'<p class="note">{esc(_metric_note())}</p>'
        '<svg id="error-plot" width="900" height="380" role="img" '
        'aria-label="per-layer error, log scale"></svg></section>',
        '<section><h2>Error histogram of the first divergence</h2>'
        '<svg id="histogram" width="900" height="240" role="img" '
        'aria-label="histogram of the first divergence error"></svg></section>',
        _first_divergence(report.get("first_divergence") or {}, dims),
        steps.html_heatmap(report),
        _root_causes(report),
        _pairs_table(report.get("pairs") or [], dims, limit),
        _unmatched(report.get("unmatched") or {}),
    ]
    payload = {**_plot_data(report), "graph": graph_data(report)}
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    data = data.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{_CSS}{GRAPH_CSS}</style></head>\n"
        '<body data-rendered="false">\n' + "\n".join(body) + "\n"
        f'<script type="application/json" id="tracediff-data">{data}</script>\n'
        f"<script>{GRAPH_SCRIPT}{_SCRIPT}</script>\n</body></html>\n"
    )


def _metric_note():
    return (f"{PLOT_METRIC} (relative L2 error, ‖a−b‖/‖b‖) per aligned pair, log scale, layers "
            "in forward execution order: forward outputs, and the backward gradients dL/d each "
            "output (read right to left: from the loss towards the input); red points diverged.")


def _sides(report):
    rows = []
    for side, role in (("a", "candidate"), ("b", "reference")):
        info = report.get(side) or {}
        rows.append(f"<li><b>{side}</b> ({role}): <code>{esc(info.get('path', '?'))}</code> "
                    f"({esc(info.get('framework') or '?')})</li>")
    return "<ul class=\"sides\">" + "".join(rows) + "</ul>"


def _findings(findings):
    """What makes every layer after it differ (inputs, settings): shown before any layer."""
    if not findings:
        return ""
    items = "".join(f"<li><b>{esc(f.get('kind'))}</b>: {esc(f.get('message'))}</li>" for f in findings)
    return f'<section id="findings"><h2>Findings</h2><ul>{items}</ul></section>'


def _first_divergence(first, dims):
    parts = ['<section id="first-divergence"><h2>First divergence</h2>']
    for direction in common.directions(first):
        pair = first.get(direction)
        if not pair:
            parts.append(f'<div class="fd" data-direction="{direction}"><h3>{direction}</h3>'
                         "<p>none</p></div>")
            continue
        stats = pair.get("stats") or {}
        rows = [("a", pair.get("a_name")), ("b", pair.get("b_name")), ("kind", pair.get("kind")),
                ("status", pair.get("status")),
                ("shape a", common.shape(pair.get("shape_a"), dims)),
                ("shape b", common.shape(pair.get("shape_b"), dims)),
                ("tolerance", common.tolerance(pair))]
        rows += [(key, common.number(stats.get(key))) for key in
                 ("max_abs", "max_rel", "mean_abs", "rmse", "rel_l2", "cosine", "mismatch_fraction")]
        origin = common.introduced(pair)
        if origin:
            rows.append(("origin", origin))
        if pair.get("hint"):
            rows.append(("hint", pair["hint"]))
        table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
        parts.append(f'<div class="fd" data-direction="{direction}"><h3>{direction}: '
                     f"<code>{esc(common.pair_label(pair))}</code></h3><table>{table}</table>"
                     + _worst(pair) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def _worst(pair):
    worst = pair.get("worst") or []
    if not worst:
        return ""
    rows = "".join(f"<tr><td>{esc(w.get('index'))}</td><td>{esc(common.number(w.get('a')))}</td>"
                   f"<td>{esc(common.number(w.get('b')))}</td><td>{esc(common.number(w.get('diff')))}</td></tr>"
                   for w in worst[:5])
    return ("<table class=\"worst\"><caption>largest differences</caption><tr><th>index</th>"
            f"<th>a</th><th>b</th><th>|a−b|</th></tr>{rows}</table>")


def _root_causes(report):
    causes = report.get("root_causes")
    if causes is None:
        return ""
    items = "".join(
        f"<li>{esc(c.get('kind'))} <code>{esc(common.pair_label(c))}</code>, local rel_l2 "
        f"{esc(common.number(c.get('local_rel_l2')))}{': ' + esc(c['hint']) if c.get('hint') else ''}</li>"
        for c in causes) or "<li>none: every replayed layer matches on the reference's inputs</li>"
    return (f'<section id="root-causes"><h2>Root causes (replay)</h2>'
            f'<p class="note">{esc(common.replay_summary(report))}</p><ol>{items}</ol></section>')


def _pairs_table(pairs, dims, limit):
    shown, left_out = common.pairs_diverged_first(pairs, limit)
    replayed = any(pair.get("local") for pair in pairs)
    head = ("<tr><th>kind</th><th>a</th><th>b</th><th>status</th><th>shape a</th><th>shape b</th>"
            + "".join(f"<th>{esc(k)}</th>" for k in common.STAT_COLUMNS)
            + "<th>tolerance</th><th>match</th><th>hint</th>"
            + ("<th>local</th>" if replayed else "") + "</tr>")
    rows = []
    position = {id(pair): i for i, pair in enumerate(pairs)}   # the graph panel finds rows by it
    for pair in shown:
        stats = pair.get("stats") or {}
        status = str(pair.get("status", ""))
        cells = [pair.get("kind"), pair.get("a_name"), pair.get("b_name"), status,
                 common.shape(pair.get("shape_a"), dims), common.shape(pair.get("shape_b"), dims)]
        cells += [common.number(stats.get(k)) for k in common.STAT_COLUMNS]
        cells += [common.tolerance(pair), common.match(pair), pair.get("hint") or ""]
        if replayed:
            cells.append(common.local(pair))
        rows.append(f'<tr id="pair-{position[id(pair)]}" class="{"ok" if status == "ok" else "bad"}" '
                    f'data-status="{esc(status)}">'
                    + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    more = f"<p>{left_out} more pairs not shown (all in the JSON report).</p>" if left_out else ""
    return (f'<section><h2>Pairs ({len(pairs)}, diverged first)</h2>'
            f'<table id="pairs">{head}{"".join(rows)}</table>{more}</section>')


def _unmatched(unmatched):
    items = []
    for side in ("a", "b"):
        names = unmatched.get(side) or []
        listed = ", ".join(f"<code>{esc(n)}</code>" for n in names) or "none"
        items.append(f"<li>only in <b>{side}</b> ({len(names)}): {listed}</li>")
    return f'<section id="unmatched"><h2>Unmatched records</h2><ul>{"".join(items)}</ul></section>'


def _finite(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _plot_data(report):
    first = report.get("first_divergence") or {}
    causes = {(c.get("kind"), c.get("a_name"), c.get("b_name")) for c in report.get("root_causes") or []}
    series = {"forward": [], "backward": []}
    for pair in report.get("pairs") or []:
        kind = pair.get("kind")
        if kind in series:
            stats = pair.get("stats") or {}
            point = {"name": str(pair.get("b_name")), "a": str(pair.get("a_name")),
                     "status": str(pair.get("status")), "value": _finite(stats.get(PLOT_METRIC))}
            if (kind, pair.get("a_name"), pair.get("b_name")) in causes:
                point["cause"] = True
            series[kind].append(point)
    histogram = {}
    for direction, hist in (report.get("histogram") or {}).items():
        if isinstance(hist, dict) and hist.get("edges") and hist.get("counts"):
            # the engine bins log10|a-b| ("scale": "log10|a-b|"); plain edges are |a-b| itself
            histogram[str(direction)] = {
                "edges": [_finite(e) for e in hist["edges"]],
                "counts": [int(c) for c in hist["counts"]],
                "name": common.pair_label(first.get(direction) or {}) or str(hist.get("name", "")),
                "log10": str(hist.get("scale", "")).startswith("log10"),
                "exact": int(hist.get("exact") or 0)}
    # a backward point sits above its layer's forward point (dL/d that layer's output); a
    # backward record without a forward counterpart keeps its own position after them
    position = {p["name"]: i for i, p in enumerate(series["forward"])}
    extra = len(series["forward"])
    for point in series["forward"]:
        point["x"] = position[point["name"]]
    for point in series["backward"]:
        if point["name"] in position:
            point["x"] = position[point["name"]]
        else:
            point["x"], extra = extra, extra + 1
    marks = {}
    for direction in ("forward", "backward"):
        pair = first.get(direction)
        if pair:
            names = [(p["a"], p["name"]) for p in series[direction]]
            key = (str(pair.get("a_name")), str(pair.get("b_name")))
            marks[direction] = names.index(key) if key in names else None
    return {"metric": PLOT_METRIC, "series": series, "histogram": histogram, "first": marks}


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px} h3{font-size:15px}
.summary{font-size:16px;padding:8px 12px;border-radius:4px}
.summary.ok{background:#e6f4ea} .summary.bad{background:#fce8e6}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
tr.bad td{background:#fff3f1} code{background:#f3f3f3;padding:0 3px}
.fd{display:inline-block;vertical-align:top;margin-right:24px;max-width:560px} .note{color:#555;font-size:13px}
svg{background:#fafafa;border:1px solid #ddd;display:block} .worst{margin-top:8px}
"""

# Draws from the JSON block; every name reaches the page through textContent only.
_SCRIPT = r"""
(function () {
  var NS = "http://www.w3.org/2000/svg";
  var data = JSON.parse(document.getElementById("tracediff-data").textContent);
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function label(parent, x, y, text, anchor) {
    var t = el("text", {x: x, y: y, "font-size": 11, "text-anchor": anchor || "start"}, parent);
    t.textContent = text;
    return t;
  }
  function errorPlot(svg) {
    var W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
    var left = 60, right = 110, top = 14, bottom = 90;
    var colors = {forward: "#1f77b4", backward: "#ff7f0e"};
    var values = [], longest = 1;
    ["forward", "backward"].forEach(function (k) {
      var s = data.series[k] || [];
      s.forEach(function (p) { longest = Math.max(longest, p.x + 1); });
      s.forEach(function (p) { if (p.value !== null && p.value > 0) values.push(p.value); });
    });
    var lo = values.length ? Math.min.apply(null, values) : 1e-12;
    var hi = values.length ? Math.max.apply(null, values) : 1;
    var floor = lo / 10;
    var y0 = Math.floor(Math.log10(floor)), y1 = Math.ceil(Math.log10(hi));
    if (y1 <= y0) y1 = y0 + 1;
    function X(i) { return left + (longest > 1 ? i / (longest - 1) : 0.5) * (W - left - right); }
    function Y(v) {
      var lv = Math.log10(v !== null && v > 0 ? v : floor);
      return top + (y1 - lv) / (y1 - y0) * (H - top - bottom);
    }
    el("line", {x1: left, y1: top, x2: left, y2: H - bottom, stroke: "#888"}, svg);
    el("line", {x1: left, y1: H - bottom, x2: W - right, y2: H - bottom, stroke: "#888"}, svg);
    for (var e = y0; e <= y1; e++) {
      el("line", {x1: left, y1: Y(Math.pow(10, e)), x2: W - right, y2: Y(Math.pow(10, e)),
                  stroke: "#e4e4e4"}, svg);
      label(svg, left - 6, Y(Math.pow(10, e)) + 4, "1e" + e, "end");
    }
    label(svg, W - right, H - 6, "layers in forward execution order; backward: dL/d that layer's output", "end");
    var fwd = data.series.forward || [];
    if (fwd.length <= 40) {
      fwd.forEach(function (p, i) {
        var t = label(svg, X(i), H - bottom + 12, p.name.length > 18 ? p.name.slice(0, 17) + "\u2026" : p.name, "end");
        t.setAttribute("transform", "rotate(-35 " + X(i) + " " + (H - bottom + 12) + ")");
        t.setAttribute("class", "tick");
      });
    }
    ["forward", "backward"].forEach(function (k) {
      var j = (data.first || {})[k];
      if (j === null || j === undefined) return;
      var i = data.series[k][j].x;
      el("line", {x1: X(i), y1: top, x2: X(i), y2: H - bottom, stroke: "#d62728",
                  "stroke-dasharray": "4 3", "class": "first-" + k}, svg);
      var flip = X(i) > (left + W - right) / 2;  // keep labels right of the middle clear of the legend
      label(svg, flip ? X(i) - 4 : X(i) + 4, top + 10 + (k === "backward" ? 14 : 0),
            "first " + k + " divergence", flip ? "end" : "start");
    });
    var drawn = 0;
    ["forward", "backward"].forEach(function (k, row) {
      var s = data.series[k] || [];
      if (!s.length) return;
      var sorted = s.slice().sort(function (p, q) { return p.x - q.x; });
      var d = sorted.map(function (p, i) { return (i ? "L" : "M") + X(p.x).toFixed(1) + "," + Y(p.value).toFixed(1); });
      el("path", {d: d.join(" "), fill: "none", stroke: colors[k], "stroke-width": 2,
                  "class": "series", "data-series": k}, svg);
      s.forEach(function (p, i) {
        var c = el("circle", {cx: X(p.x), cy: Y(p.value), r: 4, "data-series": k,
                              fill: p.status === "ok" ? colors[k] : "#d62728"}, svg);
        var t = el("title", {}, c);
        t.textContent = k + " " + (p.a === p.name ? p.name : p.a + " \u2194 " + p.name) +
          ": " + (p.value === null ? "n/a" : p.value.toExponential(2)) + " (" + p.status + ")" +
          (p.cause ? ", a root cause" : "");
        if (p.cause) {
          el("circle", {cx: X(p.x), cy: Y(p.value), r: 8, fill: "none", stroke: "#d62728",
                        "stroke-width": 2, "class": "root-cause"}, svg);
        }
      });
      el("rect", {x: W - right + 12, y: top + row * 18, width: 12, height: 4, fill: colors[k]}, svg);
      label(svg, W - right + 28, top + row * 18 + 6, k + " (" + s.length + ")");
      drawn += s.length;
    });
    svg.setAttribute("data-points", String(drawn));
  }
  function histogram(svg) {
    var W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
    var left = 60, right = 20, top = 24, bottom = 34;
    var h = data.histogram.forward || data.histogram.backward;
    var which = data.histogram.forward ? "forward" : "backward";
    if (!h) { label(svg, 20, 30, "no divergence: nothing to histogram"); svg.setAttribute("data-bars", "0"); return; }
    var n = h.counts.length, max = Math.max.apply(null, h.counts.concat([1]));
    var bw = (W - left - right) / n;
    label(svg, left, 14, "|a\u2212b| at the first " + which + " divergence: " + h.name +
          (h.exact ? " (" + h.exact + " elements equal, not shown)" : ""));
    function tick(v) {
      if (v === null) return "?";
      return h.log10 ? "1e" + (Math.round(v * 100) / 100) : Number(v).toExponential(1);
    }
    h.counts.forEach(function (c, i) {
      var bh = c / max * (H - top - bottom);
      var r = el("rect", {x: left + i * bw + 1, y: H - bottom - bh, width: Math.max(1, bw - 2),
                          height: bh, fill: "#d62728", "class": "bar"}, svg);
      var t = el("title", {}, r);
      t.textContent = "|a\u2212b| in [" + tick(h.edges[i]) + ", " + tick(h.edges[i + 1]) + "): " + c;
    });
    el("line", {x1: left, y1: H - bottom, x2: W - right, y2: H - bottom, stroke: "#888"}, svg);
    [0, n].forEach(function (i) {
      var v = h.edges[i];
      label(svg, left + i * bw, H - bottom + 14, tick(v), i ? "end" : "start");
    });
    label(svg, 8, top + 10, String(max));
    svg.setAttribute("data-bars", String(n));
  }
  errorPlot(document.getElementById("error-plot"));
  histogram(document.getElementById("histogram"));
  document.body.setAttribute("data-rendered", "true");
})();
"""
