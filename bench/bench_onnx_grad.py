"""ONNX gradient trace time against onnxruntime's forward alone (transformer block and CNN).

Run: .venv/bin/python bench/bench_onnx_grad.py [--repeat 5]
Prints one markdown table; numbers are wall seconds (median over --repeat runs).
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

import tracediff as td
from tracediff.adapters import onnx as tdo
from tracediff.adapters import onnx_grad
from timing import median_seconds  # noqa: E402


class CNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        chans = [3, 32, 64, 128]
        layers = []
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], classes)

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class Transformer(nn.Module):
    def __init__(self, vocab=1000, width=256, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.blocks = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True,
                                       activation="gelu"), layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        return self.head(self.blocks(self.emb(tokens)))


def _case(name):
    torch.manual_seed(0)
    if name == "cnn":
        model, x = CNN().eval(), torch.randn(16, 3, 64, 64)
        with torch.no_grad():  # trained-like statistics (fresh ones equal the affine weights,
            for m in model.modules():  # which the legacy exporter would merge)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        target = np.random.default_rng(0).integers(0, 10, 16)
    else:
        model, x = Transformer().eval(), torch.randint(0, 1000, (8, 128))
        target = np.random.default_rng(0).integers(0, 1000, (8, 128))
    return model, x, target


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in ("transformer", "cnn"):
            model, x, target = _case(name)
            path = os.path.join(folder, f"{name}.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"],
                                  opset_version=18, do_constant_folding=False)
            proto = onnx.load(path)
            feeds = {"x": x.numpy()}
            forward = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            forward.run(None, feeds)
            t_forward = median_seconds(lambda: forward.run(None, feeds), args.repeat)

            t_build = median_seconds(lambda: onnx_grad.build(proto, "cross_entropy", feeds=feeds),
                              args.repeat)
            plan = onnx_grad.build(proto, "cross_entropy", feeds=feeds)
            start = time.perf_counter()
            grad = ort.InferenceSession(plan.model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
            t_session = time.perf_counter() - start
            grad_feeds = {**feeds, plan.target_input: target}
            grad.run(None, grad_feeds)
            t_grad_run = median_seconds(lambda: grad.run(None, grad_feeds), args.repeat)

            def backward_trace():
                trace = os.path.join(folder, "b.h5")
                with td.Recorder(trace, framework="onnx", overwrite=True) as rec:
                    onnx_grad.record_backward(proto, feeds, rec, loss="cross_entropy",
                                              target=target)

            t_backward = median_seconds(backward_trace, max(1, args.repeat // 2))

            def full_trace():
                tdo.record(path, feeds, os.path.join(folder, "full.h5"), overwrite=True,
                           loss="cross_entropy", target=target)

            t_full = median_seconds(full_trace, max(1, args.repeat // 2))
            rows.append((name, len(proto.graph.node), len(plan.model.graph.node), t_forward,
                         t_grad_run, t_build, t_session, t_backward, t_full))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| model | forward nodes | gradient-model nodes | ORT forward (s) | ORT gradient "
          "run (s) | run / forward | build (s) | session (s) | record_backward (s) | "
          "full trace with gradients (s) | full / forward |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n_fwd, n_grad, fwd, run, build, session, backward, full in rows:
        print(f"| {name} | {n_fwd} | {n_grad} | {fwd:.4f} | {run:.4f} | {run / fwd:.1f}x | "
              f"{build:.3f} | {session:.3f} | {backward:.3f} | {full:.3f} | {full / fwd:.1f}x |")
    print(f"\npeak RSS of the benchmark process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
