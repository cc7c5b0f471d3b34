"""Torch nets for the tolerance experiments: an MLP, a CNN with pooling and a pre-LayerNorm
transformer block, recorded (forward, backward, parameters, parameter gradients) at float32 and
float64 from the same weights, with hooks written here so that these tests do not depend on the
torch adapter."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import tracediff as td

DIMS = {"batch": 3, "features": 7, "hidden": 11, "classes": 5, "seq": 13, "model": 17}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(7, 11), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(11, 19), nn.Tanh()
        self.fc3, self.act3 = nn.Linear(19, 23), nn.ReLU()
        self.fc4 = nn.Linear(23, 5)

    def forward(self, x):
        return self.fc4(self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act1, self.pool1 = nn.Conv2d(2, 7, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.act2, self.pool2 = nn.Conv2d(7, 11, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(11 * 3 * 3, 5)

    def forward(self, x):
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc(self.flatten(x))


class Attention(nn.Module):
    def __init__(self, d, scale=True):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.scores = nn.Identity()
        self.softmax = nn.Softmax(dim=-1)
        self.scale = scale
        self.d = d

    def forward(self, x):
        s = self.q(x) @ self.k(x).transpose(-1, -2)
        if self.scale:
            s = s / math.sqrt(self.d)
        return self.o(self.softmax(self.scores(s)) @ self.v(x))


class Block(nn.Module):
    """Pre-LN transformer block with a classification head over the mean of the sequence."""

    def __init__(self, d=17, eps=1e-5, gelu="none", scale=True):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = Attention(d, scale)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.fc1 = nn.Linear(d, 29)
        self.act = nn.GELU(approximate=gelu)
        self.fc2 = nn.Linear(29, d)
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(self.act(self.fc1(self.ln2(x))))
        return self.head(x.mean(dim=1))


def make(net: str, seed=0, **bug):
    torch.manual_seed(seed)
    model = {"mlp": MLP, "cnn": CNN, "transformer": Block}[net](**bug)
    g = np.random.default_rng(seed)
    shape = {"mlp": (3, 7), "cnn": (3, 2, 13, 13), "transformer": (3, 13, 17)}[net]
    x = g.standard_normal(shape).astype(np.float32)
    y = g.integers(0, 5, size=3)
    return model, x, y


def record(model, x, y, path, dtype):
    """Forward outputs of every named module, dL/d each output, parameters and their gradients."""
    model = model.to(dtype)
    outputs = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, inp, out, name=name):
            out.retain_grad()
            outputs.append((name, out))
        hooks.append(module.register_forward_hook(hook))
    xt = torch.tensor(x, dtype=dtype)
    out = model(xt)
    loss = F.cross_entropy(out, torch.tensor(y))
    loss.backward()
    for h in hooks:
        h.remove()
    with td.Recorder(path, framework="torch", dims=DIMS) as rec:
        rec.input("input", xt.detach().numpy())
        for name, t in outputs:
            rec.forward(name, t.detach().numpy(), op_type=type(model.get_submodule(name)).__name__)
        rec.loss(loss.detach().numpy())
        for name, t in reversed(outputs):
            rec.backward(name, t.grad.numpy())
        for name, p in model.named_parameters():
            rec.param(name, p.detach().numpy(), grad=p.grad.numpy(),
                      role=name.rsplit(".", 1)[-1])
    model.float()
