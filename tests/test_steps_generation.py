"""Issue 22 §1: a Hugging Face causal LM's ``generate`` with its KV cache, recorded per decode
step, against the same model run once on the whole generated sequence: decode step t is
compared with the positions it computed. A cache bug is named at its decode step and layer."""
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

PROMPT = [[5, 7, 11, 13, 17]]
NEW_TOKENS = 4


class ShiftedPositions(transformers.GPT2LMHeadModel):
    """A port whose generation loop gives each new token the position of the token before."""

    def prepare_inputs_for_generation(self, *args, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        if inputs.get("position_ids") is not None and inputs["position_ids"].shape[1] == 1:
            inputs["position_ids"] = inputs["position_ids"] - 1
        return inputs


class StaleCache(transformers.GPT2LMHeadModel):
    """A port whose cache keeps a stale value entry: once 7 positions are cached, layer 1's
    value at position 2 is overwritten by position 1's."""

    def prepare_inputs_for_generation(self, *args, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        cache = inputs.get("past_key_values")
        if cache is not None and cache.get_seq_length() == 7:
            cache.layers[1].values[:, :, 2] = cache.layers[1].values[:, :, 1]
        return inputs


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=61, n_positions=32, n_embd=22, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    return config, transformers.GPT2LMHeadModel(config).eval().state_dict()


def _generate_and_diff(tmp_path, weights, cls):
    config, state = weights
    model = cls(config).eval()
    model.load_state_dict(state)
    generated = tdt.record_generation(model, torch.tensor(PROMPT), tmp_path / "gen.h5",
                                      max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.load_state_dict(state)
    with torch.no_grad():
        tdt.record(reference, {"input_ids": generated}, tmp_path / "full.h5")
    return td.diff(tmp_path / "gen.h5", tmp_path / "full.h5")


def test_the_cached_generation_matches_the_whole_sequence_run(tmp_path, weights, torch_one_thread):
    report = _generate_and_diff(tmp_path, weights, transformers.GPT2LMHeadModel)
    assert report.ok, report.first_divergence.forward
    trace = td.open(tmp_path / "gen.h5")
    assert trace.decode_steps == list(range(NEW_TOKENS)) and trace.steps == [-1]
    assert trace.get("transformer.h.0", decode_step=0).shape == (1, 5, 22)
    assert trace.get("transformer.h.0", decode_step=2).meta["positions"] == [6, 7]
    # every decode step's layers were compared, each with its slice of the whole run
    pairs = [p for p in report.pairs if p.b_name == "transformer.h.1"]
    assert [(p.decode_step, p.shape_a, p.shape_b) for p in pairs] == \
        [(0, [1, 5, 22], [1, 5, 22])] + [(t, [1, 1, 22], [1, 1, 22]) for t in range(1, NEW_TOKENS)]
    # generate computes the prompt's logits at its last position only: compared with that one
    assert next(p for p in report.pairs if p.b_name == "lm_head").status == "ok"
    # only parameters are recorded once; the train_mode check reads no training here
    assert len(trace.records(kind="param", name="transformer.wte.weight")) == 1
    check = next(c for c in td.check(tmp_path / "gen.h5").to_dict()["checks"] if c["id"] == "train_mode")
    assert check["status"] == "pass"
    # the other way round (the whole run as the candidate) slices the candidate instead
    assert td.diff(tmp_path / "full.h5", tmp_path / "gen.h5").ok


def test_a_model_without_generate_is_refused_with_one_line(tmp_path):
    with pytest.raises(td.TraceDiffError, match=r"record_generation needs a model with a generate method"):
        tdt.record_generation(torch.nn.Linear(3, 2), torch.ones(1, 3), tmp_path / "t.h5")


def test_wrong_position_ids_are_named_at_the_first_decode_step(tmp_path, weights, torch_one_thread):
    report = _generate_and_diff(tmp_path, weights, ShiftedPositions)
    first = json.loads(report.to_json())["first_divergence"]
    assert (first["decode_step"], first["forward"]["b_name"]) == (1, "transformer.wpe")
    assert first["forward"]["decode_step"] == 1
    prompt = [p for p in report.pairs if p.decode_step == 0]
    assert prompt and not any(p.diverged for p in prompt)
    # the generation's position ids have no input of that name in the whole run: listed, per step
    unmatched = json.loads(report.to_json())["unmatched_records"]["a"]
    assert [(r["name"], r["decode_step"]) for r in unmatched] == \
        [("input:position_ids", t) for t in range(NEW_TOKENS)]


def test_a_stale_cache_entry_is_named_at_its_decode_step_and_layer(tmp_path, weights, torch_one_thread):
    report = _generate_and_diff(tmp_path, weights, StaleCache)
    fd = report.first_divergence
    assert fd.decode_step == 3 and fd.forward.b_name == "transformer.h.1.attn.c_proj"
    assert not any(p.diverged for p in report.pairs if p.decode_step < 3)
    assert not any(p.diverged for p in report.pairs if p.b_name.startswith("transformer.h.0"))
    columns = report.to_dict()["steps"]["columns"]
    assert [c["decode_step"] for c in columns] == list(range(NEW_TOKENS))
    assert columns[3]["first"] == "transformer.h.1.attn.c_proj"
