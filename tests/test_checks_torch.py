"""Health checks on traces the torch adapter records: healthy MLP, CNN and transformer block,
trained a few steps, raise no alarm; planted bugs in torch models are named by their check.
Also ``tdt.check_batch_independence`` and ``tdt.overfit_check``."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tracediff as td  # noqa: E402

tdt = pytest.importorskip("tracediff.adapters.torch")
if not hasattr(tdt, "record"):
    pytest.skip("the torch adapter has no record() yet", allow_module_level=True)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


class MLP(nn.Module):
    def __init__(self, act=nn.ReLU, depth=2, width=64, d_in=20, classes=10):
        super().__init__()
        layers, n = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(n, width), act()]
            n = width
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(n, classes)

    def forward(self, x):
        return self.head(self.drop(self.body(x)))


class CNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.pool(self.relu1(self.bn1(self.conv1(x))))
        return self.head(self.gap(self.relu2(self.conv2(h))).flatten(1))


class Block(nn.Module):
    """Embedding, self-attention, feed-forward with residuals and layer norms, LM head."""

    def __init__(self, vocab=50, d=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.ln1 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, 64)
        self.act = nn.GELU()
        self.ff2 = nn.Linear(64, d)
        self.drop = nn.Dropout(0.1)
        self.ln2 = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        h = self.emb(tokens)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.ln1(h + a)
        h = self.ln2(h + self.drop(self.ff2(self.act(self.ff1(h)))))
        return self.head(h)


def mlp_case():
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    return MLP(), x, (lambda out: F.cross_entropy(out, y)), 10


def cnn_case():
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    return CNN(), x, (lambda out: F.cross_entropy(out, y)), 10


def block_case():
    tokens, targets = torch.randint(0, 50, (8, 12)), torch.randint(0, 50, (8, 12))
    return Block(), tokens, (lambda out: F.cross_entropy(out.reshape(-1, 50), targets.reshape(-1))), 50


def train(model, x, loss_fn, path, steps=3, lr=1e-3, values=True, optimizer=torch.optim.Adam):
    opt = optimizer(model.parameters(), lr=lr)
    model.train()
    with tdt.recording(model, path, every=1, values=values) as session:
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x))
            session.loss(loss)
            loss.backward()
            opt.step()
    return path


def alarms(report):
    return {c.id: (c.status, c.message) for c in report.checks if c.status in ("warn", "fail")}


@pytest.mark.parametrize("case", [mlp_case, cnn_case, block_case], ids=["mlp", "cnn", "block"])
def test_healthy_models_trained_a_few_steps_raise_no_alarm(tmp_path, case):
    model, x, loss_fn, classes = case()
    report = td.check(train(model, x, loss_fn, tmp_path / "train.h5"), classes=classes)
    assert alarms(report) == {}
    ran = {c.id for c in report.checks if c.status == "pass"}
    assert {"nonfinite", "initial_loss", "activation_spread", "gradient_flow", "grad_weight_ratio",
            "frozen_params", "update_ratio", "train_mode"} <= ran
    # token ids are not judged as data; float inputs are
    assert report["input_data"].status == ("pass" if x.is_floating_point() else "skip")
    model.eval()
    with torch.no_grad():
        tdt.record(model, x, tmp_path / "eval.h5")
    evaluation = td.check(tmp_path / "eval.h5")
    assert alarms(evaluation) == {}
    assert evaluation["train_mode"].status == "pass"


@pytest.mark.parametrize("case", [mlp_case, cnn_case, block_case], ids=["mlp", "cnn", "block"])
def test_healthy_models_mix_no_samples(case):
    model, x, _, _ = case()
    result = tdt.check_batch_independence(model, x)   # token ids: probed at the embedding
    assert (result.id, result.status) == ("batch_mixing", "pass")
    assert model.training  # the mode is restored


def test_eval_trace_of_a_model_left_in_training_mode_names_dropout_and_batchnorm(tmp_path):
    model, x, _, _ = cnn_case()
    model.train()
    with torch.no_grad():
        tdt.record(model, x, tmp_path / "eval.h5")
    result = td.check(tmp_path / "eval.h5")["train_mode"]
    assert (result.status, result.layers) == ("fail", ["bn1"])
    drop_model, x, _, _ = mlp_case()
    with torch.no_grad():
        tdt.record(drop_model.train(), x, tmp_path / "eval_mlp.h5")
    assert td.check(tmp_path / "eval_mlp.h5")["train_mode"].layers == ["drop"]


def test_dead_relu_from_a_negative_bias_is_named(tmp_path):
    model, x, loss_fn, _ = mlp_case()
    with torch.no_grad():
        model.body[2].bias.fill_(-10.0)
    tdt.record(model, x, tmp_path / "t.h5", loss_fn=loss_fn)
    report = td.check(tmp_path / "t.h5")
    assert (report["dead_units"].status, report["dead_units"].layers) == ("fail", ["body.3"])
    assert report["gradient_flow"].layers[0] == "body.3"


def test_saturated_tanh_from_large_weights_is_named(tmp_path):
    model, x, loss_fn, _ = mlp_case()
    model = MLP(act=nn.Tanh)
    with torch.no_grad():
        model.body[0].weight.mul_(30)
    tdt.record(model, x, tmp_path / "t.h5", loss_fn=loss_fn)
    result = td.check(tmp_path / "t.h5")["saturation"]
    assert (result.status, result.layers[0]) == ("fail", "body.1")
    assert result.details["input_from"]["body.1"] == "producer `body.0`"


def test_deep_sigmoid_model_has_vanishing_gradients(tmp_path):
    model = MLP(act=nn.Sigmoid, depth=10, width=32)
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    tdt.record(model, x, tmp_path / "t.h5", loss_fn=lambda out: F.cross_entropy(out, y))
    result = td.check(tmp_path / "t.h5")["gradient_flow"]
    assert result.status == "fail" and result.value < 1e-5
    assert "`body.0` (first layer)" in result.message


class LogFeatures(nn.Module):
    def forward(self, x):
        return torch.log(x)   # the bug: log of values that can be negative


def test_nan_from_a_log_of_negative_values_is_named_with_its_finite_input(tmp_path):
    model = nn.Sequential(nn.Linear(20, 16), LogFeatures(), nn.Linear(16, 10))
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    tdt.record(model, x, tmp_path / "t.h5", loss_fn=lambda out: F.cross_entropy(out, y))
    result = td.check(tmp_path / "t.h5")["nonfinite"]
    assert result.status == "fail" and result.layers[0] == "1"
    assert result.message.startswith("NaN first appears in the output of `1`, whose input `0` "
                                     "(forward) was finite")


class MaskedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(20, 32)
        self.aux = nn.Linear(32, 10)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.fc(x))
        return self.head(h) + 0 * self.aux(h)   # the bug: the aux branch is multiplied out


def test_parameters_of_a_masked_branch_are_frozen(tmp_path):
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    tdt.record(MaskedBranch(), x, tmp_path / "t.h5", loss_fn=lambda out: F.cross_entropy(out, y))
    result = td.check(tmp_path / "t.h5")["frozen_params"]
    assert (result.status, result.layers) == ("fail", ["aux.weight", "aux.bias"])


def test_overconfident_head_fails_the_initial_loss(tmp_path):
    model, x, loss_fn, _ = mlp_case()
    with torch.no_grad():
        model.head.weight.mul_(100)
    tdt.record(model, x, tmp_path / "t.h5", loss_fn=loss_fn)
    result = td.check(tmp_path / "t.h5", classes=10)["initial_loss"]
    assert (result.status, result.layers) == ("fail", ["<root>", "loss"])


def test_learning_rate_far_too_high_fails_the_update_ratio(tmp_path):
    model, x, loss_fn, _ = mlp_case()
    path = train(model, x, loss_fn, tmp_path / "t.h5", lr=50.0, optimizer=torch.optim.SGD, values=False)
    result = td.check(path)["update_ratio"]
    assert result.status == "fail" and result.value > 1


class ViewMixesBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h.t().reshape(x.shape[0], -1))   # the bug: transpose then view


def test_batch_mixing_view_is_caught_and_located():
    model = ViewMixesBatch()
    result = tdt.check_batch_independence(model, torch.randn(5, 6))
    assert (result.status, result.layers) == ("fail", ["fc2"])
    assert "first mixing output: `fc2`" in result.message


def test_attention_over_the_batch_axis_is_caught_through_token_embeddings():
    model, tokens, _, _ = block_case()
    model.attn.batch_first = False   # the bug: (batch, seq, d) read as (seq, batch, d)
    result = tdt.check_batch_independence(model, tokens)
    assert (result.status, result.layers) == ("fail", ["attn"])


def test_batch_independence_results_join_a_trace_report(tmp_path):
    model, x, loss_fn, _ = mlp_case()
    tdt.record(model, x, tmp_path / "t.h5", loss_fn=loss_fn)
    mixing = tdt.check_batch_independence(ViewMixesBatch(), torch.randn(5, 6))
    report = td.check(tmp_path / "t.h5", extra=[mixing])
    assert report.checks[-1].id == "batch_mixing" and not report.ok


def test_overfit_a_tiny_batch_with_a_healthy_model_and_not_with_a_detached_one():
    x, y = torch.randn(8, 20), torch.randint(0, 10, (8,))
    model = MLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = tdt.overfit_check(model, (x, y), F.cross_entropy, steps=80, lr=1e-2)
    assert good.status == "pass" and good.curve[-1] < 0.05 * good.curve[0]
    assert len(good.curve) == 80
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # restored

    class Detached(MLP):
        def forward(self, x):
            return self.head(self.body(x).detach() * 0)   # the bug: no signal reaches the body
    bad = tdt.overfit_check(Detached(), (x, y), F.cross_entropy, steps=80, lr=1e-2)
    assert bad.status == "fail" and bad.message.startswith("cannot overfit a tiny batch")


def test_overfit_needs_two_samples():
    with pytest.raises(td.TraceDiffError, match="the batch has 1 sample"):
        tdt.overfit_check(MLP(), (torch.randn(1, 20), torch.tensor([1])), F.cross_entropy)
