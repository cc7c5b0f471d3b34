"""Recording overhead of the PyTorch adapter relative to a plain forward+backward, measured side
by side (interleaved repeats, medians) on a small ResNet-style CNN and a small GPT-2 on CPU.

    [BENCH_TORCH_THREADS=1] .venv/bin/python bench/bench_torch.py [--repeats 9] [--torchlens-python /tmp/tlvenv/bin/python]

With ``--torchlens-python`` the same models are also run through ``torchlens.trace`` in that
interpreter (TorchLens lives in its own virtualenv) and its ratio is printed next to ours.
``--torchlens`` is that child mode: it needs only torch, transformers and torchlens.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

THREADS = int(os.environ.get("BENCH_TORCH_THREADS", "1"))
torch.set_num_threads(THREADS)  # the benchmark VM is shared: one thread keeps the medians stable


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        skip = x if self.down is None else self.down(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + skip)


class SmallResNet(nn.Module):
    """CIFAR ResNet shape: stem + 3 stages x 2 basic blocks, 32/64/128 channels."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU(inplace=True))
        layers, cin = [], 32
        for cout, stride in ((32, 1), (64, 2), (128, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def build(name):
    """(model, inputs as record() takes them, loss_fn)."""
    torch.manual_seed(0)
    if name == "resnet":
        model = SmallResNet()
        x = torch.randn(16, 3, 32, 32)
        y = torch.randint(0, 10, (16,))
        return model, x, lambda out: F.cross_entropy(out, y)
    import transformers
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=128,
                                     bos_token_id=0, eos_token_id=0, use_cache=False)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 1000, (8, 128))
    return model, {"input_ids": ids, "labels": ids}, lambda out: out.loss


