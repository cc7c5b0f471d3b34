"""Diff engine benchmarks: comparison throughput against NumPy, alignment time of two
10,000-record traces with different names, and peak RSS against trace size.

    .venv/bin/python bench/bench_diff.py [--elements 16777216] [--trace-mb 256 1024] [--repeats 5]

Throughput compares the same in-memory arrays: NumPy's ``np.abs(a - b).max()`` against the
engine's kernel (``tracediff.compare.metrics.compare``: max/mean/rms/relative errors, cosine,
p99, the tolerance verdict, the 10 worst elements). Peak RSS is measured in a fresh child
process running ``td.diff`` on two traces written for the purpose.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import tracediff as td  # noqa: E402
from tracediff.compare.align import align  # noqa: E402
from tracediff.compare.metrics import compare, identical, same_bytes  # noqa: E402
from timing import median_seconds  # noqa: E402


def throughput(elements, repeats):
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        a = rng.standard_normal(elements).astype(dtype)
        b = (a + rng.standard_normal(elements).astype(dtype) * 1e-6).astype(dtype)
        nbytes = a.nbytes + b.nbytes
        # the engine takes the L2 norms from the records' statistics (written at record time)
        norms = {"a_l2": float(np.linalg.norm(a.astype(np.float64))),
                 "b_l2": float(np.linalg.norm(b.astype(np.float64)))}
        t_np, t_td, t_bare = [], [], []
        for _ in range(repeats):     # interleaved: the VM is shared and its speed drifts
            t_np.append(median_seconds(lambda: np.abs(a - b).max(), 1))
            t_td.append(median_seconds(lambda: compare(a, b, 1.3e-6, 1e-5, **norms), 1))
            t_bare.append(median_seconds(lambda: compare(a, b, 1.3e-6, 1e-5), 1))
        t_np, t_td, t_bare = (statistics.median(t) for t in (t_np, t_td, t_bare))
        print(f"  {np.dtype(dtype).name} x {elements:,} ({nbytes / 2**20:.0f} MiB compared): "
              f"numpy abs(a-b).max() {nbytes / t_np / 2**30:.2f} GiB/s; "
              f"tracediff compare {nbytes / t_td / 2**30:.2f} GiB/s = {100 * t_np / t_td:.0f}% of numpy "
              f"(as in td.diff, norms from the record stats); without them "
              f"{nbytes / t_bare / 2**30:.2f} GiB/s = {100 * t_np / t_bare:.0f}%")
        twin = a.copy()   # a rerun of the same model: td.diff checks the bytes, no arithmetic
        t_same = statistics.median(
            median_seconds(lambda: same_bytes(a, twin) and identical(a.shape, 1.0, 1.0), 1)
            for _ in range(repeats))
        print(f"    bit-identical pair (byte check, no arithmetic): {nbytes / t_same / 2**30:.2f} "
              f"GiB/s = {t_np / t_same:.1f}x numpy's abs(a-b).max()")


def write_many(path, names, ops, seed, drop=()):
    rng = np.random.default_rng(seed)
    with td.Recorder(path, framework="numpy", flush_every=512) as rec:
        for i, (name, op) in enumerate(zip(names, ops)):
            value = rng.standard_normal((3, 7 + i % 5)) * (1 + i % 7)
            if i in drop:
                continue
            rec.forward(name, value, op_type=op)


def alignment(tmp, n=10_000):
    families = ["Linear", "ReLU", "LayerNorm", "GELU", "Softmax", "Conv2d"]
    keras = {"Linear": "Dense", "ReLU": "ReLU", "LayerNorm": "LayerNormalization", "GELU": "Activation",
             "Softmax": "Softmax", "Conv2d": "Conv2D"}
    ops = [families[(i * 7) % len(families)] for i in range(n)]
    b_path, a_path, a_gap = (os.path.join(tmp, f) for f in ("b.h5", "a.h5", "a_gap.h5"))
    write_many(b_path, [f"model.layers.{i}" for i in range(n)], ops, 1)
    write_many(a_path, [f"block_{i}/out" for i in range(n)], [keras[o] for o in ops], 1)
    write_many(a_gap, [f"block_{i}/out" for i in range(n)], [keras[o] for o in ops], 1,
               drop={100, 2500, 2501, 7000})
    tb = td.open(b_path)
    for label, path in (("same structure", a_path), ("4 records missing in a", a_gap)):
        ta = td.open(path)
        start = time.perf_counter()
        pairs, un_a, un_b = align(ta, tb)
        elapsed = time.perf_counter() - start
        print(f"  {n:,} vs {len(ta):,} forward records, different names ({label}): {elapsed:.3f} s, "
              f"{len(pairs):,} pairs, unmatched a={len(un_a)} b={len(un_b)}")
        ta.close()
    tb.close()


def write_big(path, total_mb, record_mb=16, seed=0, bump=False):
    n = record_mb * 2**20 // 4
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n).astype(np.float32)
    with td.Recorder(path, framework="numpy") as rec:
        for i in range(total_mb // record_mb):
            value = base * (1 + i) if not (bump and i == total_mb // record_mb - 1) else base * (2 + i)
            rec.forward(f"layer{i}", value.reshape(1024, -1))


# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would inherit the
# benchmark's own peak
HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
CHILD = f"""
import sys, time
import tracediff as td
from tracediff.compare import diff
start = time.perf_counter()
report = diff(sys.argv[1], sys.argv[2])
elapsed = time.perf_counter() - start
print({HWM}, elapsed, report.ok)
"""
BASELINE = f"import tracediff, numpy, h5py, rich; from tracediff.compare import diff; print({HWM})"


def rss(tmp, sizes):
    base = int(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    print(f"  interpreter + tracediff imported: {base / 1024:.0f} MiB")
    for mb in sizes:
        a, b = os.path.join(tmp, f"a{mb}.h5"), os.path.join(tmp, f"b{mb}.h5")
        write_big(a, mb, bump=True)
        write_big(b, mb)
        out = subprocess.run([sys.executable, "-c", CHILD, a, b], capture_output=True, text=True, check=True)
        peak_kb, elapsed, ok = out.stdout.split()
        print(f"  two {mb} MiB traces (16 MiB float32 records): peak RSS {int(peak_kb) / 1024:.0f} MiB "
              f"(+{(int(peak_kb) - base) / 1024:.0f} MiB over the baseline), "
              f"diff {float(elapsed):.2f} s ({2 * mb / float(elapsed):.0f} MiB/s), ok={ok}")
        os.remove(a)
        os.remove(b)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 24)
    parser.add_argument("--trace-mb", type=int, nargs="*", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: nproc {os.cpu_count()}, Python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    print("throughput (median of %d):" % args.repeats)
    throughput(args.elements, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        print("alignment:")
        alignment(tmp)
        print("peak RSS:")
        rss(tmp, args.trace_mb)


if __name__ == "__main__":
    main()
