"""HTML graph panel benchmark: how fast a 2,000-node report opens in headless Chromium.

    .venv/bin/python bench/bench_graph.py [--layers 117] [--repeat 5]

The report is a real diff: a Hugging Face BERT built from a config (hidden size 16, ``layers``
encoder layers: about 17 forward records a layer, 2,004 by default) recorded with the torch
adapter, against a copy with one planted bug (layer 40's intermediate bias). Each open is a
fresh navigation to the report's file, alternated with one to the same report rendered without
its graph panel (the baseline); in-page timings come from the Performance API:
``graph drawn`` is the graph script's mark (the panel laid out and drawn, collapsed by module),
``load`` the load event's end (the whole report: tables, plots). ``expand all`` and ``click a
module`` are the synchronous redraws, with a forced layout. The target (issue 23): under 2 s
to open.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import torch  # noqa: E402
import transformers  # noqa: E402
from chromium_cdp import CHROMIUM, Browser  # noqa: E402  (the browser tests' DevTools client)

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.compare.graph import dataflow_graph  # noqa: E402
from tracediff.report import render_html  # noqa: E402

TIMINGS = """(function () {
  var nav = performance.getEntriesByType('navigation')[0];
  var mark = performance.getEntriesByName('tracediff-graph-drawn')[0];
  var start = performance.getEntriesByName('tracediff-graph-start')[0];
  return {graph: mark ? mark.startTime : null, script: mark ? mark.startTime - start.startTime : null,
          parsed: start ? start.startTime : null,
          load: nav.loadEventEnd,
          dom: nav.domContentLoadedEventEnd,
          boxes: mark ? +document.getElementById('graph').getAttribute('data-visible') : 0};
})()"""
REDRAW = """(function () {
  var t = performance.now();
  %s.dispatchEvent(new MouseEvent('click', {bubbles: true}));
  document.getElementById('graph').getBBox();
  document.body.offsetHeight;
  return [performance.now() - t, +document.getElementById('graph').getAttribute('data-visible')];
})()"""


def build_report(folder, layers):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=3)
    bert = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(4))
    tdt.record(bert, {"input_ids": ids}, os.path.join(folder, "ref.h5"))
    bad = copy.deepcopy(bert)
    with torch.no_grad():
        bad.get_submodule(f"bert.encoder.layer.{min(40, layers - 1)}.intermediate.dense").bias.add_(0.1)
    tdt.record(bad, {"input_ids": ids}, os.path.join(folder, "bad.h5"))
    report = td.diff(os.path.join(folder, "bad.h5"), os.path.join(folder, "ref.h5"))
    ref, bad = td.open(os.path.join(folder, "ref.h5")), td.open(os.path.join(folder, "bad.h5"))
    started = time.perf_counter()
    dataflow_graph(bad, ref)
    built = time.perf_counter() - started
    ref.close()
    bad.close()
    started = time.perf_counter()
    page = os.path.join(folder, "report.html")
    report.to_html(page)
    rendered = time.perf_counter() - started
    plain = os.path.join(folder, "without-graph.html")   # the same report without its panel
    with open(plain, "w", encoding="utf-8") as handle:
        handle.write(render_html({**report.to_dict(), "graph": None}))
    nodes = sum(n["kind"] == "forward" for n in report.graph["nodes"])
    return page, plain, nodes, rendered, built


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=117)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("chromium is not installed (make browser)")
    with tempfile.TemporaryDirectory() as folder:
        page, plain, nodes, rendered, built = build_report(folder, args.layers)
        size = os.path.getsize(page)
        print(f"report: {nodes} forward records, graph block built in {built:.3f} s (freshly opened "
              f"traces), {size / 1e6:.1f} MB of HTML rendered in {rendered:.2f} s")
        browser = Browser(os.path.join(folder, "profile"), timeout=60)
        try:
            opens, graphs, loads, walls, scripts, parsed, baseline = [], [], [], [], [], [], []
            for _ in range(args.repeat):   # alternated with the baseline: both see the same load
                started = time.perf_counter()
                browser.open(page)
                walls.append(time.perf_counter() - started)
                timing = browser.evaluate(TIMINGS)
                graphs.append(timing["graph"] / 1000)
                loads.append(timing["load"] / 1000)
                scripts.append(timing["script"] / 1000)
                parsed.append(timing["parsed"] / 1000)
                opens.append(timing)
                browser.open(plain)
                baseline.append(browser.evaluate(TIMINGS)["load"] / 1000)
            browser.open(page)
            expand, boxes = browser.evaluate(REDRAW % "document.getElementById('graph-expand-all')")
            browser.click("#graph-collapse")
            group, shown = browser.evaluate(REDRAW % "document.querySelector('#graph g.group rect.box')")
        finally:
            browser.close()
    print(f"open ({args.repeat} fresh navigations, median): graph drawn {statistics.median(graphs):.3f} s, "
          f"load event {statistics.median(loads):.3f} s, wall until drawn (DevTools polling) "
          f"{statistics.median(walls):.3f} s; of which the page parsed before the script ran "
          f"{statistics.median(parsed):.3f} s, the graph script {statistics.median(scripts):.3f} s; "
          f"{opens[0]['boxes']} boxes shown collapsed; the same report without the panel: load event "
          f"{statistics.median(baseline):.3f} s")
    print(f"expand all: {expand / 1000:.3f} s ({boxes} boxes); click a module: {group / 1000:.3f} s "
          f"({shown} boxes)")


if __name__ == "__main__":
    main()
