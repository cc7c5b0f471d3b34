"""Layer replay of torch candidates: each module run on the reference's inputs, every root cause
named, a correct model none — on real architectures (Hugging Face ResNet, BERT) built from
configs."""
import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import torch.nn.functional as F  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.cli import main  # noqa: E402
from tracediff.replays import shortcut  # noqa: E402


def resnet():
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                       depths=[1, 1], layer_type="basic", num_labels=5)
    return transformers.ResNetForImageClassification(config).train()


def mlp(width=13, blocks=10):
    """A deep tanh MLP with orthogonal weights: errors neither die out nor explode with depth,
    so an early bug's error is still there, at full size, many layers later."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(7, width), torch.nn.Tanh()]
    for _ in range(blocks):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 5))
    for module in model:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.orthogonal_(module.weight, gain=1.5)
    return model


IMAGES = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 1, 2, 3])


def image_loss(out):
    return F.cross_entropy(out.logits, LABELS)


@pytest.fixture(scope="module")
def resnet_reference(tmp_path_factory):
    """A training step of the ResNet (BatchNorm in training mode, residual shortcuts), and the
    model as it was before it (the step moves the running statistics)."""
    model = resnet()
    before = copy.deepcopy(model.state_dict())
    path = tmp_path_factory.mktemp("replay") / "resnet.h5"
    tdt.record(model, IMAGES, path, loss_fn=image_loss)
    model.load_state_dict(before)
    return model, path


def test_a_model_replayed_against_its_own_trace_has_no_root_cause(resnet_reference):
    model, path = resnet_reference
    report = td.replay(model, path, loss_fn=image_loss)
    assert report.ok
    assert report.root_causes == []
    summary = report.replay_summary()
    forward = [p for p in report.pairs if p.kind == "forward"]
    assert summary["skipped"] == 0
    backward = [p for p in report.pairs if p.kind == "backward" and p.local is not None]
    assert summary["replayed"] == (len(forward) + len(backward)
                                   + sum(p.kind == "param_grad" for p in report.pairs))
    assert all(p.local["status"] == "ok" for p in forward + backward)
    # dL/d(input) by each layer's VJP: all but what the loss consumes (no layer's backward)
    assert {p.a_name for p in report.pairs if p.kind == "backward" and p.local is None} == {
        "classifier", "classifier.1", "<root>:logits"}
    # a residual block's input feeds its first conv and, through the identity shortcut, the
    # in-place add that the activation after it reads: the sum of both VJPs
    block_input = next(p for p in backward if p.a_name == "resnet.embedder.pooler")
    assert block_input.local["by"] == ["resnet.encoder.stages.0.layers.0.layer.0.convolution",
                                       "resnet.encoder.stages.0.layers.0.activation"]
    # the two VJPs are summed in float64 and judged in the reference's float32, where two
    # terms add up as the reference's own sum did: bit for bit
    assert block_input.local["rel_l2"] == 0.0 and block_input.local["sqnr_db"] == float("inf")


def test_replay_leaves_the_model_as_it_found_it(resnet_reference):
    model, path = resnet_reference
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    td.replay(model, path, loss_fn=image_loss)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes


def test_a_perturbed_conv_deep_in_a_resnet_is_the_only_root_cause(resnet_reference):
    model, path = resnet_reference
    bad = copy.deepcopy(model)
    target = "resnet.encoder.stages.1.layers.0.layer.0.convolution"
    with torch.no_grad():
        weight = bad.get_submodule(target).weight
        weight.mul_(1 + 0.01 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(2)))
    report = td.replay(bad, path, loss_fn=image_loss)
    assert [(c["b_name"], c["kind"]) for c in report.root_causes] == [(target, "forward")]
    assert report.first_divergence.forward.b_name == target
    assert report.first_divergence.forward.introduced["verdict"] == "introduced here"
    # everything after it diverges, but on the reference's inputs it is all correct
    after = [p for p in report.pairs if p.kind == "forward" and p.diverged and p.b_name != target]
    assert after and all(p.local["status"] == "ok" for p in after)


def test_two_bugs_are_both_named_the_late_one_hidden_in_the_early_ones_error(tmp_path):
    model = mlp()
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(3))
    tdt.record(model, x, tmp_path / "ref.h5")
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[2].weight.mul_(1.05)       # early: its error spreads to every later layer
        bad[18].bias.add_(2e-3)        # late: smaller than what it inherits there
    report = td.replay(bad, tmp_path / "ref.h5")
    at_18 = next(p for p in report.pairs if p.kind == "forward" and p.b_name == "18")
    assert at_18.diverged and at_18.rel_l2 > 10 * at_18.local["rel_l2"]
    assert [c["b_name"] for c in report.root_causes] == ["2", "18"]
    assert report.root_causes[1]["hint"].startswith("a = b + 0.002")
    assert td.diff(tmp_path / "ref.h5", tmp_path / "ref.h5").root_causes is None


def test_attention_modules_keep_their_masks_when_replayed(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=3)
    bert = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    tdt.record(bert, inputs, tmp_path / "bert.h5")
    assert td.replay(bert, tmp_path / "bert.h5").root_causes == []
    bad = copy.deepcopy(bert)
    target = "bert.encoder.layer.1.intermediate.dense"
    with torch.no_grad():
        bad.get_submodule(target).bias.add_(0.1)
    causes = td.replay(bad, tmp_path / "bert.h5").root_causes
    assert [c["b_name"] for c in causes] == [target]


def test_attention_probabilities_returned_and_read_backward_are_judged_once(
        tmp_path, monkeypatch):
    """BERT's self-attention returns its probabilities, which its own matmul also reads: the
    reference's dL/d(probabilities) already holds that path, so the module's VJP seeds them
    with it alone, not with it plus the path again. With every layer and VJP run again (the
    shortcut off): no root cause, dL/d of the query, key and value bit for bit; a wrong
    query: that alone."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=61, hidden_size=22, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=26,
                                     max_position_embeddings=17, attn_implementation="eager")
    bert = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 61, (3, 7), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "labels": torch.tensor([0, 1, 0])}

    def loss(out):
        return out.loss

    tdt.record(bert, inputs, tmp_path / "bert.h5", loss_fn=loss)
    monkeypatch.setattr(shortcut, "ENABLED", False)
    report = td.replay(bert, tmp_path / "bert.h5", loss_fn=loss)
    assert report.root_causes == []
    backward = {p.b_name.rpartition("attention.")[2]: p.local for p in report.pairs
                if p.kind == "backward" and p.b_name.startswith("bert.encoder.layer.0.attention")}
    for name in ("self.query", "self.key", "self.value"):
        assert backward[name]["status"] == "ok" and backward[name]["rel_l2"] == 0.0, name
    assert backward["self:1"] is None    # no other layer reads the probabilities: not judged
    bad = copy.deepcopy(bert)
    target = "bert.encoder.layer.0.attention.self.query"
    with torch.no_grad():
        bad.get_submodule(target).weight.mul_(1.01)
    assert [(c["kind"], c["b_name"]) for c in td.replay(bad, tmp_path / "bert.h5",
                                                       loss_fn=loss).root_causes] == [
        ("forward", target)]


