"""Health-check benchmarks: time of ``td.check`` on a training trace (every check, values and
statistics-only), and of ``td.gradcheck`` on a small hand-written net.

    .venv/bin/python bench/bench_checks.py [--layers 50] [--steps 10] [--width 128] [--batch 64]

The trace is a deep ReLU MLP recorded with td.Recorder as the torch adapter would (forward,
backward, parameters and their gradients at every step).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import tracediff as td  # noqa: E402
from timing import median_seconds  # noqa: E402


def write_trace(path, layers, steps, width, batch, values):
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((width, width)).astype(np.float32) * np.sqrt(2 / width)
               for _ in range(layers)]
    x = rng.standard_normal((batch, width)).astype(np.float32)
    with td.Recorder(path, framework="torch", values=values, flush_every=64) as rec:
        for step in range(steps):
            rec.step(step)
            rec.input("input", x)
            h, outs = x, []
            for i, w in enumerate(weights):
                z = h @ w.T
                rec.forward(f"fc{i}", z, op_type="Linear")
                h = np.maximum(z, 0)
                rec.forward(f"relu{i}", h, op_type="ReLU")
                outs.append((z, h))
            rec.loss(np.float32(np.mean(h ** 2)))
            d = 2 * h / h.size
            for i in reversed(range(layers)):
                z, _ = outs[i]
                rec.backward(f"relu{i}", d, op_type="ReLU")
                d = d * (z > 0)
                rec.backward(f"fc{i}", d, op_type="Linear")
                d = d @ weights[i]
            for i, w in enumerate(weights):
                grad = rng.standard_normal(w.shape).astype(np.float32) * 1e-3
                rec.param(f"fc{i}.weight", w, grad=grad, role="weight", op_type="Linear")
                weights[i] = w - 1e-2 * grad
    return os.path.getsize(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for values in (True, False):
            path = os.path.join(folder, f"t{values}.h5")
            size = write_trace(path, args.layers, args.steps, args.width, args.batch, values)
            with td.open(path) as trace:
                n = len(trace)
            seconds = median_seconds(lambda: td.check(path), args.repeats)
            print(f"td.check, {args.layers} layers x {args.steps} steps ({n} records, "
                  f"{size / 2**20:.1f} MB, values={values}): {seconds * 1000:.0f} ms "
                  f"(median of {args.repeats})")
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((64, 100)), "W": rng.standard_normal((100, 50)) * 0.1}

    def net(a):
        z = a["x"] @ a["W"]
        h = np.maximum(z, 0)
        loss = float((h ** 2).mean())
        dh = 2 * h / h.size
        dz = dh * (z > 0)
        return loss, {"x": dz @ a["W"].T, "W": a["x"].T @ dz}
    seconds = median_seconds(lambda: td.gradcheck(net, arrays), args.repeats)
    print(f"td.gradcheck, 2 arrays (6400 + 5000 entries, 32 sampled each): {seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()
