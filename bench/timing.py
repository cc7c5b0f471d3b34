"""Shared by the benchmark scripts (run as ``python bench/<script>.py``, so importable by name)."""
import statistics
import time


def median_seconds(fn, repeats, clock=time.perf_counter):
    """Median time of ``repeats`` calls of ``fn`` by ``clock`` (wall time by default)."""
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict, repeats, clock=time.perf_counter) -> dict:
    """``{name: median time}`` of ``repeats`` rounds, each calling every function of ``fns``
    once in turn: on a machine whose speed drifts (a shared VM), each measure sees the same
    conditions, so their ratios hold where separate runs of medians would not."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}
