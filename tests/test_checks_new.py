"""The checks added for real training code: loss_input, batchnorm_batch, labels, regularisation
(one planted bug and one healthy case each), and the two misses of the first checks: a fully dead
ReLU layer seen on a batch of 7, a weight frozen while its bias trains."""
from __future__ import annotations

import numpy as np
import pytest

import tracediff as td
from checks_nets import mlp_trace

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

tdt = pytest.importorskip("tracediff.adapters.torch")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


X, Y = torch.randn(16, 20), torch.randint(0, 10, (16,))


def head(final=None):
    layers = [nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10)]
    return nn.Sequential(*layers, *([final] if final is not None else []))


@pytest.mark.parametrize("final, loss, status, text", [
    (nn.Softmax(dim=1), F.cross_entropy, "fail", "is a cross-entropy of probabilities"),
    (None, F.nll_loss, "fail", "is an NLL of logits"),
    (nn.Softmax(dim=1), F.nll_loss, "fail", "is an NLL of probabilities"),
    (None, F.cross_entropy, "pass", "holds logits"),
    (nn.LogSoftmax(dim=1), F.nll_loss, "pass", "holds log-probabilities"),
])
def test_loss_input_names_what_the_loss_was_fed(tmp_path, final, loss, status, text):
    tdt.record(head(final), X, tmp_path / "t.h5", loss_fn=lambda out: loss(out, Y))
    result = td.check(tmp_path / "t.h5", classes=10)["loss_input"]
    assert result.status == status and text in result.message
    if status == "fail":
        assert result.layers == ["<root>", "loss"]


@pytest.mark.parametrize("batch, status", [(2, "fail"), (8, "pass")])
def test_batchnorm_on_two_values_per_channel_fails_and_eight_pass(tmp_path, batch, status):
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 10))
    x, y = torch.randn(batch, 4, 1, 1), torch.randint(0, 10, (batch,))
    tdt.record(model.train(), x, tmp_path / "t.h5", loss_fn=lambda out: F.cross_entropy(out, y))
    result = td.check(tmp_path / "t.h5")["batchnorm_batch"]
    assert (result.status, result.value) == (status, batch)
    if status == "fail":
        assert result.layers == ["1"]
        assert result.message.startswith("`1` normalises 2 value(s) per channel (output shape [2, 8, 1, 1])")
        assert "below 8, fail at 2 or fewer" in result.threshold


def lm_trace(path, labels, **loss_meta):
    rng = np.random.default_rng(0)
    with td.Recorder(path, framework="torch") as rec:
        rec.input("input_ids", labels)
        rec.input("labels", labels)
        rec.forward("<root>", rng.standard_normal((*labels.shape, 50)).astype(np.float32) * 0.1)
        rec.loss(np.float32(np.log(50)), **loss_meta)
    return td.check(path)["labels"]


def padded_batch(pad=0):
    labels = np.random.default_rng(1).integers(1, 50, (8, 16))
    labels[:, 6:] = pad   # 10 of 16 positions are padding
    return labels


def test_padding_counted_in_a_language_model_loss_fails(tmp_path):
    result = lm_trace(tmp_path / "a.h5", padded_batch(), pad_id=0)
    assert (result.status, result.layers) == ("fail", ["labels"])
    assert result.message.startswith("padding counted in the loss: the pad id 0 is 62% of the targets")
    ignored = lm_trace(tmp_path / "b.h5", padded_batch(-100), ignore_index=-100, pad_id=0)
    assert ignored.status == "pass" and "(80 ignored: ignore_index -100)" in ignored.message
    unknown = lm_trace(tmp_path / "c.h5", padded_batch())
    assert unknown.status == "warn" and "if it is padding, the loss counts it" in unknown.message


def test_labels_out_of_range_and_one_class_batches(tmp_path):
    out = lm_trace(tmp_path / "a.h5", np.arange(1, 9) * 7)   # up to 56 for 50 classes
    assert out.status == "fail" and out.message == "1 label(s) of `labels` outside 0..49 (from 56 to 56)"
    one = lm_trace(tmp_path / "b.h5", np.full(8, 3))
    assert one.status == "warn" and one.message == "all 8 labels of `labels` are class 3"
    fine = lm_trace(tmp_path / "c.h5", np.arange(8) * 6)
    assert fine.status == "pass"


def reg_trace(path, penalty):
    with td.Recorder(path, framework="torch") as rec:
        rec.forward("<root>", np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32))
        rec.loss(np.float32(2.3))
        rec.loss(np.float32(penalty), name="reg/weight_decay", term="regularisation")
    return td.check(path, classes=10)


