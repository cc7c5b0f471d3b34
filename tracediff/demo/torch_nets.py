"""The demo nets in PyTorch (float32): the references the NumPy ports are diffed against.

Module names are the NumPy layer names (``fc1``, ``act1``, ``attn.scores``); every step the
NumPy port records is a module here, so that each record has a counterpart. ``record`` writes a
trace in the same order as the NumPy nets: input, forward per module, loss, backward per module
(loss towards input), parameters with their gradients.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..recorder import Recorder
from .numpy_nets import DIMS, init_params


class Add(nn.Module):
    def forward(self, a, b):
        return a + b


class Scores(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, q, k):
        return q @ k.transpose(-1, -2) * self.scale


class Mix(nn.Module):
    def forward(self, p, v):
        return p @ v


class Attention(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.scores = Scores(1.0 / math.sqrt(d_model))
        self.probs = nn.Softmax(dim=-1)
        self.ctx = Mix()
        self.o = nn.Linear(d_model, d_model)

    def forward(self, h):
        q, k, v = self.q(h), self.k(h), self.v(h)
        return self.o(self.ctx(self.probs(self.scores(q, k)), v))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        d = DIMS["mlp"]
        self.fc1 = nn.Linear(d["features"], d["hidden"])
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(d["hidden"], d["hidden2"])
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(d["hidden2"], d["classes"])

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        d = DIMS["cnn"]
        self.conv1 = nn.Conv2d(d["channels"], d["filters"], 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(d["filters"], d["filters2"], 3, padding=1)
        self.act2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(d["filters2"] * d["pooled_h"] * d["pooled_w"], d["classes"])

    def forward(self, x):
        x = self.pool1(self.act1(self.conv1(x)))
        return self.fc(self.flatten(self.act2(self.conv2(x))))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        d = DIMS["transformer"]
        self.embed = nn.Linear(d["features"], d["d_model"])
        self.ln1 = nn.LayerNorm(d["d_model"])
        self.attn = Attention(d["d_model"])
        self.res1 = Add()
        self.ln2 = nn.LayerNorm(d["d_model"])
        self.fc1 = nn.Linear(d["d_model"], d["ff"])
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d["ff"], d["d_model"])
        self.res2 = Add()
        self.head = nn.Linear(d["d_model"], d["classes"])

    def forward(self, x):
        e = self.embed(x)
        r1 = self.res1(e, self.attn(self.ln1(e)))
        r2 = self.res2(r1, self.fc2(self.act(self.fc1(self.ln2(r1)))))
        return self.head(r2)


NETS = {"mlp": MLP, "cnn": CNN, "transformer": Transformer}


def build(net: str, seed: int = 0) -> nn.Module:
    """The reference net with the demo's seeded parameters (``numpy_nets.init_params``)."""
    model = NETS[net]()
    state = {k: torch.from_numpy(v) for k, v in init_params(net, seed).items()}
    model.load_state_dict(state)
    return model


def state_dict_float64(model: nn.Module) -> dict:
    """The parameters as float64 NumPy arrays, ready for the NumPy port."""
    return {k: v.detach().double().numpy() for k, v in model.state_dict().items()}


def loss_and_grads(model: nn.Module, x, y):
    """(loss, forward outputs, output gradients) by module name, through autograd."""
    outputs, order = {}, []

    def hook(name):
        def save(module, inputs, output):
            output.retain_grad()
            outputs[name] = output
            order.append(name)
        return save

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        model.zero_grad()
        logits = model(torch.as_tensor(x))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(y).reshape(-1))
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    forwards = [(n, outputs[n].detach().numpy()) for n in order]
    grads = {n: outputs[n].grad.numpy() for n in order}
    return loss.detach().numpy(), forwards, grads


def record(model: nn.Module, net: str, x, y, path, *, overwrite=True) -> float:
    """Record the reference in the NumPy nets' order and names."""
    model.train()
    loss, forwards, grads = loss_and_grads(model, x, y)
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n}
    with Recorder(path, framework="torch", dims=DIMS[net], model=net, flush_every=64,
                  framework_version=torch.__version__, overwrite=overwrite) as rec:
        rec.input("input", np.asarray(x))
        for name, value in forwards:
            rec.forward(name, value, op_type=kinds[name], module=name)
        rec.loss(loss)
        for name, _ in reversed(forwards):
            rec.backward(name, grads[name], op_type=kinds[name], module=name)
        for name, param in model.named_parameters():
            rec.param(name, param.detach().numpy(), grad=param.grad.numpy(),
                      role=name.rsplit(".", 1)[1], layout=_layout(param))
    return float(loss)


def _layout(param):
    return {2: "OI", 4: "OIHW"}.get(param.dim())