def test_the_cli_names_the_root_causes_and_writes_them_to_json(tmp_path, monkeypatch, capsys):
    (tmp_path / "ports.py").write_text(
        "import copy, torch\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.ReLU(), torch.nn.Linear(11, 5))\n"
        "bad = copy.deepcopy(model)\n"
        "with torch.no_grad():\n"
        "    bad[2].bias.add_(0.5)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ports
    tdt.record(ports.model, torch.randn(3, 7), tmp_path / "ref.h5")
    assert main(["replay", "ports:model", "ref.h5", "--json", "clean.json"]) == 0
    assert main(["replay", "ports:bad", "ref.h5", "--json", "bad.json"]) == 1
    out = capsys.readouterr().out
    assert "1 root cause(s), worst first:\n  forward 2 local rel_l2" in out
    bad = json.loads((tmp_path / "bad.json").read_text())
    assert [c["b_name"] for c in bad["root_causes"]] == ["2"]
    assert bad["replay"] == {"replayed": 4, "skipped": 0, "skipped_why": {}}
    # the model returns layer 2's output, which replay hands on as the reference's value: the
    # model's own code around its layers is right
    assert {p["b_name"]: p["local"]["status"] for p in bad["pairs"] if p["kind"] == "forward"} \
        == {"0": "ok", "1": "ok", "2": "diverged", "<root>": "ok"}
    assert json.loads((tmp_path / "clean.json").read_text())["root_causes"] == []


@pytest.mark.parametrize("argv, message", [
    (["replay", "ports", "ref.h5"], "tracediff replay: error: CANDIDATE 'ports' is not "
     "package.module:object: name the module and the object in it, e.g. mymodels.resnet:model"),
    (["replay", "nowhere:model", "ref.h5"], "tracediff replay: error: CANDIDATE: cannot import "
     "'nowhere' (No module named 'nowhere'); run from the folder that holds it or install it"),
    (["replay", "ports:model", "stats.h5"], "tracediff replay: error: replay: stats.h5 holds "
     "statistics only for 'input' (recorded with values=False): replay runs layers on the "
     "reference's tensors; record the reference again with values=True"),
])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    (tmp_path / "ports.py").write_text(
        "import torch\nmodel = torch.nn.Sequential(torch.nn.Linear(7, 5))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ports
    tdt.record(ports.model, torch.randn(3, 7), tmp_path / "stats.h5", values=False)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_a_numpy_port_replays_layer_by_layer(tmp_path):
    """A NumPy port declares its layers as functions; replay runs each on the torch
    reference's inputs and names the one that is wrong."""
    model = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.ReLU(), torch.nn.Linear(11, 5))
    x = np.random.default_rng(5).standard_normal((3, 7))
    tdt.record(model, torch.tensor(x, dtype=torch.float32), tmp_path / "ref.h5")
    w1, b1, w2, b2 = (p.detach().double().numpy() for p in model.parameters())
    layers = {"0": lambda h: h @ w1.T + b1, "1": lambda h: np.maximum(h, 0),
              "2": lambda h: h @ w2.T}                       # the bug: no bias

    def port(rec, x):
        h = x
        for name in ("0", "1", "2"):
            h = layers[name](h)
            rec.forward(name, h)
        return h

    report = td.replay(port, tmp_path / "ref.h5", layers=layers)
    assert [c["b_name"] for c in report.root_causes] == ["2"]
    assert report.root_causes[0]["hint"].startswith("missing or wrong bias")
    layers["2"] = lambda h: h @ w2.T + b2
    assert td.replay(port, tmp_path / "ref.h5", layers=layers).root_causes == []


def test_markdown_and_html_show_the_root_causes(tmp_path):
    model = mlp(blocks=2)
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(6))
    tdt.record(model, x, tmp_path / "ref.h5")
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[4].bias.add_(0.25)
    report = td.replay(bad, tmp_path / "ref.h5")
    markdown = report.to_markdown()
    assert ("### Root causes (replay)\n\n8 pairs run on the reference's inputs, 0 skipped\n\n"
            "- forward `4`, local rel_l2 ") in markdown
    assert "| match | local |" in markdown and "| diverged (rel_l2 " in markdown
    html = report.to_html()
    assert '<section id="root-causes"><h2>Root causes (replay)</h2>' in html
    assert '"name":"4","a":"4","status":"diverged","value":' in html and '"cause":true' in html
    plain = td.diff(tmp_path / "ref.h5", tmp_path / "ref.h5")
    assert "Root causes" not in plain.to_markdown() and "root-causes" not in plain.to_html()


