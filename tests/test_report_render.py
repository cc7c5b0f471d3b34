"""Markdown and HTML renderings of a diff report dict: content, caps, escaping."""
import json
import re

from tracediff.report import render_html, render_markdown

EVIL = "<script>alert(1)</script>"


def _pair(a, b, kind="forward", status="ok", max_abs=1e-7, rel_l2=2e-7, hint=None, **extra):
    pair = {"a_name": a, "b_name": b, "kind": kind, "status": status, "shape_a": [3, 11],
            "shape_b": [3, 11], "tolerance": {"rtol": 1.3e-6, "atol": 1e-5}, "hint": hint,
            "stats": {"max_abs": max_abs, "max_rel": max_abs * 10, "mean_abs": max_abs / 2,
                      "rmse": max_abs / 1.5, "rel_l2": rel_l2, "cosine": 1.0,
                      "mismatch_fraction": 0.0 if status == "ok" else 0.25, "argmax_abs": [0, 1],
                      "nan_a": 0, "nan_b": 0, "inf_a": 0, "inf_b": 0},
            "match": "name", "confidence": 1.0, "worst": [], "introduced": None}
    pair.update(extra)
    return pair


def _report():
    fd_forward = _pair("fc2", "fc2", status="diverged", max_abs=0.31, rel_l2=0.12,
                       hint="a constant offset per column: the bias looks missing",
                       introduced={"verdict": "introduced here", "previous": "act1",
                                   "previous_kind": "forward", "previous_rel_l2": 7.1e-08,
                                   "rel_l2": 0.12, "growth": 1.69e6,
                                   "reason": "the error grows across this record"},
                       worst=[{"index": [2, 7], "a": 0.5, "b": 0.19, "diff": 0.31}])
    fd_backward = _pair("dense0", "fc1", kind="backward", status="diverged", max_abs=0.02,
                        rel_l2=0.5, hint="only rows 0, 2 of axis batch differ", match="structural",
                        confidence=0.87)
    pairs = [_pair("fc1", "fc1"), _pair("act1", "act1"), fd_forward, _pair("act2", "act2", status="diverged"),
             _pair("fc1|x`y", "fc1|x`y"), _pair(EVIL, EVIL, status="diverged", hint=EVIL),
             _pair("fc2", "fc2", kind="backward"), fd_backward,
             _pair("fc2.weight", "fc2.weight", kind="param_grad", status="diverged",
                   rel_l2=float("inf"), max_abs=float("nan"))]
    return {"schema": "tracediff.diff/1", "ok": False,
            "a": {"path": "runs/mine.h5", "framework": "numpy"},
            "b": {"path": "runs/ref.h5", "framework": "torch"},
            "first_divergence": {"forward": fd_forward, "backward": fd_backward},
            "pairs": pairs, "unmatched": {"a": ["extra_a", EVIL], "b": []},
            "dims": {"batch": 3, "hidden": 11},
            "histogram": {"forward": {"name": "fc2", "kind": "forward", "edges": [-3, -2.5, -2, -1.5],
                                      "counts": [4, 20, 9], "exact": 2, "scale": "log10|a-b|"},
                          "backward": {"edges": [0.0, 0.01, 0.02], "counts": [30, 3]}}}


# -- Markdown -----------------------------------------------------------------------------------
def test_markdown_summary_names_both_first_divergences():
    text = render_markdown(_report())
    first_line = text.splitlines()[0]
    assert first_line.startswith("## tracediff: ❌ 5 of 9 pairs diverged; ")
    assert "first forward divergence at fc2 (diverged)" in first_line
    assert "first backward divergence at dense0 ↔ fc1 (diverged)" in first_line
    assert "**a** (candidate): `runs/mine.h5` (numpy) · **b** (reference): `runs/ref.h5` (torch)" in text


def test_markdown_first_divergence_has_stats_shape_tolerance_origin_and_hint():
    text = render_markdown(_report())
    section = text.split("### First divergence")[1].split("### Pairs")[0]
    forward, backward = section.split("- **backward**")
    assert "- **forward**: `fc2`, forward, status **diverged**" in forward
    assert "shape a `[batch, hidden]`; tolerance rtol 1.3e-06, atol 1e-05" in forward
    assert "max_abs 0.31, max_rel 3.1, mean_abs 0.155, rel_l2 0.12, cosine 1, mismatch_fraction 0.25" in forward
    assert ("introduced here: the error grows across this record "
            "(rel_l2 7.1e-08 at act1 → 0.12 here, ×1.69e+06)") in forward
    assert "hint: a constant offset per column: the bias looks missing" in forward
    assert ": `dense0` (a) ↔ `fc1` (b), backward, status **diverged**" in backward
    assert "hint: only rows 0, 2 of axis batch differ" in backward


def test_markdown_table_lists_diverged_pairs_first_and_caps_rows():
    text = render_markdown(_report(), limit=6)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    statuses = [row.split(" | ")[3] for row in rows]
    assert statuses == ["diverged"] * 5 + ["ok"]
    assert rows[0].startswith("| forward | `fc2` | `fc2` | diverged | `[batch, hidden]` |")
    assert "| backward | `dense0` | `fc1` | diverged |" in rows[3] and rows[3].endswith("| structural (0.87) |")
    assert "_… 3 more pairs not shown (all in the JSON report)._" in text
    assert "| param_grad | `fc2.weight` | `fc2.weight` | diverged | `[batch, hidden]` | `[batch, hidden]` | nan | nan | inf | 1 | name |" in text


