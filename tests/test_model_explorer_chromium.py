"""``tracediff view`` rendered: headless Chromium (WebGL in software, SwiftShader) opens the Model
Explorer it starts on a planted-bug ONNX export, and the page shows the status overlay applied:
the nodes before the planted conv ok, the planted conv the first divergence, in the side panel's
node table and in the colours drawn on the graph."""
import os
import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("model_explorer")
pytest.importorskip("model_explorer_onnx")
pytest.importorskip("tornado")

from chromium_cdp import CHROMIUM, Browser  # noqa: E402
from explorer_models import planted  # noqa: E402
from tracediff.explorer.server import free_port  # noqa: E402
from tracediff.report.model_explorer import STATUS_COLORS  # noqa: E402

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (apt-get install -y chromium, or `make browser`): "
           "the Model Explorer view's rendering cannot be checked")

# the side panel's per-node table: [[cell text, ...], ...]
NODE_TABLE = """(() => {
  const tables = [...document.querySelectorAll('table')].filter(
      t => /tracediff status/.test(t.innerText) && [...t.querySelectorAll('tr')].some(
          r => /first divergence|\\bok\\b/.test(r.innerText)));
  if (!tables.length) return null;
  return [...tables[tables.length - 1].querySelectorAll('tr')].map(
      r => [...r.querySelectorAll('td')].map(c => c.innerText.trim()));
})()"""

# the side panel's table of collapsed layers: {layer: {column header: cell}}
LAYER_TABLE = """(() => {
  const table = [...document.querySelectorAll('table')].find(
      t => [...t.querySelectorAll('th')].some(h => /#first divergence/.test(h.innerText)));
  if (!table) return null;
  const heads = [...table.querySelectorAll('th')].map(h => h.innerText.replace(/\\s+/g, ' ').trim());
  const out = {};
  for (const row of table.querySelectorAll('tr')) {
    const cells = [...row.querySelectorAll('td')].map(c => c.innerText.trim());
    if (cells.length === heads.length) out[cells[1]] = Object.fromEntries(heads.map((h, i) => [h, cells[i]]));
  }
  return out;
})()"""

# the graph's canvas on the page: {x, y, width, height}
CANVAS_BOX = """(() => {
  const canvas = [...document.querySelectorAll('canvas')].sort(
      (a, b) => b.clientWidth * b.clientHeight - a.clientWidth * a.clientHeight)[0];
  const box = canvas.getBoundingClientRect();
  return {x: box.x, y: box.y, width: box.width, height: box.height, scale: 1};
})()"""

# pixels of each colour (within 6 per channel) in a PNG screenshot
COUNT_COLOURS = """(async (data, colours) => {
  const image = new Image();
  image.src = 'data:image/png;base64,' + data;
  await image.decode();
  const board = document.createElement('canvas');
  board.width = image.width; board.height = image.height;
  const context = board.getContext('2d');
  context.drawImage(image, 0, 0);
  const px = context.getImageData(0, 0, image.width, image.height).data;
  const out = {};
  for (const [name, hex] of Object.entries(colours)) {
    const rgb = [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16));
    let n = 0;
    for (let i = 0; i < px.length; i += 4)
      if (Math.abs(px[i] - rgb[0]) <= 6 && Math.abs(px[i + 1] - rgb[1]) <= 6
          && Math.abs(px[i + 2] - rgb[2]) <= 6) n++;
    out[name] = n;
  }
  return out;
})"""


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view")
    models = planted(folder, export=False)
    port = free_port()
    log = open(folder / "view.log", "w+")
    view = subprocess.Popen(
        [sys.executable, "-m", "tracediff", "view", str(models["bad"]), str(models["ref"]),
         "--model", str(models["onnx"]), "--no-browser", "--port", str(port),
         "--out", str(folder / "overlays")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "127.0.0.1"})

    def url():
        log.seek(0)
        found = re.search(rf"http://127\.0\.0\.1:{port}/\?data=\S+", log.read())
        return found and found.group(0)

    try:
        yield _wait(lambda: url() or (view.poll() is not None and "exited"), 60,
                    "tracediff view's URL"), folder
    finally:
        view.kill()
        view.wait()
        log.close()


def test_view_shows_the_planted_node_as_the_first_divergence(served):
    address, folder = served
    assert address != "exited", (folder / "view.log").read_text()[-2000:]
    browser = Browser(folder / "profile", timeout=30, webgl=True)
    try:
        browser.send("Page.navigate", url=address)
        rows = _wait(lambda: browser.evaluate(NODE_TABLE), 60, "the overlay in the node table")
        statuses = [(row[1], next(c for c in row if c in STATUS_COLORS)) for row in rows
                    if len(row) > 2 and any(c in STATUS_COLORS for c in row)]
        assert [s for s in statuses if s[0] not in ("Input", "Initializer")] == [
            ("Conv", "ok"), ("Relu", "ok"), ("Conv", "first divergence"), ("Relu", "diverged"),
            ("GlobalAveragePool", "diverged"), ("Flatten", "diverged"), ("Gemm", "diverged")]
        # the input, and the planted weight among the four the torch parameters pair with
        assert ("Input", "ok") in statuses
        assert sorted(s[1] for s in statuses if s[0] == "Initializer") == ["diverged"] + ["ok"] * 3
        # collapsed, the graph is one layer (the ONNX graph's); it sums up its children's
        # statuses: 7 ops and 4 weights
        layer = browser.evaluate(LAYER_TABLE)["main_graph"]
        counts = {label: layer[next(h for h in layer if h.endswith("#" + label))]
                  for label in ("ok", "first divergence", "diverged")}
        assert counts == {"ok": "5", "first divergence": "1", "diverged": "5"}
        # the graph itself: expand every layer, then the nodes are drawn in the status colours
        browser.evaluate("document.querySelector('mat-icon.expand-all').click()")
        colours = {k: STATUS_COLORS[k] for k in ("ok", "first divergence", "diverged")}

        box = browser.evaluate(CANVAS_BOX)

        def drawn():
            shot = browser.send("Page.captureScreenshot", format="png", clip=box)["data"]
            counts = browser.evaluate(f"{COUNT_COLOURS}({shot!r}, {colours!r})")
            return counts if counts and counts["first divergence"] > 100 else None

        counts = _wait(drawn, 20, "the planted node drawn in the first-divergence colour")
        # one node is the first divergence; more are ok (before it, and weights) or diverged
        assert counts["first divergence"] < min(counts["ok"], counts["diverged"])
    finally:
        browser.close()
