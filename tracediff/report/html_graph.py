"""The HTML report's graph panel: the traced dataflow (the report's ``graph`` block, from the
records' meta ``inputs``) drawn by an inline script into inline SVG.

Nodes are coloured by their forward pair's rel_l2 on a log scale; the first divergences and
the root causes are marked. Records are grouped by module (their names' ``.``/``/`` prefixes):
the page opens with groups collapsed until at most ``VISIBLE_LIMIT`` boxes show, a click on a
group expands it, a click on a record shows its pair table rows. The layout is layered in the
browser (each box one layer below the deepest box it consumes, execution order breaking ties).
"""
from __future__ import annotations

import math
import re

from . import common

VISIBLE_LIMIT = 60        # boxes shown when the page opens; groups beyond it stay collapsed
_SEPARATOR = re.compile(r"([./])")
ROOT = ("<root>",)        # the whole model's output records (docs/conventions.md)


def graph_section(report: dict) -> str:
    graph = report.get("graph")
    if not graph or not graph.get("nodes"):
        return ""
    side = graph.get("side", "b")
    whose = "reference (b)" if side == "b" else "candidate (a)"
    how = ("its records' declared inputs" if graph.get("dataflow") == "declared" else
           "execution order (the trace declares no dataflow)")
    return (
        '<section id="graph-panel"><h2>Dataflow graph</h2>'
        f'<p class="note">The {whose} trace\'s records, drawn from {how}. Colour: the forward '
        f"pair's rel_l2 on a log scale (grey: not aligned); a collapsed module shows its worst "
        "record and how many it holds. Red outline: diverged; <b>1st</b>: the first divergence; "
        "<b>RC</b>: a root cause (replay). Click a module to expand it, a record for its pairs; "
        "find a record by (part of) its name."
        "</p><div class=\"graph-tools\"><button type=\"button\" id=\"graph-expand-all\">expand all"
        "</button> <button type=\"button\" id=\"graph-collapse\">collapse</button> "
        '<input id="graph-find" type="search" placeholder="find a record by name" size="28"> '
        '<span id="graph-found" class="note"></span> '
        '<svg id="graph-legend" width="330" height="26" aria-label="colour scale"></svg></div>'
        '<div id="graph-scroll"><svg id="graph" width="10" height="10" role="img" '
        'aria-label="dataflow graph coloured by error" data-drawn="false"></svg></div>'
        '<div id="graph-detail"></div></section>')


def graph_data(report: dict) -> dict | None:
    """What the graph script draws: nodes (``n`` name, ``c`` call, ``k`` kind, ``g`` group,
    ``v`` forward rel_l2, ``s`` status, ``bad`` diverged, ``rows`` indices into the report's
    pairs, ``marks``), module groups (``label``, ``parent``, ``first`` node, ``members``, and
    over their records: ``v`` the worst, ``bad`` how many diverged, ``marks``) and edges."""
    graph = report.get("graph")
    if not graph or not graph.get("nodes"):
        return None
    side = "a" if graph.get("side") == "a" else "b"
    pairs = report.get("pairs") or []
    rows = {}
    for i, pair in enumerate(pairs):
        same_step = pair.get("step", graph.get("step")) == graph.get("step")
        if pair.get("kind") in ("forward", "backward") and same_step:
            rows.setdefault((pair.get(f"{side}_name"), pair.get(f"{side}_call", 0)), []).append(i)
    nodes = []
    for node in graph["nodes"]:
        found = rows.get((node["name"], node["call"]), []) if node["kind"] == "forward" else []
        forward = next((pairs[i] for i in found if pairs[i].get("kind") == "forward"), None)
        nodes.append({"n": str(node["name"]), "c": node["call"], "k": node["kind"], "g": -1,
                      "v": _value(forward), "s": forward.get("status") if forward else None,
                      "bad": any(common.is_diverged(pairs[i]) for i in found),
                      "rows": found, "marks": []})
    _mark(nodes, report, side)
    groups = _group(nodes)
    edges = [[int(s), int(t)] for s, t in graph.get("edges") or []
             if 0 <= s < len(nodes) and 0 <= t < len(nodes)]
    return {"side": side, "dataflow": graph.get("dataflow"), "limit": VISIBLE_LIMIT,
            "nodes": nodes, "groups": groups, "edges": edges}


