"""Planted bugs in a Hugging Face GPT-2 (built from a config, no download) found by replay
against the correct model's trace: each bug is the only root cause, named at its layer, and the
correct copy has none, although every layer after a bug diverges in a plain diff."""
import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A 3-block GPT-2 (head size 11, 2 heads, vocabulary 53), eager attention, and its trace
    on a batch whose second row is padded."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=53, n_positions=17, n_embd=22, n_layer=3,
                                     n_head=2, n_inner=26, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 53, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    path = tmp_path_factory.mktemp("gpt2") / "ref.h5"
    tdt.record(model, {"input_ids": ids, "attention_mask": mask}, path)
    return model, path


def causes(model, path):
    return [(c["kind"], c["b_name"]) for c in td.replay(model, path).root_causes]


def test_a_correct_copy_has_no_root_cause_in_float32_or_float64(gpt2):
    """The float32 copy computes every layer bit for bit as recorded (replay takes it from the
    recording); the float64 copy runs every layer on the reference's values and is within
    float32's tolerance everywhere."""
    model, path = gpt2
    assert causes(copy.deepcopy(model), path) == []
    report = td.replay(copy.deepcopy(model).double(), path)
    forward = [p for p in report.pairs if p.kind == "forward"]
    assert report.root_causes == [] and len(forward) > 30
    assert all(p.local["status"] == "ok" and "from" not in p.local for p in forward)


def test_a_wrong_layer_norm_epsilon_is_the_only_root_cause(gpt2):
    model, path = gpt2
    bad = copy.deepcopy(model)
    bad.transformer.h[1].ln_2.eps = 0.1          # 1e-5 in the reference
    report = td.replay(bad, path)
    assert [(c["kind"], c["b_name"]) for c in report.root_causes] == [
        ("forward", "transformer.h.1.ln_2")]
    after = [p for p in report.pairs if p.kind == "forward" and p.diverged
             and p.b_name != "transformer.h.1.ln_2"]
    assert any(p.b_name.startswith("transformer.h.2") for p in after)
    assert all(p.local["status"] == "ok" for p in after if p.b_name.startswith("transformer.h.2"))


def test_attention_scores_left_unscaled_are_named_at_the_module_that_reads_them(gpt2):
    """The 1/sqrt(head size) is applied by functional code inside the attention module, between
    its c_attn and c_proj: replay runs that code on the reference's c_attn output, so the error
    is c_proj's own local error, and the only root cause."""
    model, path = gpt2
    bad = copy.deepcopy(model)
    bad.transformer.h[2].attn.scaling = 1.0      # the bug: no 1/sqrt(11)
    assert causes(bad, path) == [("forward", "transformer.h.2.attn.c_proj")]


def test_a_wrong_projection_before_functional_attention_code_is_the_only_root_cause(gpt2):
    """c_attn's output reaches c_proj only through functional code (split into heads, softmax,
    matmul): replay hands that code the reference's c_attn output, not the wrong local one, so
    c_proj, right on the reference's values, is not blamed for c_attn's mistake."""
    model, path = gpt2
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.transformer.h[1].attn.c_attn.weight.mul_(1.01)
    report = td.replay(bad, path)
    assert [(c["kind"], c["b_name"]) for c in report.root_causes] == [
        ("forward", "transformer.h.1.attn.c_attn")]
    assert report.root_causes[0]["hint"].startswith("a = 1.01 x b")
    c_proj = next(p for p in report.pairs if p.b_name == "transformer.h.1.attn.c_proj")
    assert c_proj.diverged and c_proj.local["status"] == "ok"


@pytest.fixture(scope="module")
def gpt2_trained(tmp_path_factory):
    """The tiny GPT-2 of ``gpt2`` with its language-modelling loss: a trace with gradients. Its
    lm_head shares its weight with the token embedding (tied, as in every GPT-2)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=53, n_positions=17, n_embd=22, n_layer=2,
                                     n_head=2, n_inner=26, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    ids = torch.randint(0, 53, (2, 7), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "labels": ids}
    path = tmp_path_factory.mktemp("gpt2_trained") / "ref.h5"
    tdt.record(model, inputs, path, loss_fn=lambda out: out.loss)
    return model, path


def test_a_float64_copy_replayed_backward_has_no_root_cause(gpt2_trained):
    """A float64 copy runs every layer and every VJP again (nothing is taken from the
    recording), and two gradients need care:
    - the tied weight's: the reference's sums the embedding's and lm_head's shares, recorded
      once as transformer.wte.weight; replay's must sum both too;
    - c_attn's output's: c_proj's VJP reaches it through the values, and the attention
      module's own VJP (from the weights it returns, which its matmul also reads) through
      the queries and keys; c_proj's must stop at those weights, or the query/key path counts
      twice."""
    model, path = gpt2_trained
    report = td.replay(copy.deepcopy(model).double(), path, loss_fn=lambda out: out.loss)
    assert report.root_causes == []
    tied = next(p for p in report.pairs if p.kind == "param_grad"
                and p.b_name == "transformer.wte.weight")
    assert tied.local["status"] == "ok" and "from" not in tied.local
    for block in ("0", "1"):
        c_attn = next(p for p in report.pairs if p.kind == "backward"
                      and p.b_name == f"transformer.h.{block}.attn.c_attn")
        assert c_attn.local["status"] == "ok"
        assert c_attn.local["by"] == [f"transformer.h.{block}.attn.c_proj",
                                      f"transformer.h.{block}.attn"]


def test_a_wrong_projection_with_gradients_is_still_the_only_root_cause(gpt2_trained):
    model, path = gpt2_trained
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.transformer.h[1].attn.c_attn.weight.mul_(1.01)
    assert causes_with_loss(bad, path) == [("forward", "transformer.h.1.attn.c_attn")]


def causes_with_loss(model, path):
    return [(c["kind"], c["b_name"])
            for c in td.replay(model, path, loss_fn=lambda out: out.loss).root_causes]
