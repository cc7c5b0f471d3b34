"""A NumPy MLP that records itself as the torch adapter would (same names, op_type, role and
training meta), with knobs to plant each health-check bug. Shared by tests/test_checks_*.py."""
from __future__ import annotations

import numpy as np

import tracediff as td

ACTIVATIONS = {
    "relu": ("ReLU", lambda z: np.maximum(z, 0), lambda z, a: (z > 0).astype(z.dtype)),
    "tanh": ("Tanh", np.tanh, lambda z, a: 1 - a * a),
    "sigmoid": ("Sigmoid", lambda z: 1 / (1 + np.exp(-z)), lambda z, a: a * (1 - a)),
}


class NumpyMLP:
    """fc0, act0, fc1, act1, ..., fcN: torch-style (out, in) weights, softmax cross-entropy."""

    def __init__(self, widths=(20, 64, 64, 10), act="relu", *, scale=None, layer_scale=None,
                 bias=None, seed=0):
        rng = np.random.default_rng(seed)
        self.act = act
        self.W, self.b = [], []
        gain = {"relu": 2.0, "tanh": 1.0, "sigmoid": 1.0}[act]
        for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
            last = i == len(widths) - 2
            std = scale if scale is not None else np.sqrt((1.0 if last else gain) / n_in)
            std *= (layer_scale or {}).get(i, 1.0)
            self.W.append((rng.standard_normal((n_out, n_in)) * std).astype(np.float32))
            self.b.append(np.full(n_out, (bias or {}).get(i, 0.0), dtype=np.float32))

    def run(self, rec, x, y, *, lr=0.0, reduction="mean", no_grad=(), zero_grad=(), labels=False):
        """One recorded step: input, forward, loss, backward, parameters with gradients; then
        an SGD update (lr=0 leaves the weights as they are)."""
        op, f, df = ACTIVATIONS[self.act]
        rec.input("input", x)
        if labels:
            rec.input("labels", y)
        h, cache = x, []
        n = len(self.W)
        for i in range(n):
            z = h @ self.W[i].T + self.b[i]
            rec.forward(f"fc{i}", z, op_type="Linear", training=True)
            if i < n - 1:
                a = f(z)
                rec.forward(f"act{i}", a, op_type=op, training=True)
                cache.append((h, z, a))
                h = a
            else:
                cache.append((h, z, None))
        logits = z
        rec.forward("<root>", logits, op_type="Sequential", training=True)
        shifted = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        batch = len(y)
        with np.errstate(divide="ignore"):   # planted overflows make the loss Inf, on purpose
            losses = -np.log(p[np.arange(batch), y])
        loss = losses.sum() if reduction == "sum" else losses.mean()
        rec.loss(np.float32(loss))
        d = p.copy()
        d[np.arange(batch), y] -= 1
        if reduction == "mean":
            d /= batch
        d = d.astype(np.float32)
        rec.backward("<root>", d, op_type="Sequential")
        grads = []
        for i in reversed(range(n)):
            h_in, z, a = cache[i]
            if a is not None:
                rec.backward(f"act{i}", d, op_type=op)
                d = d * df(z, a)
            rec.backward(f"fc{i}", d, op_type="Linear")
            grads.append((i, d.T @ h_in, d.sum(axis=0)))
            d = d @ self.W[i]
        for i, dW, db in sorted(grads, key=lambda g: g[0]):
            for name, value, grad, role in ((f"fc{i}.weight", self.W[i], dW, "weight"),
                                            (f"fc{i}.bias", self.b[i], db, "bias")):
                if name in zero_grad:
                    grad = np.zeros_like(grad)
                meta = dict(op_type="Linear", role=role, requires_grad=True)
                rec.param(name, value, grad=None if name in no_grad else grad.astype(np.float32), **meta)
        for i, dW, db in grads:
            if f"fc{i}.weight" not in no_grad:
                self.W[i] = self.W[i] - np.float32(lr) * dW.astype(np.float32)
            if f"fc{i}.bias" not in no_grad:
                self.b[i] = self.b[i] - np.float32(lr) * db.astype(np.float32)
        return float(loss)


def data(batch=32, features=20, classes=10, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, features)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    return x, y


def mlp_trace(path, *, steps=1, lr=0.05, widths=(20, 64, 64, 10), act="relu", x=None, y=None,
              run_options=None, **net_options):
    """Record ``steps`` SGD steps of a NumpyMLP into ``path``; returns the path."""
    net = NumpyMLP(widths, act, **net_options)
    if x is None:
        x, y = data(features=widths[0], classes=widths[-1])
    with td.Recorder(path, framework="torch") as rec:
        for step in range(steps):
            if steps > 1:
                rec.step(step)
            net.run(rec, x, y, lr=lr, **(run_options or {}))
    return path
