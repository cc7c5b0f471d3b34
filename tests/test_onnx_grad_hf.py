"""Hugging Face transformers (random weights from a config, nothing downloaded) through both
torch exporters: every parameter gradient of the ONNX gradient model equals torch autograd's."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from tracediff.adapters.onnx import grad as onnx_grad

transformers = pytest.importorskip("transformers")


class LogitsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, ids):
        return self.m(input_ids=ids, return_dict=False)[0]


def _model(name):
    torch.manual_seed(0)
    if name == "bert":
        config = transformers.BertConfig(
            vocab_size=53, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=16, num_labels=3)
        model = transformers.BertForSequenceClassification(config)
        target = np.array([0, 2])
    else:
        config = transformers.GPT2Config(vocab_size=53, n_embd=32, n_layer=2, n_head=2,
                                         n_positions=16, bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config)
        target = np.random.default_rng(0).integers(0, 53, (2, 7))
    ids = torch.randint(0, 53, (2, 7), generator=torch.Generator().manual_seed(1))
    return LogitsOnly(model).eval(), ids, target


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_transformers_parameter_gradients_match_autograd(name, exporter, tmp_path):
    model, ids, target = _model(name)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, (ids,), path, dynamo=False, input_names=["ids"],
                              opset_version=18, do_constant_folding=False)
        else:  # unoptimized: SplitToSequence, CastLike, IsNaN-guarded softmax, ...
            torch.onnx.export(model, (ids,), path, dynamo=True, input_names=["ids"],
                              optimize=False, verbose=False)
    plan = onnx_grad.build(onnx.load(path), "cross_entropy", feeds={"ids": ids.numpy()})
    session = ort.InferenceSession(plan.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    outputs = [o.name for o in plan.model.graph.output]
    values = dict(zip(outputs, session.run(None, {"ids": ids.numpy(),
                                                  plan.target_input: target})))
    logits = model(ids)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(target).reshape(-1))
    loss.backward()
    np.testing.assert_allclose(values[plan.loss_output], loss.item(), rtol=1e-6)
    params = dict(model.named_parameters(remove_duplicate=False))  # tied names included
    scale = max(float(p.grad.abs().max()) for p in params.values() if p.grad is not None)
    compared = set()
    for init, out in plan.param_grads:
        reference = params[init].grad.numpy()
        # atol: gradients that are zero in exact arithmetic (attention key biases) are noise
        np.testing.assert_allclose(values[out], reference, rtol=1e-4, atol=1e-6 * scale,
                                   err_msg=init)
        compared.add(params[init])
    assert len(compared) == len({id(p) for p in params.values()})
