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