def test_regularisation_outweighing_the_data_loss_fails(tmp_path):
    report = reg_trace(tmp_path / "a.h5", 46.0)
    result = report["regularisation"]
    assert (result.status, result.layers) == ("fail", ["reg/weight_decay", "loss"])
    assert result.message.startswith("regularisation outweighs the data loss: regularisation 46")
    assert report["initial_loss"].details["loss"] == pytest.approx(2.3)   # the data term
    healthy = reg_trace(tmp_path / "b.h5", 0.01)["regularisation"]
    assert healthy.status == "pass" and abs(healthy.value - 0.01 / 2.3) < 1e-6


def test_fully_dead_relu_layer_is_certain_at_batch_seven(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((7, 20)).astype(np.float32), rng.integers(0, 10, 7)
    path = mlp_trace(str(tmp_path / "t.h5"), widths=(20, 17, 10), x=x, y=y, bias={0: -10.0})
    dead = td.check(path)["dead_units"]
    assert (dead.status, dead.layers, dead.value) == ("fail", ["act0"], 1.0)
    healthy = td.check(mlp_trace(str(tmp_path / "h.h5"), widths=(20, 17, 10), x=x, y=y))["dead_units"]
    assert healthy.status == "pass"


def test_weight_frozen_while_its_bias_trains_is_named(tmp_path):
    model = head()
    model[2].weight.requires_grad_(False)   # the bug: only the bias of the last layer trains
    tdt.record(model, X, tmp_path / "t.h5", loss_fn=lambda out: F.cross_entropy(out, Y))
    result = td.check(tmp_path / "t.h5")["frozen_params"]
    assert (result.status, result.layers) == ("warn", ["2.weight"])
    assert result.message.startswith("`2.weight` marked requires_grad=False while the bias of the same layer trains")
    model[2].requires_grad_(False)           # a whole layer frozen on purpose: no alarm
    tdt.record(model, X, tmp_path / "f.h5", loss_fn=lambda out: F.cross_entropy(out, Y))
    assert td.check(tmp_path / "f.h5")["frozen_params"].status == "pass"


def gpt2_padded(mask_padding):
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                       pad_token_id=0))
    ids = torch.randint(1, 64, (4, 16))
    ids[:, 6:] = 0                                  # right padding: 10 of 16 positions
    labels = ids.clone()
    if mask_padding:
        labels[ids == 0] = -100                     # the fix: padding ignored by the loss
    return model, {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}


@pytest.mark.parametrize("mask_padding, status", [(False, "fail"), (True, "pass")])
def test_hugging_face_lm_loss_counting_padding_is_caught(tmp_path, mask_padding, status):
    model, inputs = gpt2_padded(mask_padding)
    tdt.record(model, inputs, tmp_path / "t.h5", loss_fn=lambda out: out.loss)
    loss = td.open(tmp_path / "t.h5").records(kind="loss")[0]
    assert (loss.meta["ignore_index"], loss.meta["pad_id"]) == (-100, 0)   # from the model
    result = td.check(tmp_path / "t.h5")["labels"]
    assert result.status == status
    if status == "fail":
        assert result.message.startswith("padding counted in the loss: the pad id 0 is 62% of "
                                         "the targets in `input:labels`")


def test_ignore_index_of_a_loss_module_in_the_loss_function_is_recorded(tmp_path):
    criterion = nn.CrossEntropyLoss(ignore_index=3)
    tdt.record(head(), X, tmp_path / "t.h5", loss_fn=lambda out: criterion(out, Y))
    assert td.open(tmp_path / "t.h5").records(kind="loss")[0].meta["ignore_index"] == 3
    tdt.record(head(), X, tmp_path / "u.h5", loss_fn=lambda out: criterion(out, Y),
               loss_meta={"ignore_index": 5, "pad_id": 5})
    assert td.open(tmp_path / "u.h5").records(kind="loss")[0].meta["pad_id"] == 5


def test_loss_meta_that_is_no_dict_is_a_one_line_error(tmp_path):
    with pytest.raises(td.TraceDiffError, match=r"^loss_meta must be a dict such as \{'ignore_index': "
                       r"-100, 'pad_id': 0\}, got int$"):
        tdt.record(head(), X, tmp_path / "t.h5", loss_fn=lambda out: F.cross_entropy(out, Y), loss_meta=5)
