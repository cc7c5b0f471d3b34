"""``tracediff show``: the table, JSON for scripts, warnings and one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

import tracediff as td
from tracediff.cli import main


@pytest.fixture()
def trace_path(tmp_path):
    path = tmp_path / "t.h5"
    with td.Recorder(path, framework="numpy", dims={"batch": 3, "seq": 5, "hidden": 7}, model="Block") as rec:
        rec.input("x", np.ones((3, 5, 7), np.float32))
        rec.forward("attn.softmax", np.array([[np.nan, 1.0, np.inf]], np.float32))
        rec.forward("fc1", np.ones((3, 5, 21), np.float32))
    return path


def test_table_lists_records_with_symbolic_shapes_and_flags(trace_path, capsys):
    assert main(["show", str(trace_path)]) == 0
    out = capsys.readouterr().out
    assert "framework numpy" in out and "model Block" in out and "3 records" in out
    assert "[batch, seq, hidden]" in out and "[batch, seq, batch*hidden]" in out
    assert "NaN x1 Inf x1" in out
    assert out.index("x ") < out.index("attn.softmax") < out.index("fc1")


def test_json_listing(trace_path, capsys):
    assert main(["show", str(trace_path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["schema"] == "tracediff.show/1" and payload["complete"] is True
    assert payload["dims"] == {"batch": 3, "seq": 5, "hidden": 7}
    first = payload["records"][1]
    assert (first["name"], first["kind"], first["shape"], first["dtype"]) == \
        ("attn.softmax", "forward", [1, 3], "float32")
    assert first["stats"]["nan"] == 1 and first["stats"]["inf"] == 1


def test_filters(trace_path, capsys):
    assert main(["show", str(trace_path), "--kind", "input", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["records"]] == ["x"]
    assert main(["show", str(trace_path), "--name", "attn.*", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["records"]] == ["attn.softmax"]


def test_warns_when_declared_dims_collide(tmp_path, capsys):
    path = tmp_path / "t.h5"
    with td.Recorder(path, dims={"batch": 3, "heads": 3}) as rec:
        rec.forward("x", np.ones((3, 3)))
    assert main(["show", str(path)]) == 0
    assert capsys.readouterr().err == (
        "tracediff: warning: dims batch, heads have the same size (3): a swap between them cannot "
        "be detected; use distinct primes (td.primes.dims)\n")


@pytest.mark.parametrize("content, message", [
    (None, "cannot open trace {path}: no such file"),
    (b"not hdf5", "{path} is not a tracediff trace: not an HDF5 file; traces are written by tracediff record / td.Recorder"),
])
def test_bad_files_exit_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.h5"
    if content is not None:
        path.write_bytes(content)
    assert main(["show", str(path)]) == 2
    assert capsys.readouterr().err == f"tracediff show: error: {message.format(path=path)}\n"


def test_bad_arguments_exit_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "tracediff", "show"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == ("tracediff show: error: the following arguments are required: TRACE "
                           "(see tracediff show --help)\n")


def test_python_dash_m_and_console_script_agree(trace_path):
    module = subprocess.run([sys.executable, "-m", "tracediff", "show", str(trace_path), "--json"],
                            capture_output=True, text=True)
    assert module.returncode == 0
    assert json.loads(module.stdout)["records"][2]["name"] == "fc1"
