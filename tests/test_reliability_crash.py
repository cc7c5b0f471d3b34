"""SIGKILL at random moments (mid-run, inside a large-tensor write, inside close()) never loses
a completed record and never leaves a trace that does not open. bench/crash_kill.py runs the
100-kill campaign; tests/test_trace_crash.py kills a steady writer of small records."""
import importlib.util
import pathlib
import subprocess
import sys
import textwrap
import warnings


import tracediff as td

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "crash_kill.py"


def load_crash_kill():
    spec = importlib.util.spec_from_file_location("crash_kill", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_five_kills_at_random_moments_keep_every_completed_record(tmp_path):
    crash_kill = load_crash_kill()
    results = crash_kill.campaign(5, str(tmp_path), seed=11)
    assert [r["mode"] for r in results] == ["random", "big", "close", "random", "big"]
    assert [(r["kill"], r["problems"]) for r in results] == [(k, []) for k in range(5)]
    # the kills landed where they were aimed: within 20 ms of a large write beginning (inside it,
    # or on a fast disk just after it), and after close began
    assert results[1]["completed"] % crash_kill.BIG_EVERY in (crash_kill.BIG_EVERY - 1, 0)
    assert results[2]["closing"] and results[2]["completed"] == crash_kill.RECORDS


def test_verify_notices_a_lost_record(tmp_path):
    """The campaign's check is not vacuous: a trace missing a completed record is reported."""
    crash_kill = load_crash_kill()
    path = tmp_path / "short.h5"
    with td.Recorder(path) as rec:
        for index in range(3):
            kind, name, array, _ = crash_kill.planned_record(5, index)
            rec.record(kind, name, array)
    problems = crash_kill.verify(str(path), 5, {"completed": 4, "closed": True})
    assert problems == [f"marked complete with 3 of {crash_kill.RECORDS} records",
                        "holds 3 records, 4 were completed"]


KILLED_AS_CLOSE_ENDS = textwrap.dedent("""
    import os, sys
    import h5py
    import numpy as np
    import tracediff as td

    def die(self):
        os._exit(9)      # SIGKILL-like: no cleanup, the HDF5 file is never closed

    rec = td.Recorder(sys.argv[1])
    rec.forward("fc1", np.arange(6.0))
    h5py.File.close = die
    rec.close()
""")


def test_a_trace_whose_close_flushed_its_end_marker_is_complete(tmp_path):
    # close() marks the end in state[1], flushed before the file is closed, and changes no
    # attribute: a writer killed while HDF5 flushed an attribute change in SWMR mode left
    # metadata that readers retried for minutes (found by bench/crash_kill.py), and one killed
    # after reopening the file "r+" left it unopenable.
    path = tmp_path / "t.h5"
    proc = subprocess.run([sys.executable, "-c", KILLED_AS_CLOSE_ENDS, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace = td.open(path)
    assert trace.complete and len(trace) == 1
    assert trace[0].read().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
