"""Diffs on a Dask cluster, per-record costs, and the recording overhead of a 2-rank run.

    .venv/bin/python bench/bench_dask.py diff [--gib 8] [--record-mib 64] [--workers 1 2 4] [--dir DIR]
    .venv/bin/python bench/bench_dask.py costs          # per-record recording and diff costs
    .venv/bin/python bench/bench_dask.py paper [--write-mibs W] [--stats-mibs S] [--diff-mibs D]
    .venv/bin/python bench/bench_dask.py ranks [--steps 8]

``diff``: two traces of ``--gib`` GiB each (float32 records of ``--record-mib`` MiB; the
candidate is the reference nudged by one ulp-ish factor everywhere, so every pair is read and
compared, and wrong in one record), diffed in-process and on LocalClusters of 1, 2, 4 workers
(one thread, ``memory_limit`` 1 GiB each). Prints throughput (both traces' bytes / wall time, and / the time to the last pair compared),
each worker's peak RSS, and whether the report equals the in-process one.
``costs``: what recording one record costs (full tensor: statistics + hash + write; stats-only:
statistics + hash + sample; fixed per-record cost), what comparing costs per byte.
``paper``: a 7B and a 70B model traced per rank, from those costs (see docs/benchmarks.md).
``ranks``: a 2-process gloo DDP training loop (torch, one thread each), plain against
``tdt.recording`` per rank (stats-only and full tensors).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import tracediff as td  # noqa: E402
from timing import median_seconds  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
FLUSH_EVERY = 64     # records between index flushes, as the torch adapter writes them


# -- diff throughput on a cluster -----------------------------------------------------------

def write_pair(folder, gib, record_mib, planted):
    n = record_mib * MiB // 4
    count = int(gib * GiB // (record_mib * MiB))
    base = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    nudge = np.float32(1 + 2 ** -21)
    a_path, b_path = os.path.join(folder, "a.h5"), os.path.join(folder, "b.h5")
    started = time.perf_counter()
    with td.Recorder(a_path, framework="numpy") as ra, td.Recorder(b_path, framework="numpy") as rb:
        for i in range(count):
            ref = base * np.float32(1 + i / count)
            cand = ref * nudge
            if i == planted:
                cand[n // 3] += 1.0
            rb.forward(f"layer{i:04d}", ref)
            ra.forward(f"layer{i:04d}", cand)
            del ref, cand
    took = time.perf_counter() - started
    print(f"wrote 2 x {count} records of {record_mib} MiB ({2 * count * record_mib / 1024:.1f} GiB) "
          f"in {took:.0f} s")
    return a_path, b_path, count


class PairsDone:
    """A ``progress`` callback noting when the last pair was compared: the end of the part
    of the diff that workers do (the caller then explains the first divergences)."""

    def __init__(self):
        self.at = None

    def __call__(self, done, total):
        if done == total:
            self.at = time.perf_counter()


def timed_diff(a, b, **options):
    """(report, seconds to the last pair compared, seconds in all)."""
    done = PairsDone()
    started = time.perf_counter()
    report = td.diff(a, b, progress=done, **options)
    return report, done.at - started, time.perf_counter() - started


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def diff_on_workers(a, b, workers, reference):
    import distributed

    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       memory_limit="1GiB", dashboard_address=None, silence_logs=50)
    client = distributed.Client(cluster)
    try:
        before = set(client.scheduler_info()["workers"])
        report, compared, took = timed_diff(a, b, dask=client)
        peaks = client.run(peak_rss_mib)
        restarts = len(before - set(client.scheduler_info()["workers"]))   # replaced workers
    finally:
        client.close()
        cluster.close()
    same = report.to_dict() == reference
    return (compared, took), sorted(peaks.values()), same, report, restarts


def run_diff(args):
    folder = args.dir or tempfile.mkdtemp(prefix="bench-dask-")
    os.makedirs(folder, exist_ok=True)
    try:
        a, b, count = write_pair(folder, args.gib, args.record_mib, planted=count_planted(args))
        total = os.path.getsize(a) + os.path.getsize(b)
        local, compared, t_local = timed_diff(a, b)
        reference = local.to_dict()
        print(f"traces: {total / GiB:.1f} GiB together, {count} pairs; first divergence "
              f"{local.first_divergence.forward.b_name}")
        print(f"in-process td.diff (memory maps, up to 4 compare threads): {t_local:.1f} s, "
              f"{total / t_local / MiB:.0f} MiB/s; pairs compared in {compared:.1f} s, "
              f"{total / compared / MiB:.0f} MiB/s")
        for workers in args.workers:
            (compared, took), peaks, same, report, restarts = diff_on_workers(a, b, workers, reference)
            print(f"dask local:{workers} (memory_limit 1 GiB, 1 thread each): {took:.1f} s, "
                  f"{total / took / MiB:.0f} MiB/s; pairs compared in {compared:.1f} s, "
                  f"{total / compared / MiB:.0f} MiB/s; worker peak RSS {', '.join(f'{p:.0f}' for p in peaks)} "
                  f"MiB; workers restarted {restarts}; report equal to in-process: {same}; "
                  f"missing pairs {len(report.missing)}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def count_planted(args):
    return int(args.gib * GiB // (args.record_mib * MiB)) * 2 // 3


# -- per-record costs -----------------------------------------------------------------------

def run_costs(args):
    """MiB/s of recording full records and stats-only ones (8 float32 records of 32 MiB), the
    fixed cost of a small record, and the diff's cost per stats-only pair."""
    folder = tempfile.mkdtemp(prefix="bench-costs-")
    try:
        x = np.random.default_rng(0).standard_normal(32 * MiB // 4).astype(np.float32)
        for label, values in (("full tensors (statistics + hash + write)", True),
                              ("stats-only (statistics + hash + 64-element sample)", False)):
            def record(values=values):
                with td.Recorder(os.path.join(folder, "r.h5"), framework="numpy", values=values,
                                 overwrite=True) as rec:
                    for i in range(8):
                        rec.forward(f"l{i}", x)
            t = median_seconds(record, args.repeats)
            print(f"record, {label}: {8 * x.nbytes / t / MiB:.0f} MiB/s")
        small = np.ones(16, np.float32)
        count = 4000

        def small_records(path):
            with td.Recorder(path, framework="numpy", values=False, overwrite=True,
                             flush_every=FLUSH_EVERY) as rec:
                for i in range(count):
                    rec.forward(f"l{i}", small * (1 + (i % 7)))
        t = median_seconds(lambda: small_records(os.path.join(folder, "s.h5")), args.repeats)
        print(f"record, fixed cost of one record (16 elements, stats-only, flush every "
              f"{FLUSH_EVERY}): {t / count * 1e6:.0f} us")
        small_records(os.path.join(folder, "t.h5"))
        t = median_seconds(lambda: td.diff(os.path.join(folder, "s.h5"), os.path.join(folder, "t.h5")),
                         args.repeats)
        print(f"diff of two stats-only traces of {count} records: {t:.2f} s "
              f"({t / count * 1e6:.0f} us a pair, in-process)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- on paper: a 7B and a 70B model traced per rank -------------------------------------------

MODELS = {
    # Llama-2 shapes; tokens per rank per step: one 4096-token sequence; bf16 everywhere
    "7B": dict(layers=32, d=4096, kv=4096, ffn=11008, vocab=32000, params=6.74e9, dp=8, tp=1),
    "70B": dict(layers=80, d=8192, kv=1024, ffn=28672, vocab=32000, params=68.98e9, dp=8, tp=8),
}
TOKENS = 4096               # a step's micro-batch of one tensor-parallel group
BYTES = 2                   # bf16
H100_FLOPS = 989e12 * 0.4   # dense bf16 at 40% model FLOPs utilisation


def step_seconds(m):
    """A training step's time on one GPU: 6 x parameters x tokens FLOPs, split over the TP group."""
    return 6 * m["params"] * TOKENS / m["tp"] / H100_FLOPS


def per_rank(m):
    """Records and bytes one rank writes a step at module level (Hugging Face Llama modules:
    13 outputs a decoder layer, their 13 output gradients, 9 parameters and their gradients),
    with tensor parallelism splitting activations (sequence parallel) and FSDP sharding the
    parameters over data-parallel ranks."""
    width = 8 * m["d"] + 2 * m["kv"] + 3 * m["ffn"]          # elements a token, one layer
    act = m["layers"] * TOKENS * width / m["tp"]
    logits = TOKENS * m["vocab"] / m["tp"]
    params = m["params"] / (m["tp"] * m["dp"])
    records = m["layers"] * (13 * 2 + 9 * 2) + 8
    full = (2 * (act + logits) + 2 * params) * BYTES
    return records, full, 2 * (act + logits) + 2 * params


def run_paper(args):
    print(f"measured: record full {args.write_mibs:.0f} MiB/s, stats-only {args.stats_mibs:.0f} MiB/s "
          f"(one writer thread), {args.record_us:.0f} us a record; diff {args.diff_mibs:.0f} MiB/s "
          f"a worker; a stats-only pair {args.pair_us:.0f} us")
    for name, m in MODELS.items():
        ranks = m["dp"] * m["tp"]
        records, full, elements = per_rank(m)
        stats_bytes = records * (64 * BYTES + 200)
        t_full = full / (args.write_mibs * MiB) + records * args.record_us * 1e-6
        t_stats = elements * BYTES / (args.stats_mibs * MiB) + records * args.record_us * 1e-6
        both = 2 * full * ranks
        workers = both / (600 * args.diff_mibs * MiB)
        stats_diff = records * ranks * args.pair_us * 1e-6
        step = step_seconds(m)
        print(f"{name} on {ranks} ranks (DP {m['dp']} x TP {m['tp']}), {TOKENS} tokens a rank:")
        print(f"  per rank a step: {records} records; full {full / GiB:.1f} GiB, stats-only "
              f"{stats_bytes / MiB:.2f} MiB; all ranks: full {full * ranks / GiB:.0f} GiB")
        print(f"  recording a step (one writer thread a rank): full {t_full:.0f} s, stats-only "
              f"{t_stats:.0f} s, against a {step:.2f} s step on an H100: {t_full / step:.0f}x / "
              f"{t_stats / step:.0f}x (copies from the GPU at 25 GB/s alone: "
              f"{full / 25e9:.1f} s)")
        print(f"  diff of one step, full (both traces {both / GiB:.0f} GiB) in 10 min: "
              f"{max(1, int(np.ceil(workers)))} workers at {args.diff_mibs:.0f} MiB/s each "
              f"(storage serving {both / 600 / GiB:.2f} GiB/s); stats-only: {stats_diff:.1f} s "
              "on one worker")


# -- recording overhead of a 2-rank run --------------------------------------------------------

def _rank(rank, world, port, steps, folder, queue):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from tracediff.adapters import torch as tdt

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(128, 4, dim_feedforward=512, dropout=0.0, batch_first=True)
    model = torch.nn.Sequential(torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False),
                                torch.nn.Linear(128, 1000))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(8, 128, 128, generator=g)
    y = torch.randint(0, 1000, (8, 128), generator=g)

    def step(session=None):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(x).reshape(-1, 1000), y.reshape(-1))
        if session is not None:
            session.loss(loss)
        loss.backward()
        opt.step()

    def loop(mode):
        dist.barrier()
        start = time.perf_counter()
        if mode == "plain":
            for _ in range(steps):
                step()
        else:
            path = os.path.join(folder, f"{mode}.trace")   # a multi-rank folder: one file a rank
            with tdt.recording(ddp, path, every=1, values=(mode == "full"), overwrite=True) as s:
                for _ in range(steps):
                    step(s)
        dist.barrier()
        return (time.perf_counter() - start) / steps

    for _ in range(2):
        step()
    times = {m: [] for m in ("plain", "stats", "full")}
    for _ in range(3):      # interleaved: the VM's speed drifts
        for mode in times:
            times[mode].append(loop(mode))
    sizes = {m: os.path.getsize(os.path.join(folder, f"{m}.trace", f"rank-{rank:05d}.h5"))
             for m in ("stats", "full")}
    queue.put((rank, {m: sorted(v)[1] for m, v in times.items()}, sizes))
    dist.destroy_process_group()


