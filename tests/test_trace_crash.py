"""A writer killed with SIGKILL leaves a trace readable up to its last complete record."""
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import tracediff as td
from tracediff.cli import main

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import tracediff as td
    with td.Recorder(sys.argv[1], overwrite=True) as rec:
        i = 0
        while True:
            rec.forward(f"layer{i}", np.full((31, 37), i, dtype=np.float32))
            i += 1
            print(i, flush=True)
""")


def kill_writer_after(path, records_at_least):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    done = 0
    deadline = time.monotonic() + 60
    while done < records_at_least and time.monotonic() < deadline:
        done = int(proc.stdout.readline() or done)
    proc.send_signal(signal.SIGKILL)
    rest = proc.stdout.read().split()
    proc.wait()
    return int(rest[-1]) if rest else done


@pytest.mark.parametrize("records_at_least", [1, 57, 211])
def test_sigkill_mid_write_keeps_every_completed_record(tmp_path, records_at_least):
    path = tmp_path / "killed.h5"
    completed = kill_writer_after(path, records_at_least)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = td.open(path)
    assert not trace.complete
    assert len(trace) >= completed >= records_at_least
    assert [str(w.message) for w in caught] == [
        f"{path} is incomplete (its writer did not close it): {len(trace)} record(s) readable "
        "up to the last complete one"]
    for record in trace:
        assert record.name == f"layer{record.index}"
        assert np.all(record.read() == record.index)


def test_show_reads_a_killed_trace_with_one_warning_line(tmp_path, capsys):
    path = tmp_path / "killed.h5"
    kill_writer_after(path, 5)
    assert main(["show", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("tracediff: warning: incomplete trace: ")
    assert len(captured.err.strip().splitlines()) == 1
    assert "layer4" in captured.out and "INCOMPLETE" in captured.out


def test_exception_in_with_block_leaves_incomplete_but_readable_trace(tmp_path):
    path = tmp_path / "t.h5"
    with pytest.raises(RuntimeError):
        with td.Recorder(path) as rec:
            rec.forward("fc1", np.ones(3))
            raise RuntimeError("model failed")
    with pytest.warns(td.IncompleteTraceWarning):
        trace = td.open(path)
    assert [r.name for r in trace] == ["fc1"]


def test_trace_being_written_can_be_read(tmp_path):
    path = tmp_path / "live.h5"
    with td.Recorder(path) as rec:
        rec.forward("fc1", np.ones(3))
        with pytest.warns(td.IncompleteTraceWarning):
            live = td.open(path)
        assert [r.name for r in live] == ["fc1"] and live[0].read().tolist() == [1, 1, 1]
        live.close()
        rec.forward("fc2", np.ones(3))
    assert [r.name for r in td.open(path)] == ["fc1", "fc2"]


def test_overwriting_a_trace_open_for_reading_leaves_the_reader_on_the_old_one(tmp_path):
    path = tmp_path / "t.h5"
    with td.Recorder(path) as rec:
        rec.forward("old", np.ones(2))
    reader = td.open(path)
    with td.Recorder(path, overwrite=True) as rec:
        rec.forward("new", np.zeros(2))
    assert [r.name for r in reader] == ["old"] and reader[0].read().tolist() == [1.0, 1.0]
    reader.close()
    assert [r.name for r in td.open(path)] == ["new"]
