"""The diff compares several pairs at once on threads (the compiled kernel releases the GIL):
the report must be the one a single thread makes, pair for pair, and an error must stop it
as it stops a single thread."""
from __future__ import annotations

import time

import numpy as np
import pytest

import tracediff as td
from tracediff.compare import engine

from diff_helpers import rng, write


def _traces(tmp_path, planted=None):
    """Forty float32 pairs of 64k-1M elements (mapped, through the kernel, on threads) and some
    small ones (in the main thread); the candidate nudged everywhere and, at ``planted``,
    wrong."""
    names = [f"layer{i}" for i in range(48)]
    sizes = {name: (int(rng(i).integers(1 << 16, 1 << 20)) if i % 6 else 7) for i, name in enumerate(names)}
    ref = {name: rng(100 + i).standard_normal(sizes[name]).astype(np.float32) for i, name in enumerate(names)}
    cand = {name: value * np.float32(1 + 2**-21) for name, value in ref.items()}
    if planted:
        cand[planted] = cand[planted] + np.float32(0.5)
    a = write(tmp_path / "a.h5", [("forward", n, v) for n, v in cand.items()])
    b = write(tmp_path / "b.h5", [("forward", n, v) for n, v in ref.items()])
    return a, b


@pytest.mark.parametrize("planted", [None, "layer31"])
def test_threads_report_what_one_thread_reports(tmp_path, monkeypatch, planted):
    a, b = _traces(tmp_path, planted)
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(engine, "MAX_COMPARE_THREADS", 4)
    threaded = td.diff(a, b)
    monkeypatch.setattr(engine, "MAX_COMPARE_THREADS", 1)
    single = td.diff(a, b)
    assert threaded.to_dict()["pairs"] == single.to_dict()["pairs"]
    assert threaded.ok is (planted is None)
    if planted:
        assert threaded.first_divergence.forward.b_name == planted


def test_threads_hold_a_bounded_number_of_tensors(tmp_path, monkeypatch):
    import threading

    a, b = _traces(tmp_path)
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(engine, "MAX_COMPARE_THREADS", 3)
    live, most, lock = [0], [0], threading.Lock()
    original = engine.compare_pair

    def counted(ra, rb, tol, dims):
        if rb.nbytes < engine.THREADED_PAIR_BYTES:   # small pairs: compared in the main thread
            assert threading.current_thread() is threading.main_thread()
            return original(ra, rb, tol, dims)
        assert threading.current_thread() is not threading.main_thread()
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        try:
            return original(ra, rb, tol, dims)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(engine, "compare_pair", counted)
    assert td.diff(a, b).ok
    assert 1 <= most[0] <= 3


def test_an_error_in_one_pair_stops_the_threaded_diff_with_its_line(tmp_path, monkeypatch):
    a, b = _traces(tmp_path)
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 4)
    original = engine.compare_pair
    started = []

    def failing(ra, rb, tol, dims):
        started.append(rb.name)
        if rb.name == "layer5":
            raise td.TraceFormatError(f"{b} is damaged: record 5 ('layer5') cannot be read")
        time.sleep(0.02)   # slow enough that the error is seen long before the last pair
        return original(ra, rb, tol, dims)

    monkeypatch.setattr(engine, "compare_pair", failing)
    with pytest.raises(td.TraceFormatError, match=r"is damaged: record 5 \('layer5'\) cannot be read$"):
        td.diff(a, b)
    assert len(started) < 48    # the pairs not yet begun were cancelled
