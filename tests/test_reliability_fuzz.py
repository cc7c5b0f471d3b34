"""Damaged traces (hypothesis): td.open, reading every record, and `tracediff show`, `diff` and
`check` answer each with a result or ONE clear error line, never a traceback, a hang or an
allocation sized by a declared shape (format v2 holds no variable-length data, so no HDF5 global
heap where one flipped bit could hang libhdf5). bench/fuzz_traces.py holds the mutations and the
probe and runs 10,000 cases; here a few hundred, derandomized so that a failure reproduces."""
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tracediff as td

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "fuzz_traces.py"
CASES = 200


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_traces", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    base_a, base_b = fuzz.build_base(str(folder))
    return base_a, base_b, folder


@settings(max_examples=CASES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(damages=fuzz.mutations(), mutated_is_a=st.booleans(), full=st.integers(0, 4))
def test_damaged_traces_get_a_result_or_one_clear_error(bases, damages, mutated_is_a, full):
    base_a, base_b, folder = bases
    problems = fuzz.run_case(damages, base_a, base_b, str(folder), mutated_is_a, full=full == 0)
    assert problems == []


def test_base_traces_are_valid_and_diverge_in_one_layer(bases):
    """The undamaged traces give a result, so a damaged one that answers exit 1 is no accident."""
    base_a, base_b, folder = bases
    assert fuzz.run_case([], base_a, base_b, str(folder)) == []
    report = td.diff(base_a, base_b)
    assert report.first_divergence.forward.b_name == "fc1"
    assert len(td.open(base_a)) == fuzz.N_ROWS


# -- the harness catches what it is meant to catch ------------------------------------------------

@pytest.mark.parametrize("code, stderr, problem", [
    (2, "tracediff show: error: TypeError: bad (run again with --debug for the traceback)\n",
     "show: unexpected exception: tracediff show: error: TypeError: bad (run again with --debug for the traceback)"),
    (2, "tracediff show: error: one\ntracediff show: error: two\n",
     "show exited 2 with 2 error lines: ['tracediff show: error: one', 'tracediff show: error: two']"),
    (2, "", "show exited 2 with 0 error lines: []"),
    (1, "", "show exited 1: []"),
    (0, "tracediff: warning: incomplete trace: x\n", None),
    (2, "tracediff: warning: incomplete trace: x\ntracediff show: error: damaged\n", None),
])
def test_judge_accepts_one_clear_line_and_nothing_else(code, stderr, problem):
    assert fuzz.judge(["show", "t.h5"], code, stderr) == ([problem] if problem else [])


def test_guard_turns_a_hang_into_a_report():
    started = time.monotonic()
    with pytest.raises(fuzz.CaseTimeout):
        with fuzz.guarded(timeout_s=0.2):
            time.sleep(5)
    assert time.monotonic() - started < 2


def test_guard_caps_memory():
    with pytest.raises(MemoryError):
        with fuzz.guarded(memory=256 << 20):
            np.ones(1 << 30, np.uint8)          # 1 GiB, touched
    np.ones(1 << 30, np.uint8)                  # the cap is lifted afterwards


# -- a declared shape of 2**60 elements never allocates ---------------------------------------------

def test_declared_2_60_elements_are_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.h5"
    with td.Recorder(path) as rec:
        rec.forward("fc1", np.ones((2, 3), np.float32))
        rec.forward("stats", np.ones((2, 3), np.float32), values=False)
    with h5py.File(path, "r+") as f:      # shape, element count and byte size all agree: 4 EiB
        for row in (0, 1):
            fuzz.set_text(f, row, "shape", json.dumps([2 ** 60]))
        rows = f["records"][()]
        rows["numel"] = 2 ** 60
        rows["nbytes"] = 2 ** 62
        f["records"][...] = rows
    with fuzz.guarded(memory=256 << 20):
        trace = td.open(path)
        assert trace.get("fc1").shape == (2 ** 60,)      # listing works
        with pytest.raises(td.TraceDiffError) as read:
            trace.get("fc1").read()
        with pytest.raises(td.TraceDiffError) as sample:
            trace.get("stats").sample()                   # draws 64 indices of 2**60, reads 6
    assert str(read.value) == (f"{path} is damaged: record 0 ('fc1') points outside the stored "
                               "data; record it again")
    assert str(sample.value) == (f"{path} is damaged: record 1 ('stats') keeps a sample of 6 "
                                 "element(s) where 64 were drawn; record it again")


# -- the same answers through a real process: one line on stderr, exit 2 ----------------------------

def _damaged_files(folder, base_a):
    damages = {
        "truncated": [("truncate", 0.5)],
        "bitflips": [("bitflip", [(0.3, 1), (0.5, 3), (0.7, 5), (0.9, 7)])],
        "huge_shape": [("huge_shape", 4, 2 ** 60)],
        "no_records": [("dataset", "records", "delete")],
        "bad_dtype": [("field_text", 2, "dtype", "float128")],
        "bad_utf8": [("field_text", 3, "name", b"\xff")],
        "strings_cut": [("strings_cut", 0.5)],
    }
    for label, damage in damages.items():
        path = folder / f"{label}.h5"
        fuzz.apply(damage, base_a, str(path))
        yield label, path


def test_damaged_traces_through_the_command_line(bases, tmp_path):
    base_a, base_b, _ = bases
    answers = {}
    for label, path in _damaged_files(tmp_path, base_a):
        for argv in (["show", str(path)], ["diff", str(path), base_b], ["check", str(path)]):
            proc = subprocess.run([sys.executable, "-m", "tracediff", *argv], capture_output=True,
                                  text=True, timeout=120)
            problems = fuzz.judge(argv, proc.returncode, proc.stderr)
            assert problems == [] and "Traceback" not in proc.stderr, (label, argv, proc.stderr)
            answers[(label, argv[0])] = proc.returncode
    # the damage that leaves the index readable still lists; the data damage shows on reading
    assert answers[("truncated", "show")] == 2 and answers[("no_records", "show")] == 2
    assert answers[("huge_shape", "show")] == 0 and answers[("huge_shape", "diff")] == 2
    assert answers[("bad_dtype", "diff")] == 2
    # damaged index strings are refused at open, by every verb
    assert {answers[("bad_utf8", verb)] for verb in ("show", "diff", "check")} == {2}
    assert {answers[("strings_cut", verb)] for verb in ("show", "diff", "check")} == {2}


def test_a_damaged_v2_trace_never_gains_a_global_heap(bases, tmp_path):
    """The mutations write text the way the recorder does (fixed-length), so every damaged file
    of the campaign is still free of variable-length data, as a v2 trace on disk is."""
    base_a, _, _ = bases
    damages = [("attr_set", "model", "é" * 300), ("field_text", 3, "meta", "{}"),
               ("field_retype", "hash_len", "S16"), ("dataset", "strings", "strings")]
    for damage in damages:
        path = tmp_path / "case.h5"
        fuzz.apply([damage], base_a, str(path))
        assert b"GCOL" not in path.read_bytes(), damage
