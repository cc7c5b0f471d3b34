"""The HTML report's graph panel, opened in headless Chromium and clicked through the DevTools
protocol, on real models: a Hugging Face ResNet against a port with a planted bug (a plain
diff), and a BERT with two planted bugs replayed (two root causes). Every forward record is a
node inside its collapsed module, the first divergence and the root causes are marked, a click
on a module expands it and a click on a record shows its pair table rows."""
import copy
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tornado")    # the DevTools client's websocket

import torch.nn.functional as F  # noqa: E402
from chromium_cdp import CHROMIUM, Browser  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.dataflow import declared_inputs  # noqa: E402
from tracediff.report.html_graph import VISIBLE_LIMIT  # noqa: E402

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (`make browser`): the graph panel cannot be checked")

IMAGES = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 3])
PLANTED = "resnet.encoder.stages.1.layers.0.layer.0.convolution"
BOXES = ("Array.from(document.querySelectorAll('#graph g[data-key]')).map(function (e) {"
         " return {cls: e.getAttribute('class'), name: e.getAttribute('data-name'),"
         " members: +(e.getAttribute('data-members') || 1), first: e.getAttribute('data-first')}; })")


def image_loss(out):
    return F.cross_entropy(out.logits, LABELS)


def records(path, kinds=("forward",)):
    trace = td.open(path)
    try:
        return [r for r in trace if r.kind in kinds]
    finally:
        trace.close()


@pytest.fixture(scope="module")
def resnet_port(tmp_path_factory):
    """A ResNet's trace and a port's, the port with one convolution's weights off by 1%."""
    folder = tmp_path_factory.mktemp("graph")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                       depths=[2, 2], layer_type="basic", num_labels=5)
    model = transformers.ResNetForImageClassification(config).eval()
    tdt.record(model, IMAGES, folder / "ref.h5", loss_fn=image_loss)
    port = copy.deepcopy(model)
    with torch.no_grad():
        weight = port.get_submodule(PLANTED).weight
        weight.mul_(1 + 0.01 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(2)))
    tdt.record(port, IMAGES, folder / "port.h5", loss_fn=image_loss)
    report = td.diff(folder / "port.h5", folder / "ref.h5")
    report.to_html(folder / "report.html")
    return report, folder


@pytest.fixture(scope="module")
def bert_replay(tmp_path_factory):
    """A 4-layer BERT replayed against its trace with two planted bugs: two root causes."""
    folder = tmp_path_factory.mktemp("graph")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=3)
    bert = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(4))
    tdt.record(bert, {"input_ids": ids}, folder / "bert.h5")
    bad = copy.deepcopy(bert)
    with torch.no_grad():
        bad.get_submodule("bert.encoder.layer.0.attention.output.dense").weight.mul_(1.05)
        bad.get_submodule("bert.encoder.layer.2.intermediate.dense").bias.add_(0.1)
    report = td.replay(bad, folder / "bert.h5")
    report.to_html(folder / "report.html")
    return report, folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium not installed")
    opened = Browser(tmp_path_factory.mktemp("profile"))
    yield opened
    opened.close()


def boxes(browser):
    return browser.evaluate(BOXES)


def inside(name, box):
    """Whether record ``name`` is ``box`` or a record of the module group ``box``."""
    if "node" in box["cls"].split():
        return name == box["name"]
    return name == box["name"] or re.match(re.escape(box["name"]) + r"[./:]", name) is not None


def test_the_report_carries_the_traced_dataflow(resnet_port):
    report, folder = resnet_port
    graph = report.to_dict()["graph"]
    traced = records(folder / "ref.h5", ("input", "forward"))
    assert graph["side"] == "b" and graph["dataflow"] == "declared"
    assert [(n["kind"], n["name"]) for n in graph["nodes"]] == [(r.kind, r.name) for r in traced]
    key = [(r.kind, r.name, r.call) for r in traced]
    for j, r in enumerate(traced):
        if r.kind == "forward":
            assert {key[s] for s, t in graph["edges"] if t == j} == set(declared_inputs(r))


@needs_chromium
def test_every_forward_record_is_a_node_inside_its_collapsed_module(resnet_port, browser):
    report, folder = resnet_port
    forward = [r.name for r in records(folder / "ref.h5")]
    inputs = [r.name for r in records(folder / "ref.h5", ("input",))]
    browser.open(folder / "report.html")
    assert browser.evaluate("document.getElementById('graph').getAttribute('data-nodes')") == str(len(forward))
    shown = boxes(browser)
    groups = [b for b in shown if "group" in b["cls"]]
    assert groups and len(shown) <= VISIBLE_LIMIT < len(forward)   # collapsed on open
    assert sum(b["members"] for b in shown) == len(forward) + len(inputs)
    for name in forward:       # in exactly one box: its own, or its module's
        assert sum(inside(name, b) for b in shown) == 1, name
    browser.click("#graph-expand-all")
    expanded = boxes(browser)
    assert all("node" in b["cls"] for b in expanded)
    assert sorted(b["name"] for b in expanded) == sorted(forward + inputs)


