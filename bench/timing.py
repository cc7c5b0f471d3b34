"""Shared by the benchmark scripts (run as ``python bench/<script>.py``, so importable by name)."""
import statistics
import time


def median_seconds(fn, repeats):
    """Median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_cpu_seconds(fn, repeats):
    """Median CPU time of this process over ``repeats`` calls of ``fn``: on a loaded machine
    it moves far less than wall time (with one compute thread)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)