def call(model, inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def plain(model, inputs, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn(call(model, inputs)).backward()


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(variants, repeats):
    """Interleave the variants ``repeats`` times (after one warm-up each): seconds per round."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return times


def summarise(times, base):
    """{variant: {"ms", "ratio"}}: ms is the median; ratio is the median over rounds of the
    variant's time over ``base``'s in the same round (paired, so the shared VM's drift between
    rounds cancels). ``base`` is a variant name, or a list of per-round times measured apart."""
    paired = isinstance(base, str)
    base_times = times[base] if paired else base
    out = {}
    for name, t in times.items():
        if paired:
            ratio = statistics.median(a / b for a, b in zip(t, base_times))
        else:
            ratio = statistics.median(t) / statistics.median(base_times)
        out[name] = {"ms": 1000 * statistics.median(t), "ratio": ratio}
    return out


def tracediff_variants(model, inputs, loss_fn, folder):
    from tracediff.adapters import torch as tdt

    def recorded(tag, **options):
        path = os.path.join(folder, f"{tag}.h5")

        def run():
            model.zero_grad(set_to_none=True)
            tdt.record(model, inputs, path, loss_fn=loss_fn, overwrite=True, **options)
        return run

    return {
        "plain": lambda: plain(model, inputs, loss_fn),
        "module, full tensors": recorded("full"),
        "module, full tensors, inline writer (background=False)": recorded("full0", background=False),
        "module, full tensors, flush_every=1": recorded("full1", flush_every=1),
        "module, stats-only": recorded("stats", values=False),
        "module, stats-only, writer thread (background=True)": recorded("stats0", values=False,
                                                                       background=True),
        "module, stats-only, flush_every=1": recorded("stats1", values=False, flush_every=1),
        "op level, full tensors": recorded("op", level="op"),
        "op level, stats-only": recorded("opstats", level="op", values=False),
        # every hook runs and every output is checked against the filter, nothing is written
        "module, hooks only (include matches nothing)": recorded("hooks", include="-"),
    }


def loop_variants(model, inputs, loss_fn, folder, steps=10):
    """A user's training loop of ``steps`` SGD steps, plain and inside ``recording()``: every
    step recorded (full tensors, and stats-only: the tool left on), and ``every=steps``
    (stats-only, one recorded step; the others pay one pre-hook call)."""
    from tracediff.adapters import torch as tdt

    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def loop():
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(call(model, inputs)).backward()
            opt.step()

    def recorded(every, values):
        def run():
            with tdt.recording(model, os.path.join(folder, "loop.h5"), every=every, values=values,
                               overwrite=True):
                loop()
        return run

    return {f"training loop, {steps} steps, plain": loop,
            "training loop, recording(every=1), full tensors": recorded(1, True),
            "training loop, recording(every=1), stats-only": recorded(1, False),
            f"training loop, recording(every={steps}), stats-only": recorded(steps, False)}


def recorder_alone_variants(folder):
    """The core Recorder writing the same records with no model: what the adapter cannot go
    below (statistics, hashing and HDF5 writes of the same bytes)."""
    import tracediff as td

    trace = td.open(os.path.join(folder, "full.h5"))
    records = [(r.kind, r.name, r.call, r.read()) for r in trace]
    trace.close()

    def write(values):
        def run():
            with td.Recorder(os.path.join(folder, "alone.h5"), framework="torch", overwrite=True,
                             values=values, flush_every=64) as rec:
                for kind, name, call, array in records:
                    rec.record(kind, name, array, call=call)
        return run

    return {"Recorder alone, same records, full tensors": write(True),
            "Recorder alone, same records, stats-only": write(False)}


def torchlens_variants(model, inputs, loss_fn):
    import torchlens as tl
    from torchlens.options import CaptureOptions

    args, kwargs = ((), inputs) if isinstance(inputs, dict) else ((inputs,), {})

    def traced(save_grads):
        def run():
            model.zero_grad(set_to_none=True)
            trace = tl.trace(model, list(args) or None, input_kwargs=kwargs or None,
                             capture=CaptureOptions(save_grads=save_grads))
            if save_grads:
                trace.backward(_torchlens_loss(trace, loss_fn))
        return run

    return {
        "plain": lambda: plain(model, inputs, loss_fn),
        "torchlens.trace, forward only": traced(False),
        "torchlens.trace + backward (save_grads)": traced(True),
    }


def _torchlens_loss(trace, loss_fn):
    """The loss from the trace's own (graph-connected) output tensors: a scalar output is the
    model's loss (GPT-2 given labels); otherwise the single output goes through loss_fn."""
    outputs = [trace.layers[label].out for label in trace.output_layers]
    scalars = [t for t in outputs if t.numel() == 1]
    return scalars[0] if scalars else loss_fn(outputs[0])


def run_models(make_variants, repeats):
    results = {}
    for name in ("resnet", "gpt2"):
        model, inputs, loss_fn = build(name)
        model.train()
        results[name] = summarise(measure(make_variants(model, inputs, loss_fn), repeats), "plain")
    return results


def trace_sizes(folder):
    import tracediff as td
    out = {}
    for tag in ("full", "stats", "op"):
        path = os.path.join(folder, f"{tag}.h5")
        trace = td.open(path)
        out[tag] = {"records": len(trace), "MB": os.path.getsize(path) / 1e6}
        trace.close()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--torchlens-python", help="interpreter of a virtualenv with torchlens")
    parser.add_argument("--torchlens-repeats", type=int, help="repeats for torchlens (default: --repeats)")
    parser.add_argument("--torchlens", action="store_true", help="child mode: time torchlens only")
    args = parser.parse_args(argv)

    if args.torchlens:
        print(json.dumps(run_models(torchlens_variants, args.repeats)))
        return 0

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("resnet", "gpt2"):
            model, inputs, loss_fn = build(name)
            times = measure(tracediff_variants(model, inputs, loss_fn, folder), args.repeats)
            results[name] = summarise(times, "plain")
            alone = measure(recorder_alone_variants(folder), args.repeats)
            results[name].update(summarise(alone, times["plain"]))
            loops = measure(loop_variants(model, inputs, loss_fn, folder), max(1, args.repeats // 2))
            results[name].update(summarise(loops, next(iter(loops))))
            results[name]["sizes"] = trace_sizes(folder)
    lens = None
    if args.torchlens_python:
        child = subprocess.run([args.torchlens_python, __file__, "--torchlens",
                                "--repeats", str(args.torchlens_repeats or args.repeats)],
                               capture_output=True, text=True)
        if child.returncode == 0:
            lens = json.loads(child.stdout.strip().splitlines()[-1])
        else:
            lens = {"error": (child.stderr.strip().splitlines() or ["no output"])[-1]}

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, {THREADS} thread(s), "
          f"{args.repeats} interleaved rounds: median ms, median of per-round ratios; "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, rows in results.items():
        sizes = rows.pop("sizes")
        listed = ", ".join(f"{k} {v['records']} records {v['MB']:.2f} MB" for k, v in sizes.items())
        print(f"\n{name}: {listed}")
        print(f"  {'variant':50s} {'ms':>9s} {'ratio':>7s}")
        for variant, row in rows.items():
            print(f"  {variant:50s} {row['ms']:9.1f} {row['ratio']:6.2f}x")
        if lens and "error" not in lens:
            for variant, row in lens[name].items():
                label = "torchlens venv: " + variant
                print(f"  {label:50s} {row['ms']:9.1f} {row['ratio']:6.2f}x")
    if lens and "error" in lens:
        print(f"\ntorchlens could not run: {lens['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