@needs_chromium
def test_the_first_divergences_are_marked_collapsed_and_expanded(resnet_port, browser):
    report, folder = resnet_port
    first = report.first_divergence
    assert first.forward.b_name == PLANTED
    browser.open(folder / "report.html")
    marked = [b for b in boxes(browser) if "first-divergence" in b["cls"]]   # or has-first-...
    assert any(inside(PLANTED, b) and "forward" in b["first"] for b in marked)
    browser.click("#graph-expand-all")
    marked = {b["name"]: b["first"].split() for b in boxes(browser) if "first-divergence" in b["cls"].split()}
    expected = {}
    for direction in ("forward", "backward"):
        pair = getattr(first, direction)
        if pair is not None:
            expected.setdefault(pair.b_name, []).append(direction)
    assert marked == expected


@needs_chromium
def test_clicking_a_module_expands_it_and_a_record_shows_its_pair_rows(resnet_port, browser):
    report, folder = resnet_port
    forward = [r.name for r in records(folder / "ref.h5")]
    browser.open(folder / "report.html")
    before = boxes(browser)
    module = next(b for b in before if "group" in b["cls"])
    browser.click(f'#graph g.group[data-name="{module["name"]}"]')
    after = boxes(browser)
    opened = [b for b in after if b not in before]
    assert module not in after and len(opened) > 1
    assert all(inside(b["name"], module) for b in opened)
    assert sum(b["members"] for b in opened) == module["members"]

    browser.click(f'#graph g.node[data-name="{PLANTED}"]')   # shown on open: it is marked
    rows = sorted(i for i, p in enumerate(report.pairs)
                  if p.b_name == PLANTED and p.kind in ("forward", "backward"))
    assert len(rows) == 2
    shown = browser.evaluate("Array.from(document.querySelectorAll('#graph-rows tr[data-pair]'))"
                             ".map(function (r) { return +r.getAttribute('data-pair'); })")
    assert sorted(shown) == rows
    selected = browser.evaluate("Array.from(document.querySelectorAll('#pairs tr.selected'))"
                                ".map(function (r) { return r.id; })")
    assert sorted(selected) == sorted(f"pair-{i}" for i in rows)
    detail = browser.evaluate("document.getElementById('graph-detail').textContent")
    assert PLANTED in detail and "diverged" in detail

    browser.click("#graph-collapse")
    hidden = next(name for name in forward for b in boxes(browser)
                  if "group" in b["cls"] and inside(name, b))
    browser.evaluate(f"var f = document.getElementById('graph-find'); f.value = {hidden!r};"
                     "f.dispatchEvent(new Event('change'))")   # finding a record opens its modules
    assert {"cls": "node selected", "name": hidden, "members": 1, "first": ""} in boxes(browser)


@needs_chromium
def test_a_replay_marks_both_root_causes(bert_replay, browser):
    report, folder = bert_replay
    causes = [c["b_name"] for c in report.root_causes]
    assert sorted(causes) == ["bert.encoder.layer.0.attention.output.dense",
                              "bert.encoder.layer.2.intermediate.dense"]
    browser.open(folder / "report.html")
    marked = [b for b in boxes(browser) if "root-cause" in b["cls"]]   # or has-root-cause
    for name in causes:
        assert any(inside(name, b) for b in marked), name
    browser.click("#graph-expand-all")
    shown = boxes(browser)
    assert sorted(b["name"] for b in shown if "root-cause" in b["cls"].split()) == sorted(causes)
    assert [b["name"] for b in shown if "first-divergence" in b["cls"].split()] == [
        report.first_divergence.forward.b_name]


@needs_chromium
def test_names_in_the_graph_stay_text(browser, tmp_path):
    hostile = ["<img src=x onerror=\"document.title='pwned'\">", "ok.<b>bold</b>", "</script>"]
    for variant, shift in (("a", 1.0), ("b", 0.0)):
        with td.Recorder(tmp_path / f"{variant}.h5") as rec:
            for i, name in enumerate(hostile):
                rec.forward(name, np.arange(6.0) * (i + 1) + shift * i)
    td.diff(tmp_path / "a.h5", tmp_path / "b.h5").to_html(tmp_path / "report.html")
    browser.open(tmp_path / "report.html")
    browser.click("#graph-expand-all")
    assert sorted(b["name"] for b in boxes(browser)) == sorted(hostile)
    browser.click("#graph g.node[data-first]:not([data-first=''])")
    assert browser.evaluate("document.querySelectorAll('img').length + document.scripts.length") == 2
    assert not browser.evaluate("Array.from(document.querySelectorAll('b')).some("
                                "function (e) { return e.textContent === 'bold'; })")
    assert browser.evaluate("document.title") != "pwned"
    assert hostile[1] in browser.evaluate("document.getElementById('graph-detail').textContent")