def test_markdown_escapes_names_pipes_backticks_and_html():
    text = render_markdown(_report())
    assert "``fc1\\|x`y``" in text              # the name's backtick cannot close the span
    assert f"`{EVIL}`" in text                   # names stay inside code spans
    for line in text.splitlines():               # outside code spans no raw tag survives
        outside = re.sub(r"(`+).*?\1", "", line)
        assert "<script" not in outside, line
    assert "- only in **a** (2): `extra_a`, `<script>alert(1)</script>`" in text
    assert "- only in **b** (0): none" in text


def test_markdown_of_a_clean_report():
    report = {"ok": True, "a": {"path": "a.h5", "framework": "numpy"}, "b": {"path": "b.h5", "framework": "torch"},
              "first_divergence": {"forward": None, "backward": None},
              "pairs": [_pair("fc1", "fc1"), _pair("fc1", "fc1", kind="backward")],
              "unmatched": {"a": [], "b": []}}
    text = render_markdown(report)
    assert text.startswith("## tracediff: ✅ no divergence: 2 pairs match within tolerance\n")
    assert "- **forward**: none" in text and "- **backward**: none" in text
    assert "Every record was paired." in text


# -- HTML ---------------------------------------------------------------------------------------
def _embedded_data(page):
    match = re.search(r'<script type="application/json" id="tracediff-data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def test_html_is_one_self_contained_file():
    page = render_html(_report())
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "@import" not in page and "url(" not in page
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]  # the SVG namespace
    assert '<svg id="error-plot"' in page and '<svg id="histogram"' in page
    assert '<body data-rendered="false">' in page


def test_html_escapes_every_name_and_attribute():
    page = render_html(_report())
    assert page.count("<script") == 2        # the data block and the drawing script, nothing else
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    data_block = re.search(r'id="tracediff-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data_block and ">" not in data_block and "&" not in data_block


def test_html_embeds_the_plot_series_and_histogram():
    data = _embedded_data(render_html(_report()))
    assert data["metric"] == "rel_l2"
    forward = data["series"]["forward"]
    assert [p["name"] for p in forward] == ["fc1", "act1", "fc2", "act2", "fc1|x`y", EVIL]
    assert forward[2] == {"name": "fc2", "a": "fc2", "status": "diverged", "value": 0.12, "x": 2}
    # a backward point sits above its layer's forward point
    assert [(p["a"], p["x"]) for p in data["series"]["backward"]] == [("fc2", 2), ("dense0", 0)]
    assert data["first"] == {"forward": 2, "backward": 1}
    assert data["histogram"]["forward"] == {"edges": [-3, -2.5, -2, -1.5], "counts": [4, 20, 9],
                                            "name": "fc2", "log10": True, "exact": 2}
    assert data["histogram"]["backward"] == {"edges": [0.0, 0.01, 0.02], "counts": [30, 3],
                                             "name": "dense0 ↔ fc1", "log10": False, "exact": 0}


def test_html_nonfinite_statistics_do_not_break_the_data_block():
    report = _report()
    report["pairs"][0]["stats"]["rel_l2"] = float("nan")
    data = _embedded_data(render_html(report))
    assert data["series"]["forward"][0]["value"] is None
    assert "<td>inf</td>" in render_html(report)


def test_html_first_divergence_and_table():
    page = render_html(_report())
    section = page.split('id="first-divergence"')[1].split("</section>")[0]
    assert "<h3>forward: <code>fc2</code></h3>" in section
    assert "<h3>backward: <code>dense0 ↔ fc1</code></h3>" in section
    assert "<tr><th>hint</th><td>a constant offset per column: the bias looks missing</td></tr>" in section
    assert "<tr><th>shape a</th><td>[batch, hidden]</td></tr>" in section
    assert "<td>[2, 7]</td><td>0.5</td><td>0.19</td><td>0.31</td>" in section
    table = page.split('<table id="pairs">')[1].split("</table>")[0]
    statuses = re.findall(r'data-status="([^"]*)"', table)
    assert statuses == ["diverged"] * 5 + ["ok"] * 4


def test_engine_verdict_decides_what_counts_as_diverged():
    # a layout between declared layouts (NHWC vs NCHW) is reported but is not a divergence
    layout = _pair("conv", "conv", status="layout", hint="NHWC vs NCHW", diverged=False)
    grad = _pair("fc.weight", "fc.weight", kind="param_grad", status="diverged", diverged=True)
    report = {"ok": False, "a": {}, "b": {}, "pairs": [_pair("x", "x", diverged=False), layout, grad],
              "first_divergence": {"forward": None, "backward": None, "param_grad": grad},
              "unmatched": {"a": [], "b": []}}
    text = render_markdown(report)
    assert text.splitlines()[0] == ("## tracediff: ❌ 1 of 3 pairs diverged; activations and their "
                                    "gradients match; parameter records diverge (first: fc.weight)")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[3] for row in rows] == ["diverged", "layout", "ok"]
    assert "- **param_grad**: `fc.weight`, param_grad, status **diverged**" in text
    assert '<div class="fd" data-direction="param_grad"><h3>param_grad: <code>fc.weight</code>' in render_html(report)
