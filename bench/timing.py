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
