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


def median_cpu_seconds(fn, repeats):
    """Median CPU time of this process over ``repeats`` calls of ``fn``: on a loaded machine
    it moves far less than wall time (with one compute thread)."""
    return median_seconds(fn, repeats, clock=time.process_time)
