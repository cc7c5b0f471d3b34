"""Golden-trace fixture benchmark: what ``golden_trace.check`` costs on top of recording, and
how big a golden trace is, with values and statistics-only.

    .venv/bin/python bench/bench_golden.py [--layers 24] [--width 512] [--batch 64] [--repeat 3]

The model is a deep torch MLP (Linear + ReLU pairs) with a cross-entropy loss; ``check`` records
it, diffs it against the golden trace written by the first call and finds it matching.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.golden import GoldenTrace, Ledger  # noqa: E402
from timing import median_seconds  # noqa: E402


def build(layers, width):
    torch.manual_seed(0)
    blocks = []
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*blocks, torch.nn.Linear(width, 10))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = build(args.layers, args.width)
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, 10, (args.batch,))

    def loss(out):
        return F.cross_entropy(out, y)

    params = sum(p.numel() for p in model.parameters())
    print(f"torch MLP, {args.layers} x Linear({args.width}) + ReLU, {params} params, batch "
          f"{args.batch}, 1 thread, median of {args.repeat}:")
    with tempfile.TemporaryDirectory() as folder:
        record_path = os.path.join(folder, "plain.h5")
        plain = median_seconds(lambda: tdt.record(model, x, record_path, loss_fn=loss, overwrite=True),
                      args.repeat)
        print(f"  tdt.record alone                  {plain * 1e3:8.1f} ms")
        for values in (True, False):
            golden = GoldenTrace(("bench", f"values_{values}"), Ledger(folder),
                                 fail=lambda text: None)
            golden.check(model, x, loss_fn=loss, values=values)     # writes the golden trace
            size = os.path.getsize(golden.path())

            def check():
                golden._names.clear()
                report = golden.check(model, x, loss_fn=loss, values=values)
                assert report is not None and report.ok

            seconds = median_seconds(check, args.repeat)
            print(f"  check values={str(values):5}  (record+diff) {seconds * 1e3:8.1f} ms   "
                  f"x {seconds / plain:.2f}   golden {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
