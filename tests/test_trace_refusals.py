"""Every refusal is one line that says what, where and what to do."""
import h5py
import numpy as np
import pytest

import tracediff as td
from tracediff.errors import TraceDiffError, TraceFormatError


def test_object_arrays_are_refused(tmp_path):
    with td.Recorder(tmp_path / "t.h5") as rec:
        with pytest.raises(TraceDiffError, match=r"^object arrays cannot be recorded: convert"):
            rec.forward("x", np.array([1, "a", None], dtype=object))


def test_ragged_input_is_refused(tmp_path):
    with td.Recorder(tmp_path / "t.h5") as rec:
        with pytest.raises(TraceDiffError, match=r"^value cannot be recorded: it is ragged .*; pad it"):
            rec.forward("x", [[1.0, 2.0], [3.0]])


def test_strings_are_refused(tmp_path):
    with td.Recorder(tmp_path / "t.h5") as rec:
        with pytest.raises(TraceDiffError, match=r"^dtype <U1 cannot be recorded"):
            rec.forward("x", np.array(["a"]))


def test_existing_file_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "t.h5"
    path.write_bytes(b"keep me")
    with pytest.raises(TraceDiffError) as err:
        td.Recorder(path)
    assert str(err.value) == f"{path} already exists: choose another path or pass overwrite=True"
    assert path.read_bytes() == b"keep me"
    with td.Recorder(path, overwrite=True) as rec:
        rec.forward("x", np.ones(1))
    assert len(td.open(path)) == 1


def test_missing_folder_is_refused(tmp_path):
    path = tmp_path / "nope" / "t.h5"
    with pytest.raises(TraceDiffError, match=r"cannot write trace .*: folder .*nope does not exist"):
        td.Recorder(path)


def test_unknown_kind_and_empty_name(tmp_path):
    with td.Recorder(tmp_path / "t.h5") as rec:
        with pytest.raises(TraceDiffError, match=r"^unknown record kind 'grad': use one of input, forward"):
            rec.record("grad", "x", np.ones(1))
        with pytest.raises(TraceDiffError, match=r"^record name must be a non-empty string, got ''"):
            rec.forward("", np.ones(1))


def test_closed_recorder_refuses_records(tmp_path):
    rec = td.Recorder(tmp_path / "t.h5")
    rec.close()
    with pytest.raises(TraceDiffError, match=r"recorder for .* is closed"):
        rec.forward("x", np.ones(1))


def test_open_missing_file(tmp_path):
    with pytest.raises(TraceFormatError) as err:
        td.open(tmp_path / "missing.h5")
    assert str(err.value) == f"cannot open trace {tmp_path / 'missing.h5'}: no such file"


def test_open_not_hdf5(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(TraceFormatError, match=r"notes.txt is not a tracediff trace: not an HDF5 file"):
        td.open(path)


def test_open_hdf5_of_another_tool(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["weights"] = np.ones(3)
    with pytest.raises(TraceFormatError, match=r"other.h5 is an HDF5 file but not a tracediff trace"):
        td.open(path)


def test_open_newer_format(tmp_path):
    path = tmp_path / "t.h5"
    with td.Recorder(path) as rec:
        rec.forward("x", np.ones(1))
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(TraceFormatError, match=r"uses trace format v99, newer than this tracediff reads \(v3\); upgrade"):
        td.open(path)


def test_open_folder(tmp_path):
    with pytest.raises(TraceFormatError, match=r"it is a folder, not a trace file"):
        td.open(tmp_path)


def test_reading_stats_only_record_says_how_to_get_values(tmp_path):
    path = tmp_path / "s.h5"
    with td.Recorder(path, values=False) as rec:
        rec.forward("fc1", np.ones((3, 7)))
    with pytest.raises(TraceDiffError, match=r"record 'fc1' \(forward\) in .* holds statistics only .*values=True"):
        td.open(path).get("fc1").read()


def test_second_writer_on_a_live_trace_is_refused_and_loses_nothing(tmp_path):
    path = tmp_path / "live.h5"
    with td.Recorder(path) as first:
        first.forward("fc1", np.ones(3))
        with pytest.raises(TraceDiffError) as err:
            td.Recorder(path, overwrite=True)
        assert str(err.value) == (
            f"cannot write trace {path}: another recorder is writing it (two writers on one path); "
            "wait for it to finish or write elsewhere")
        first.forward("fc2", np.ones(3))
    assert [r.name for r in td.open(path)] == ["fc1", "fc2"]


def test_read_only_folder_is_refused(tmp_path):
    import os
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): permissions are not enforced")
        with pytest.raises(TraceDiffError, match=r"cannot write trace .*: permission denied; choose a writable folder"):
            td.Recorder(folder / "t.h5")
    finally:
        folder.chmod(0o700)