def _value(pair):
    if not pair:
        return None
    value = (pair.get("stats") or {}).get("rel_l2")
    if value == "inf":      # strict JSON's infinity: the worst colour
        return 1e300
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _mark(nodes, report, side):
    """``first-forward``/``first-backward`` on the first divergences' records, ``root-cause`` on
    each root cause's (a parameter's cause marks the module that owns it)."""
    at = {}
    for i, node in enumerate(nodes):
        if node["k"] == "forward":
            at.setdefault((node["n"], node["c"]), i)
            at.setdefault((node["n"], None), i)
    first = report.get("first_divergence") or {}
    for direction in ("forward", "backward"):
        pair = first.get(direction)
        if pair:
            i = at.get((str(pair.get(f"{side}_name")), pair.get(f"{side}_call", 0)))
            if i is not None:
                nodes[i]["marks"].append("first-" + direction)
    for cause in report.get("root_causes") or []:
        name = str(cause.get(f"{side}_name"))
        if cause.get("kind") in ("param", "param_grad"):
            name = re.split(r"[./](?=[^./]*$)", name)[0]
        i = at.get((name, None))
        if i is not None and "root-cause" not in nodes[i]["marks"]:
            nodes[i]["marks"].append("root-cause")


def _parts(name):
    """``[(part, prefix up to and including it)]`` of a record's module path: the name before
    any ``:output`` suffix, split at ``.`` and ``/``."""
    base = name.partition(":")[0]
    out, text = [], ""
    for token in _SEPARATOR.split(base):
        text += token
        if token and token not in "./":
            out.append((token, text))
    return out


def _group(nodes) -> list:
    """Module groups over ``nodes`` (setting each node's ``g``): every proper prefix of a
    forward record's module path is a group, and a record named as a group (a container
    module's output) belongs to it. A group holding one thing only is dissolved into its parent
    (a chain ``a.b.c`` of single groups shows as one)."""
    paths = [tuple(p for p, _ in _parts(n["n"])) if n["k"] == "forward" else () for n in nodes]
    label = {}
    for node, path in zip(nodes, paths):
        for k, (_, text) in enumerate(_parts(node["n"]) if path else [], 1):
            label.setdefault(path[:k], text)
    keys = {path[:k] for path in paths for k in range(1, len(path))}
    parent = {key: key[:-1] if key[:-1] in keys else () for key in keys}
    home = [path if path in keys else path[:-1] for path in paths]
    home = [h if h in keys else () for h in home]
    members = {key: [] for key in keys}
    for i, h in enumerate(home):
        if h:
            members[h].append(i)
    children = {key: set() for key in keys} | {(): set()}
    for key in keys:
        children[parent[key]].add(key)
    for key in sorted(keys, key=len, reverse=True):      # deepest first: a parent sees its final children
        up = parent[key]
        if len(members[key]) + len(children[key]) > 1:
            continue
        for child in children[key]:
            parent[child] = up
            children[up].add(child)
        for i in members[key]:
            home[i] = up
            if up:
                members[up].append(i)
        children[up].discard(key)
        del members[key], parent[key], children[key]
    first = {}
    for i, h in enumerate(home):
        key = h
        while key:
            first.setdefault(key, i)
            key = parent[key]
    order = sorted(first, key=first.get)
    gid = {key: j for j, key in enumerate(order)}
    groups = [{"label": label[key], "parent": gid.get(parent[key], -1), "first": first[key],
               "members": 0, "v": None, "bad": 0, "marks": []} for key in order]
    for node, h, path in zip(nodes, home, paths):
        node["g"] = gid.get(h, -1)
        if (h and h == path) or (not h and path == ROOT):   # a module's own output (torch's
            node["out"] = True                               # `<root>`: the model's)
    _roll_up(nodes, groups)
    return groups


