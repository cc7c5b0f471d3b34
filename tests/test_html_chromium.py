"""The HTML report opened in headless Chromium: the inline script draws the plots and no
name in the report can run as markup."""
import re
import shutil
import subprocess

import pytest

from tracediff.report import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (apt-get install -y chromium, or `make browser`): "
           "the HTML report's rendering cannot be checked")

PWN = '<img src=x onerror="document.title=\'pwned\'">'


def _pair(name, kind, status, rel_l2):
    return {"a_name": name, "b_name": name, "kind": kind, "status": status, "shape_a": [3, 5],
            "shape_b": [3, 5], "tolerance": {"rtol": 1.3e-6, "atol": 1e-5}, "hint": None,
            "stats": {"max_abs": rel_l2, "max_rel": rel_l2, "rel_l2": rel_l2, "cosine": 1.0}}


def _report():
    forward = [_pair("fc1", "forward", "ok", 1e-7), _pair(PWN, "forward", "diverged", 0.3),
               _pair("fc3", "forward", "diverged", 0.0)]
    backward = [_pair("fc3", "backward", "ok", 2e-7), _pair("fc1", "backward", "ok", 3e-7)]
    return {"ok": False, "a": {"path": "a.h5", "framework": "numpy"},
            "b": {"path": "b.h5", "framework": "torch"},
            "first_divergence": {"forward": forward[1], "backward": None},
            "pairs": forward + backward, "unmatched": {"a": [PWN], "b": []},
            "histogram": {"forward": {"edges": [0.0, 0.1, 0.2, 0.3], "counts": [2, 5, 1]}}}


def _dump_dom(tmp_path, page):
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    profile = tmp_path / "profile"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={profile}", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def dom(tmp_path_factory):
    return _dump_dom(tmp_path_factory.mktemp("chromium"), render_html(_report(), title="planted"))


def test_script_ran_and_drew_the_error_plot(dom):
    assert '<body data-rendered="true">' in dom
    plot = re.search(r'<svg id="error-plot"[^>]*>(.*?)</svg>', dom, re.S)
    assert 'data-points="5"' in re.search(r'<svg id="error-plot"[^>]*>', dom).group(0)
    body = plot.group(1)
    assert len(re.findall(r'<path [^>]*data-series="forward"', body)) == 1
    assert len(re.findall(r'<path [^>]*data-series="backward"', body)) == 1
    assert len(re.findall(r"<circle ", body)) == 5
    assert body.count('fill="#d62728"') == 2   # the two diverged forward points
    assert ">1e-8</text>" in body              # a log axis: decades below the smallest error
    assert len(re.findall(r'<line [^>]*class="first-forward"', body)) == 1   # the divergence marked
    assert re.findall(r'<text [^>]*class="tick"[^>]*>([^<]*)</text>', body) == [
        "fc1", "&lt;img src=x onerro\u2026", "fc3"]


def test_histogram_bars_drawn(dom):
    hist = re.search(r'<svg id="histogram"([^>]*)>(.*?)</svg>', dom, re.S)
    assert 'data-bars="3"' in hist.group(1)
    assert len(re.findall(r'<rect [^>]*class="bar"', hist.group(2))) == 3


def test_names_stay_text_in_the_browser(dom):
    assert "<title>planted</title>" in dom      # the onerror handler never ran
    assert "<img" not in dom
    assert "&lt;img src=x onerror=" in dom