def test_extract_writes_a_repro_that_fails_on_the_bug_and_passes_on_the_fix(tmp_path, monkeypatch):
    import subprocess
    import sys
    (tmp_path / "ports.py").write_text(
        "import copy, torch\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.Tanh(), torch.nn.Linear(11, 5))\n"
        "bad = copy.deepcopy(model)\n"
        "with torch.no_grad():\n"
        "    bad[2].weight.mul_(1.01)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ports
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(7))
    tdt.record(ports.model, x, tmp_path / "ref.h5")
    tdt.record(ports.bad, x, tmp_path / "bad.h5")
    for spec, folder in (("ports:bad", "repro_bad"), ("ports:model", "repro_good")):
        assert main(["extract", "bad.h5", "ref.h5", "--layer", "2", "--candidate", spec,
                     "--out", folder]) == 0
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["2.h5", "test_2.py"]
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    failing = subprocess.run(run + ["repro_bad/test_2.py"], capture_output=True, text=True,
                             cwd=tmp_path)
    assert failing.returncode == 1
    assert "AssertionError: 2 of ports:bad on the reference's inputs differs from the reference: " \
           "local rel_l2 " in failing.stdout
    passing = subprocess.run(run + ["repro_good/test_2.py"], capture_output=True, text=True,
                             cwd=tmp_path)
    assert passing.returncode == 0, passing.stdout


