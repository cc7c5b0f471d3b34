"""ONNX adapter against Polygraphy: every intermediate output of one model, recorded twice and
compared, side by side in one run.

    .venv/bin/python bench/bench_onnx.py [--layers 12] [--width 256] [--seq 128] [--batch 8]
        [--polygraphy /tmp/pgvenv/bin/polygraphy] [--max-memory 64MB]

tracediff:  tracediff record MODEL --random --out ref.h5; again to cand.h5; tracediff diff.
td stats:   the same with --stats-only (statistics, hash and a 64-element sample per tensor).
Polygraphy: polygraphy run MODEL --onnxrt --onnx-outputs '*' --save-outputs ref.json; then the
            same with --load-outputs ref.json (compares every output with the saved ones).
Each command runs as its own process; wall time and peak RSS (os.wait4) are per command and
summed / maxed per tool; file size is the reference run's file (ref.h5 holds the parameters
too; ref.json only the outputs). The model is a torch transformer
(pre-norm blocks: LayerNorm, 4-projection attention, GELU MLP) exported with the TorchScript
exporter in a separate process, so this process stays small.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

_EXPORT = r"""
import sys, warnings
import torch
from torch import nn
layers, width, seq, batch, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
    def forward(self, x):
        s = self.q(x) @ self.k(x).transpose(-1, -2) / x.shape[-1] ** 0.5
        return self.o(torch.softmax(s, -1) @ self.v(x))

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), Attention(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(width) for _ in range(layers)])
        self.head = nn.Linear(width, 10)
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

torch.manual_seed(0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(Net().eval(), (torch.randn(batch, seq, width),), path, dynamo=False,
                      input_names=["x"], output_names=["logits"])
"""


def run(argv, cwd):
    """``(wall seconds, peak RSS bytes, exit status)`` of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    err = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    return wall, usage.ru_maxrss * 1024, process.returncode, err


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-memory", default="64MB")
    parser.add_argument("--polygraphy", default="/tmp/pgvenv/bin/polygraphy")
    args = parser.parse_args(argv)

    folder = tempfile.mkdtemp(prefix="bench-onnx-")
    try:
        model = os.path.join(folder, "model.onnx")
        subprocess.run([sys.executable, "-c", _EXPORT, str(args.layers), str(args.width),
                        str(args.seq), str(args.batch), model], check=True,
                       stderr=subprocess.DEVNULL)
        import onnx

        proto = onnx.load(model, load_external_data=False)
        nodes = len(proto.graph.node)
        outputs = sum(1 for n in proto.graph.node if n.op_type != "Constant" for t in n.output if t)
        params = sum(int(__import__("numpy").prod(t.dims)) for t in proto.graph.initializer)
        del proto
        tracediff = [sys.executable, "-m", "tracediff"]
        ours = [
            ("record ref", tracediff + ["record", model, "--random", "--seed", "0", "--out",
                                        "ref.h5", "--max-memory", args.max_memory]),
            ("record cand", tracediff + ["record", model, "--random", "--seed", "0", "--out",
                                         "cand.h5", "--max-memory", args.max_memory]),
            ("diff", tracediff + ["diff", "cand.h5", "ref.h5", "--json", "report.json"]),
        ]
        stats_only = [
            ("record ref", ours[0][1] + ["--stats-only", "--overwrite"]),
            ("record cand", ours[1][1] + ["--stats-only", "--overwrite"]),
            ("diff", ours[2][1]),
        ]
        theirs = [
            ("run --save-outputs", [args.polygraphy, "run", model, "--onnxrt", "--onnx-outputs",
                                    "*", "--seed", "0", "--save-outputs", "ref.json"]),
            ("run --load-outputs", [args.polygraphy, "run", model, "--onnxrt", "--onnx-outputs",
                                    "*", "--seed", "0", "--load-outputs", "ref.json"]),
        ]
        print(f"model: {args.layers}-block transformer, width {args.width}, batch {args.batch} x "
              f"seq {args.seq}: {nodes} nodes, {outputs} node outputs, {params} parameters "
              f"({os.path.getsize(model) / 2**20:.1f} MB)")
        print(f"machine: nproc {os.cpu_count()}, Python {sys.version.split()[0]}")
        totals = {}
        for tool, steps, files in (("tracediff", ours, ("ref.h5",)),
                                   ("polygraphy", theirs, ("ref.json",)),
                                   ("td stats", stats_only, ("ref.h5",))):
            if tool == "polygraphy" and not shutil.which(args.polygraphy):
                print(f"polygraphy: {args.polygraphy} not found (pip install polygraphy in a "
                      "separate venv)")
                continue
            wall_total, peak = 0.0, 0
            for label, command in steps:
                wall, rss, status, err = run(command, folder)
                ok = "ok" if status in (0, 1) else f"exit {status}: {err.strip()[-300:]}"
                print(f"  {tool:10s} {label:20s} {wall:7.2f} s  peak RSS {rss / 2**20:8.1f} MB  {ok}")
                wall_total += wall
                peak = max(peak, rss)
            size = sum(os.path.getsize(os.path.join(folder, f)) for f in files
                       if os.path.exists(os.path.join(folder, f)))
            totals[tool] = (wall_total, peak, size)
            print(f"  {tool:10s} {'TOTAL':20s} {wall_total:7.2f} s  peak RSS {peak / 2**20:8.1f} MB  "
                  f"reference file {size / 2**20:.1f} MB")
        if "polygraphy" in totals:
            pw, pp, ps = totals["polygraphy"]
            for tool in ("tracediff", "td stats"):
                tw, tp, ts = totals[tool]
                print(f"polygraphy / {tool}: wall x{pw / tw:.2f}, peak RSS x{pp / tp:.2f}, "
                      f"reference file x{ps / max(ts, 1):.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
