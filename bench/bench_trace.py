"""Trace format: write throughput, listing time of a 100,000-record trace, one-record reads.

    .venv/bin/python bench/bench_trace.py [--records 100000]

Prints a Markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

import tracediff as td


def write_records(path, n, value, flush_every):
    start = time.perf_counter()
    with td.Recorder(path, flush_every=flush_every) as rec:
        for i in range(n):
            rec.forward(f"layer{i}", value)
    return time.perf_counter() - start


def list_trace(path):
    start = time.perf_counter()
    trace = td.open(path)
    names = [r.name for r in trace]
    trace.close()
    return time.perf_counter() - start, len(names)


def show_time(path):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tracediff", "show", str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        many = os.path.join(tmp, "many.h5")
        small = np.arange(3, dtype=np.float32)
        seconds = write_records(many, args.records, small, flush_every=args.records)
        rows.append(("write small records, batched flush", f"{seconds / args.records * 1e6:.0f} µs/record"))
        per_record = os.path.join(tmp, "durable.h5")
        seconds = write_records(per_record, 2000, small, flush_every=1)
        rows.append(("write small records, flush each (durable)", f"{seconds / 2000 * 1e6:.0f} µs/record"))
        seconds, n = list_trace(many)
        rows.append((f"td.open + list {n:,} records", f"{seconds:.2f} s"))
        rows.append((f"file size, {n:,} records of 3 float32", f"{os.path.getsize(many) / 1e6:.1f} MB"))
        rows.append((f"tracediff show, {n:,} records (process start included)", f"{show_time(many):.2f} s"))
        big = np.random.default_rng(0).standard_normal((64, 1024, 1024)).astype(np.float32)  # 256 MiB
        path = os.path.join(tmp, "big.h5")
        start = time.perf_counter()
        with td.Recorder(path) as rec:
            rec.forward("big", big)
        seconds = time.perf_counter() - start
        rows.append(("write one 256 MiB float32 tensor", f"{256 / seconds:.0f} MiB/s"))
        start = time.perf_counter()
        td.open(path).get("big").read()
        rows.append(("read it back", f"{256 / (time.perf_counter() - start):.0f} MiB/s"))
        stats_path = os.path.join(tmp, "stats.h5")
        start = time.perf_counter()
        with td.Recorder(stats_path, values=False) as rec:
            rec.forward("big", big)
        rows.append(("stats-only record of it (stats + hash + sample)",
                     f"{256 / (time.perf_counter() - start):.0f} MiB/s"))
        start = time.perf_counter()
        np.copy(big)
        rows.append(("peer: np.copy of the same tensor", f"{256 / (time.perf_counter() - start):.0f} MiB/s"))
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