def test_dropout_recorded_in_training_mode_is_skipped_not_blamed(tmp_path, monkeypatch):
    """Recorded in training mode, each dropout drew a random mask; replay runs dropout off, so
    a dropout's own output and VJP cannot be the recorded ones: its pair is skipped with the
    reason, what it consumed is left unjudged backward, and the layers after it, handed the
    reference's masked values, are judged as usual. The copy with every layer run again (no
    result taken from the recording): no root cause; a wrong last layer: that layer alone."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(11, 13), torch.nn.Dropout(0.3),
                                torch.nn.Linear(13, 5)).train()
    labels = torch.tensor([0, 4, 2])

    def loss_fn(out):
        return F.cross_entropy(out, labels)

    tdt.record(model, torch.randn(3, 7), tmp_path / "ref.h5", loss_fn=loss_fn)
    monkeypatch.setattr(shortcut, "ENABLED", False)
    report = td.replay(copy.deepcopy(model), tmp_path / "ref.h5", loss_fn=loss_fn)
    assert report.root_causes == []
    reason = ("skipped: a dropout recorded in training mode: its mask was random, and replay "
              "runs it off")
    assert {p.b_name: p.local["status"] for p in report.pairs if p.kind == "forward"} == {
        "0": "ok", "1": "ok", "2": reason, "3": "ok", "4": reason, "5": "ok", "<root>": "ok"}
    backward = {p.b_name: (p.local or {}).get("status") for p in report.pairs
                if p.kind == "backward"}
    assert backward["4"] == "ok" and backward["3"] is None      # 3 feeds dropout 4 only
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[5].weight.mul_(1.01)
    assert [(c["kind"], c["b_name"]) for c in
            td.replay(bad, tmp_path / "ref.h5", loss_fn=loss_fn).root_causes] == [("forward", "5")]


def test_a_wrong_layer_with_several_outputs_is_one_root_cause(tmp_path):
    """An LSTM returns its output and (h, c): a wrong recurrent weight makes all three diverge
    on the reference's inputs, one mistake, one root cause (its worst output); the LayerNorm
    reading output and h together is right."""
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(19, 7)
            self.lstm = torch.nn.LSTM(7, 11, batch_first=True, num_layers=2)
            self.norm, self.head = torch.nn.LayerNorm(11), torch.nn.Linear(11, 5)

        def forward(self, x):
            out, (h, _) = self.lstm(self.emb(x))
            return self.head(self.norm(out[:, -1] + h[-1]))

    model = Model().eval()
    tokens = torch.randint(0, 19, (3, 5), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 4])

    def loss(out):
        return F.cross_entropy(out, labels)

    tdt.record(model, tokens, tmp_path / "ref.h5", loss_fn=loss)
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.lstm.weight_hh_l1.mul_(1.01)
    report = td.replay(bad, tmp_path / "ref.h5", loss_fn=loss)
    outputs = {p.b_name: p.local["status"] for p in report.pairs if p.kind == "forward"
               and p.b_name.startswith(("lstm", "norm"))}
    assert outputs == {"lstm:0": "diverged", "lstm:1:0": "diverged", "lstm:1:1": "diverged",
                       "norm": "ok"}
    assert [(c["kind"], c["b_name"].partition(":")[0]) for c in report.root_causes] == [
        ("forward", "lstm")]