def _roll_up(nodes, groups):
    """Each group's record count, worst rel_l2, diverged count and marks, over all its records."""
    for node in nodes:
        j = node["g"]
        while j >= 0:
            group = groups[j]
            group["members"] += 1
            group["bad"] += node["bad"]
            if node["v"] is not None and (group["v"] is None or node["v"] > group["v"]):
                group["v"] = node["v"]
            group["marks"] += [m for m in node["marks"] if m not in group["marks"]]
            j = group["parent"]


GRAPH_CSS = """
#graph-scroll{overflow:auto;max-height:640px;max-width:100%;border:1px solid #ddd}
#graph{border:none} #graph g.node,#graph g.group{cursor:pointer}
#graph g.selected rect.box{stroke:#1f4fd6;stroke-width:3}
.graph-tools{margin:6px 0} .graph-tools svg{display:inline-block;vertical-align:middle;border:none;background:none}
#graph-detail{margin-top:8px;overflow-x:auto} #graph-rows td{white-space:nowrap}
tr.selected td{background:#fff3b0 !important}
"""

# Draws the graph panel from the JSON block; names reach the page through textContent and
# setAttribute only. Prepended to the report's own script (one script element).
GRAPH_SCRIPT = r"""
try { (function () {   // runs before the report's plots, in their script element; an error here leaves them drawn
  var svg = document.getElementById("graph");
  var g = JSON.parse(document.getElementById("tracediff-data").textContent).graph;
  if (!svg || !g) return;
  var NS = svg.namespaceURI;
  if (window.performance && performance.mark) performance.mark("tracediff-graph-start");
  var W = 190, H = 26, GX = 14, GY = 34, PAD = 14, LO = -8, HI = 0;
  var nodes = g.nodes, groups = g.groups, edges = g.edges, selected = -1;
  var expanded = [], kids = groups.map(function () { return []; }), direct = groups.map(function () { return 0; });
  groups.forEach(function (gr, j) { if (gr.parent >= 0) kids[gr.parent].push(j); });
  nodes.forEach(function (n) { if (n.g >= 0) direct[n.g]++; });
  var chain = nodes.map(function (n) {
    var c = [];
    for (var j = n.g; j >= 0; j = groups[j].parent) c.unshift(j);
    return c;
  });
  var inside = groups.map(function () { return []; });   // every record of each group
  chain.forEach(function (c, i) { c.forEach(function (j) { inside[j].push(i); }); });
  var everything = nodes.map(function (n, i) { return i; });
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, value, attrs) {
    var t = el("text", attrs || {}, parent);
    t.setAttribute("x", x); t.setAttribute("y", y); t.textContent = value;
    return t;
  }
  function colour(v) {   // log10(rel_l2) from LO (green) through yellow to HI and above (red)
    if (v === null || v === undefined) return "#dddddd";
    var t = v > 0 ? Math.min(1, Math.max(0, (Math.log10(v) - LO) / (HI - LO))) : 0;
    var a = t < 0.5 ? [44, 160, 44] : [242, 200, 0], b = t < 0.5 ? [242, 200, 0] : [214, 39, 40];
    var u = t < 0.5 ? t * 2 : t * 2 - 1;
    return "rgb(" + a.map(function (x, i) { return Math.round(x + (b[i] - x) * u); }).join(",") + ")";
  }
  function depth(j) { var d = 0; for (; j >= 0; j = groups[j].parent) d++; return d; }
  function collapse() {   // open as many groups as fit, those holding a mark first, shallow first
    expanded = groups.map(function () { return false; });
    var visible = nodes.filter(function (n) { return n.g < 0; }).length;
    var queue = [];
    groups.forEach(function (gr, j) { if (gr.parent < 0) { queue.push(j); visible++; } });
    function rank(j) { return (groups[j].marks.length ? 0 : 1e9) + depth(j) * 1e6 + groups[j].first; }
    while (queue.length) {
      queue.sort(function (p, q) { return rank(p) - rank(q); });
      var j = queue.shift(), more = kids[j].length + direct[j] - 1;
      if (visible + more > g.limit) continue;
      expanded[j] = true; visible += more;
      queue = queue.concat(kids[j]);
    }
  }
  function itemOf(i) {
    var c = chain[i];
    for (var k = 0; k < c.length; k++) if (!expanded[c[k]]) return "g" + c[k];
    return "n" + i;
  }
  function draw() {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var items = {}, list = [];
    var rep = nodes.map(function (n, i) {
      var key = itemOf(i);
      if (!items[key]) {
        items[key] = {key: key, group: key[0] === "g", id: +key.slice(1), order: i, preds: [], seen: {}};
        list.push(items[key]);
      }
      return items[key];
    });
    var lines = [];
    for (var e = 0; e < edges.length; e++) {
      var u = rep[edges[e][0]], v = rep[edges[e][1]];
      if (u === v || v.seen[u.key]) continue;
      v.seen[u.key] = true;
      lines.push([u, v]);
      if (u.order < v.order) v.preds.push(u);
    }
    nodes.forEach(function (n, i) {   // a module's output record below the module's other records
      var v = rep[i];
      if (!n.out || v.group) return;
      (n.g >= 0 ? inside[n.g] : everything).forEach(function (m) {
        var u = rep[m];
        if (u !== v && u.order < v.order && !v.seen[u.key]) { v.seen[u.key] = true; v.preds.push(u); }
      });
    });
    var layers = [], widest = 1;
    list.forEach(function (it) {   // longest path: one layer below the deepest box it consumes
      it.layer = 0;
      it.preds.forEach(function (p) { if (p.layer + 1 > it.layer) it.layer = p.layer + 1; });
      (layers[it.layer] = layers[it.layer] || []).push(it);
    });
    layers.forEach(function (layer) {
      layer.forEach(function (it) {   // one barycentre pass keeps branches under their sources
        var s = 0;
        it.preds.forEach(function (p) { s += p.slot; });
        it.bary = it.preds.length ? s / it.preds.length : -1;
      });
      layer.sort(function (p, q) { return p.bary - q.bary || p.order - q.order; });
      layer.forEach(function (it, k) { it.slot = k; });
      widest = Math.max(widest, layer.length);
    });
    layers.forEach(function (layer, L) {
      layer.forEach(function (it, k) {
        it.x = PAD + (k + (widest - layer.length) / 2) * (W + GX);
        it.y = PAD + 8 + L * (H + GY);
      });
    });
    svg.setAttribute("width", Math.max(600, 2 * PAD + widest * (W + GX)));
    svg.setAttribute("height", 2 * PAD + 8 + layers.length * (H + GY));
    var edgeLayer = el("g", {"class": "edges"}, svg);
    lines.forEach(function (l) {
      var u = l[0], v = l[1], x1 = u.x + W / 2, y1 = u.y + H, x2 = v.x + W / 2, y2 = v.y;
      el("path", {d: "M" + x1 + "," + y1 + " C" + x1 + "," + (y1 + GY / 2) + " " + x2 + "," + (y2 - GY / 2) + " " + x2 + "," + y2,
                  fill: "none", stroke: u.order < v.order ? "#9a9a9a" : "#c9a0dc", "stroke-width": 1.2,
                  "class": "edge", "data-from": u.key, "data-to": v.key}, edgeLayer);
    });
    list.forEach(function (it) {
      var info = it.group ? groups[it.id] : nodes[it.id], marks = info.marks;
      var first = marks.filter(function (m) { return m.indexOf("first-") === 0; });
      var cause = marks.indexOf("root-cause") >= 0;
      var cls = it.group ? "group" : "node";
      if (first.length) cls += it.group ? " has-first-divergence" : " first-divergence";
      if (cause) cls += it.group ? " has-root-cause" : " root-cause";
      if (!it.group && it.id === selected) cls += " selected";
      var box = el("g", {"class": cls, transform: "translate(" + it.x + "," + it.y + ")",
                         "data-key": it.key, "data-first": first.map(function (m) { return m.slice(6); }).join(" ")}, svg);
      box.setAttribute("data-name", it.group ? info.label : info.n);
      if (it.group) {
        box.setAttribute("data-members", info.members);
        el("rect", {x: 4, y: -4, width: W, height: H, rx: 6, fill: "#eeeeee", stroke: "#999999"}, box);
      }
      if (cause) el("rect", {x: -4, y: -4, width: W + 8, height: H + 8, rx: 8, fill: "none",
                             stroke: "#7b2cbf", "stroke-width": 2, "stroke-dasharray": "5 3", "class": "cause-ring"}, box);
      el("rect", {width: W, height: H, rx: it.group ? 6 : 3, fill: colour(info.v), "class": "box",
                  stroke: first.length ? "#d62728" : (info.bad ? "#a11" : "#888888"),
                  "stroke-width": first.length ? 3 : (info.bad ? 2 : 1)}, box);
      var room = W - 10 - (first.length ? 26 : 0) - (cause ? 22 : 0);
      var fit = Math.floor(room / 6.2) - (it.group ? String(info.members).length + 5 : 0);
      var name = it.group ? info.label : info.n;   // cut on the left: a name's end is its most specific part
      name = name.length > fit ? "\u2026" + name.slice(name.length - fit + 1) : name;
      text(box, 5, 17, it.group ? "\u25b8 " + name + " (" + info.members + ")" : name, {"font-size": 11, "class": "label"});
      var badge = W - 4;
      if (first.length) { text(box, badge, 17, "1st", {"font-size": 10, "font-weight": "bold", fill: "#d62728", "text-anchor": "end", "class": "badge-first"}); badge -= 26; }
      if (cause) text(box, badge, 17, "RC", {"font-size": 10, "font-weight": "bold", fill: "#7b2cbf", "text-anchor": "end", "class": "badge-cause"});
      var v = info.v === null ? "not aligned" : "rel_l2 " + info.v.toExponential(2);
      var tip = (it.group ? info.label + ": " + info.members + " records, worst " + v + (info.bad ? ", " + info.bad + " diverged" : "")
                          : info.n + (info.c ? "#" + info.c : "") + ": " + v + (info.s ? " (" + info.s + ")" : ""));
      if (first.length) tip += (it.group ? "; holds" : ";") + " the first " + first.map(function (m) { return m.slice(6); }).join(" and ") + " divergence";
      if (cause) tip += it.group ? "; holds a root cause" : "; a root cause";
      el("title", {}, box).textContent = tip;
    });
    svg.setAttribute("data-visible", String(list.length));
    svg.setAttribute("data-edges", String(lines.length));
    return items;
  }
  function centre(item) {   // scroll the panel (not the page) to a box
    var pane = document.getElementById("graph-scroll");
    if (!item || !pane) return;
    pane.scrollLeft = Math.max(0, item.x + W / 2 - pane.clientWidth / 2);
    pane.scrollTop = Math.max(0, item.y + H / 2 - pane.clientHeight / 2);
  }
  function marked(items) {
    for (var key in items) {
      var it = items[key], info = it.group ? groups[it.id] : nodes[it.id];
      if (info.marks.some(function (m) { return m.indexOf("first-") === 0; })) return it;
    }
    return null;
  }
  function show(i) {
    selected = i;
    var n = nodes[i], detail = document.getElementById("graph-detail");
    document.querySelectorAll("#pairs tr.selected").forEach(function (r) { r.classList.remove("selected"); });
    while (detail.firstChild) detail.removeChild(detail.firstChild);
    var head = document.createElement("p");
    head.textContent = n.n + (n.c ? " (call " + n.c + ")" : "") + (n.k === "input" ? ": a model input" : "");
    head.className = "graph-selected";
    detail.appendChild(head);
    var table = document.getElementById("pairs"), shown = document.createElement("table"), missing = 0;
    shown.id = "graph-rows";
    if (n.rows.length && table) shown.appendChild(table.rows[0].cloneNode(true));
    n.rows.forEach(function (r) {
      var row = document.getElementById("pair-" + r);
      if (!row) { missing++; return; }
      row.classList.add("selected");
      var copy = row.cloneNode(true);
      copy.removeAttribute("id");
      copy.classList.remove("selected");
      copy.setAttribute("data-pair", String(r));
      shown.appendChild(copy);
    });
    if (shown.rows.length > 1) detail.appendChild(shown);
    if (!n.rows.length && n.k === "forward") {
      var none = document.createElement("p");
      none.textContent = "not aligned: no pair in the report";
      detail.appendChild(none);
    }
    if (missing) {
      var more = document.createElement("p");
      more.textContent = missing + " of its pairs are not in the table (its row limit): see the JSON report";
      detail.appendChild(more);
    }
    chain[i].slice().reverse().forEach(function (j) {
      var b = document.createElement("button");
      b.type = "button";
      b.className = "graph-fold";
      b.textContent = "collapse " + groups[j].label;
      b.addEventListener("click", function () { expanded[j] = false; draw(); });
      detail.appendChild(b);
    });
    return draw();
  }
  function reveal(i) {   // open every module holding record i, select it and scroll to it
    chain[i].forEach(function (j) { expanded[j] = true; });
    centre(show(i)["n" + i]);
  }
  function find(query) {
    var q = query.trim().toLowerCase(), exact = -1, hits = [];
    if (!q) return;
    nodes.forEach(function (n, i) {
      if (n.n.toLowerCase() === q && exact < 0) exact = i;
      else if (n.n.toLowerCase().indexOf(q) >= 0) hits.push(i);
    });
    if (exact >= 0) hits.unshift(exact);
    document.getElementById("graph-found").textContent =
      hits.length ? (hits.length > 1 ? hits.length + " records match: showing " + nodes[hits[0]].n : "") : "no record matches";
    if (hits.length) reveal(hits[0]);
  }
  function legend() {
    var l = document.getElementById("graph-legend");
    if (!l) return;
    for (var k = 0; k <= 8; k++) {
      el("rect", {x: k * 36, y: 0, width: 36, height: 12, fill: colour(Math.pow(10, LO + k * (HI - LO) / 8))}, l);
      if (k % 2 === 0) text(l, k * 36 + 2, 24, "1e" + (LO + k * (HI - LO) / 8), {"font-size": 9});
    }
  }
  svg.addEventListener("click", function (event) {
    var target = event.target.closest ? event.target.closest("g[data-key]") : null;
    if (!target) return;
    var key = target.getAttribute("data-key"), id = +key.slice(1);
    if (key[0] === "g") {   // expand, and keep the module's first record in view
      expanded[id] = true;
      var items = draw();
      centre(items[itemOf(groups[id].first)]);
    } else show(id);
  });
  document.getElementById("graph-expand-all").addEventListener("click", function () {
    expanded = groups.map(function () { return true; }); draw();
  });
  document.getElementById("graph-find").addEventListener("change", function (event) { find(event.target.value); });
  document.getElementById("graph-collapse").addEventListener("click", function () { collapse(); centre(marked(draw())); });
  legend();
  collapse();
  centre(marked(draw()));
  svg.setAttribute("data-nodes", String(nodes.filter(function (n) { return n.k === "forward"; }).length));
  svg.setAttribute("data-drawn", "true");
  if (window.performance && performance.mark) performance.mark("tracediff-graph-drawn");
})(); } catch (error) { if (window.console) console.error("tracediff graph panel:", error); }
"""
