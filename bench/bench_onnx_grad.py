"""ONNX gradient trace time against onnxruntime's forward alone (transformer block and CNN),
and the memory-bounded backward (``max_memory``) against the single gradient run.

Run: .venv/bin/python bench/bench_onnx_grad.py [--repeat 5] [--budgets 64MiB,32MiB,16MiB]
Prints two markdown tables; numbers are wall seconds (median over --repeat runs). The second
runs ``record_backward`` in a fresh process per budget and reports the growth of its peak RSS
over the process's own after imports (``/proc/self/clear_refs``, Linux).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
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
from tracediff.adapters.onnx import grad as onnx_grad
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


_BOUNDED = textwrap.dedent("""
    import json, sys, time
    import h5py, numpy as np, onnx, onnxruntime  # noqa: F401,E401  (before the baseline)
    import tracediff as td
    from tracediff.adapters import onnx as tdo  # noqa: F401
    from tracediff.adapters.onnx.grad import groups  # noqa: F401
    from tracediff.adapters.onnx.grad import record_backward
    from tracediff.adapters.onnx.memory import parse_memory

    def status(key):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(key))

    model_path, folder, budget, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    model = onnx.load(model_path)
    feeds = {"x": np.load(folder + "/x.npy")}
    target = np.load(folder + "/target.npy")
    budget = None if budget == "none" else parse_memory(budget)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = status("VmRSS:")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with td.Recorder(folder + "/bounded.h5", framework="onnx", overwrite=True) as rec:
            record_backward(model, feeds, rec, loss="cross_entropy", target=target,
                            max_memory=budget)
        times.append(time.perf_counter() - start)
    groups = td.open(folder + "/bounded.h5").get("loss", kind="loss").meta["gradient_groups"]
    print(json.dumps({"seconds": sorted(times)[len(times) // 2], "groups": groups,
                      "growth_mib": (status("VmHWM:") - before) / 1024}))
""")


def _bounded(path, folder, budget, repeat):
    """record_backward in a fresh process: median seconds, groups, peak RSS growth (MiB)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MALLOC_MMAP_THRESHOLD_="1048576")
    done = subprocess.run([sys.executable, "-c", _BOUNDED, path, folder, budget, str(repeat)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budgets", default="64MiB,32MiB,16MiB")
    args = parser.parse_args()
    budgets = ["none"] + args.budgets.split(",")
    rows, bounded = [], []
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
            np.save(os.path.join(folder, "x.npy"), feeds["x"])
            np.save(os.path.join(folder, "target.npy"), target)
            for budget in budgets:
                bounded.append((name, budget, _bounded(path, folder, budget,
                                                       max(1, args.repeat // 2))))
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
    print(f"\npeak RSS of the benchmark process: {peak:.0f} MiB\n")
    print("| model | max_memory | gradient groups | record_backward (s) | time / single run | "
          "peak RSS growth (MiB) |")
    print("|---|---|---|---|---|---|")
    single = {name: result for name, budget, result in bounded if budget == "none"}
    for name, budget, result in bounded:
        print(f"| {name} | {'none (single run)' if budget == 'none' else budget} | "
              f"{result['groups']} | {result['seconds']:.3f} | "
              f"{result['seconds'] / single[name]['seconds']:.2f}x | "
              f"{result['growth_mib']:.0f} |")


if __name__ == "__main__":
    main()
