"""SIGKILL campaign: kill a recording process at random moments and check every trace it leaves.

    python bench/crash_kill.py [--kills 100] [--seed 0] [--dir DIR]

Each kill starts a child that records a seeded sequence of records (small tensors of several
dtypes, and every few records a large one of 2-8 MB) and closes the trace. The child prints
``ready`` once the Recorder exists, ``big I`` before record I when it is large, ``done I`` once
record I is written, ``closing`` before close() and ``closed`` after. The parent kills it with
SIGKILL at one of three kinds of moment, in turn:
  random  a uniform delay after ``ready``, anywhere in the run;
  big     a short random delay after a ``big`` line: inside a large-tensor write;
  close   a short random delay after ``closing``: inside close().
Then the trace must open (warning once that it is incomplete, unless close() had finished),
hold at least every record whose ``done`` line was printed, every record it holds must read
back bit-exactly, and the file must hold no HDF5 global heap (format v2 writes no
variable-length data). tests/test_reliability_crash.py runs 5 kills; this script 100.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

MODES = ("random", "big", "close")
RECORDS = 40             # records a child writes before closing
BIG_EVERY = 5            # every fifth record is a large tensor
DTYPES = ("float32", "float64", "float16", "int64", "bfloat16", "uint8")


def planned_record(seed: int, index: int):
    """(kind, name, array) of record ``index`` of the child seeded ``seed``: deterministic, so
    the parent can check every value it reads back."""
    rng = np.random.default_rng([seed, index])
    big = index % BIG_EVERY == BIG_EVERY - 1
    if big:
        numel = int(rng.integers(1 << 19, 1 << 21))      # 2-8 MB of float32
        dtype = "float32"
    else:
        numel = int(rng.integers(0, 5000))
        dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    values = (np.arange(numel, dtype=np.int64) * (index + 7)) % 251 - 125
    if dtype == "bfloat16":
        import ml_dtypes
        array = values.astype(np.float32).astype(ml_dtypes.bfloat16)
    else:
        array = values.astype(dtype)
    kind = ("forward", "backward", "param", "param_grad")[index % 4]
    return kind, f"layer{index}", array, big


def child(path: str, seed: int):
    """The recording process: writes RECORDS records, then closes, narrating on stdout."""
    import tracediff as td

    def say(line):
        os.write(1, (line + "\n").encode())

    rec = td.Recorder(path, overwrite=True)
    say("ready")
    for index in range(RECORDS):
        kind, name, array, big = planned_record(seed, index)
        if big:
            say(f"big {index}")
        rec.record(kind, name, array)
        say(f"done {index}")
    say("closing")
    rec.close()
    say("closed")


class _Narration:
    """The child's lines as they arrive, with an event per line for the parent to wait on."""

    def __init__(self, stream):
        self.lines = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for raw in stream:
            with self.changed:
                self.lines.append(raw.decode().strip())
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<eof>")
            self.changed.notify_all()

    def wait_for(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        with self.changed:
            while not any(predicate(line) for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or "<eof>" in self.lines:
                    return False
                self.changed.wait(left)
            return True


def kill_once(path: str, seed: int, mode: str, rng: random.Random) -> dict:
    """Run one child, kill it at a ``mode`` moment; what it had printed when it died."""
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, os.path.join(here, "crash_kill.py"), "--child",
                             path, str(seed)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    narration = _Narration(proc.stdout)
    try:
        if not narration.wait_for(lambda line: line == "ready", 60):
            raise RuntimeError(f"child for {path} never became ready: {narration.lines}")
        if mode == "random":
            time.sleep(rng.uniform(0.0, 0.35))
        elif mode == "big":
            target = f"big {rng.randrange(BIG_EVERY - 1, RECORDS, BIG_EVERY)}"
            narration.wait_for(lambda line: line == target, 60)
            time.sleep(rng.uniform(0.0, 0.02))
        else:
            narration.wait_for(lambda line: line == "closing", 60)
            time.sleep(rng.uniform(0.0, 0.002))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        narration.thread.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = [int(line.split()[1]) for line in narration.lines if line.startswith("done ")]
    return {"completed": (max(done) + 1) if done else 0, "closed": "closed" in narration.lines,
            "closing": "closing" in narration.lines, "lines": narration.lines[-3:]}


def verify(path: str, seed: int, outcome: dict) -> list:
    """What is wrong with the trace a killed child left (empty when nothing is)."""
    import tracediff as td

    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trace = td.open(path)
        except td.TraceDiffError as exc:
            return [f"does not open: {exc}"]
    incomplete = [w for w in caught if issubclass(w.category, td.IncompleteTraceWarning)]
    outcome["complete"] = trace.complete
    if _holds_global_heap(path):
        problems.append("holds an HDF5 global heap (GCOL): variable-length data in a v2 trace")
    with trace:
        if outcome["closed"] and not trace.complete:
            problems.append("close() returned but the trace is not marked complete")
        if trace.complete and len(trace) != RECORDS:
            problems.append(f"marked complete with {len(trace)} of {RECORDS} records")
        if trace.complete == bool(incomplete):
            problems.append(f"complete={trace.complete} but {len(incomplete)} incomplete warning(s)")
        if len(trace) < outcome["completed"]:
            problems.append(f"holds {len(trace)} records, {outcome['completed']} were completed")
        for record in trace:
            kind, name, array, _ = planned_record(seed, record.index)
            if (record.kind, record.name) != (kind, name):
                problems.append(f"record {record.index} is {record.kind} {record.name!r}")
                continue
            value = record.read()
            if value.dtype != array.dtype or value.shape != array.shape or \
                    value.view(np.uint8).tobytes() != array.view(np.uint8).tobytes():
                problems.append(f"record {record.index} ({name}) reads back different values")
    return problems


def _holds_global_heap(path) -> bool:
    """Whether the file holds a global heap collection, where HDF5 keeps variable-length data
    (a flipped bit in one can hang libhdf5; format v2 writes none)."""
    import mmap

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return view.find(b"GCOL") >= 0


def campaign(kills: int, folder: str, seed: int = 0, log=None) -> list:
    """Kill ``kills`` children (modes in turn); one result dict per kill."""
    rng = random.Random(seed)
    results = []
    for k in range(kills):
        mode = MODES[k % len(MODES)]
        path = os.path.join(folder, f"kill{k:03d}.h5")
        child_seed = seed * 1000 + k
        outcome = kill_once(path, child_seed, mode, rng)
        outcome.update(kill=k, mode=mode, path=path, problems=verify(path, child_seed, outcome))
        results.append(outcome)
        if log:
            log(f"kill {k:3d} {mode:6s} completed={outcome['completed']:2d} "
                f"closed={outcome['closed']!s:5s} complete={outcome.get('complete')!s:5s} {'OK' if not outcome['problems'] else outcome['problems']}")
        os.remove(path)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", help="folder for the traces (default: a temporary one)")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        results = campaign(args.kills, folder, args.seed, log=print)
    failed = [r for r in results if r["problems"]]
    by_mode = {m: sum(1 for r in results if r["mode"] == m) for m in MODES}
    in_close = sum(1 for r in results if r["closing"] and not r["closed"])
    print(f"{len(results)} kills ({', '.join(f'{n} {m}' for m, n in by_mode.items())}; "
          f"{in_close} landed inside close()): {len(failed)} trace(s) lost records or failed to open; "
          f"{time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
