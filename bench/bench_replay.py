"""Replay benchmark: ``td.replay`` of a 100-layer torch model against one recording of it.

    .venv/bin/python bench/bench_replay.py [--layers 50] [--width 256] [--batch 32] [--repeat 3]
                                           [--cpu]

``--cpu``: process CPU time with one torch thread instead of wall time at default threads,
for a machine other work is loading. The three measures alternate, round by round (``repeat``
rounds, medians), so that a drift in the machine's speed moves them together.

The model is a torch MLP of ``layers`` Linear + ReLU pairs (2 x layers modules, so 100 layers
by default) with a cross-entropy loss. ``record`` is one training-step recording (forward,
backward, parameters) to a file; ``replay`` is everything ``td.replay`` does: record the
candidate on the reference's inputs (into memory), align and compare it, run every module on
the reference's values and every parameter-holding module's VJP. The target (issue 21): replay at most 2x one recording.

``replay`` is the model against its own trace, where every layer's inputs and output are
bit-identical to the reference's and none needs to run again (replays/shortcut.py);
``replay, bug`` is a copy with the weight of the middle Linear scaled by 1.01, so the layers
from there on run. ``--model resnet|gpt2``: bench_torch's ResNet or GPT-2 instead, the middle
of their linear and convolution layers scaled.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from bench_golden import build  # noqa: E402  (the same deep Linear + ReLU MLP)
from timing import interleaved_medians  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="CPU time, one torch thread")
    parser.add_argument("--model", choices=("mlp", "resnet", "gpt2"), default="mlp",
                        help="bench_torch's ResNet or GPT-2 (eval mode) instead of the MLP")
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    if args.cpu:
        torch.set_num_threads(1)
    model, x, loss_fn = _model(args)
    bad = copy.deepcopy(model)
    weights = [m for m in bad.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
               or type(m).__name__ == "Conv1D"]      # GPT-2's linear layers
    with torch.no_grad():
        weights[len(weights) // 2].weight.mul_(1.01)
    with tempfile.TemporaryDirectory() as folder:
        ref, other = os.path.join(folder, "ref.h5"), os.path.join(folder, "again.h5")
        tdt.record(model, x, ref, loss_fn=loss_fn, overwrite=True)
        report = td.replay(model, ref, loss_fn=loss_fn)          # also the warm-up
        bug_report = td.replay(bad, ref, loss_fn=loss_fn)
        medians = interleaved_medians({
            "record": lambda: tdt.record(model, x, other, loss_fn=loss_fn, overwrite=True),
            "replay": lambda: td.replay(model, ref, loss_fn=loss_fn),
            "bug": lambda: td.replay(bad, ref, loss_fn=loss_fn)}, args.repeat, clock)
    t_record, t_replay, t_bug = medians["record"], medians["replay"], medians["bug"]
    shape = (f"{2 * args.layers + 1} modules, width {args.width}, batch {args.batch}"
             if args.model == "mlp" else f"bench_torch's {args.model}")
    print(f"{shape}, {len(report.pairs)} pairs, torch threads {torch.get_num_threads()}, "
          f"{'CPU' if args.cpu else 'wall'} time")
    print(f"record  {t_record:.3f} s (median of {args.repeat})")
    print(f"replay  {t_replay:.3f} s (median of {args.repeat}): x{t_replay / t_record:.2f} one "
          f"recording; {report.replay_summary()['replayed']} pairs replayed, "
          f"{len(report.root_causes)} root causes")
    print(f"replay, bug  {t_bug:.3f} s (median of {args.repeat}): x{t_bug / t_record:.2f} one "
          f"recording; {bug_report.replay_summary()['replayed']} pairs replayed, "
          f"{len(bug_report.root_causes)} root causes")


def _model(args):
    """``(model, inputs, loss_fn)``: the deep MLP, or bench_torch's ResNet (training mode) or
    GPT-2 (eval mode: its attention dropout is functional, random, and replay cannot repeat it)."""
    if args.model != "mlp":
        threads = torch.get_num_threads()
        from bench_torch import build as build_real   # sets one thread for its own medians
        torch.set_num_threads(threads)
        model, inputs, loss_fn = build_real(args.model)
        if args.model == "gpt2":
            model.eval()
        return model, inputs, loss_fn
    model = build(args.layers, args.width)
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, 10, (args.batch,))

    def loss_fn(out):
        return F.cross_entropy(out, y)

    return model, x, loss_fn


if __name__ == "__main__":
    main()