def run_ranks(args):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="bench-ranks-")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, args.steps, folder, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=1200) for _ in procs)
    for p in procs:
        p.join()
    shutil.rmtree(folder, ignore_errors=True)
    for rank, times, sizes in results:
        plain = times["plain"]
        print(f"rank {rank}: plain DDP step {plain * 1e3:.0f} ms; tdt.recording stats-only "
              f"{times['stats'] / plain:.2f}x, full tensors {times['full'] / plain:.2f}x; trace of "
              f"{args.steps} steps: stats-only {sizes['stats'] / MiB:.1f} MiB, full {sizes['full'] / MiB:.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("diff")
    d.add_argument("--gib", type=float, default=8.0, help="GiB a trace")
    d.add_argument("--record-mib", type=int, default=64)
    d.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    d.add_argument("--dir")
    d.add_argument("--keep", action="store_true")
    c = sub.add_parser("costs")
    c.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("paper")
    p.add_argument("--write-mibs", type=float, required=True)
    p.add_argument("--stats-mibs", type=float, required=True)
    p.add_argument("--record-us", type=float, required=True)
    p.add_argument("--diff-mibs", type=float, required=True)
    p.add_argument("--pair-us", type=float, required=True)
    r = sub.add_parser("ranks")
    r.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    {"diff": run_diff, "costs": run_costs, "paper": run_paper, "ranks": run_ranks}[args.what](args)


if __name__ == "__main__":
    main()
