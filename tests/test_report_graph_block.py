"""The report's ``graph`` block (what the HTML graph panel draws) on traces of several groups and
on big traces: one group's records, never a mix of decode steps, and a bounded size."""
import numpy as np

import tracediff as td
from tracediff.compare import graph


def _generation(path, steps=3, scale=1.0):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with td.Recorder(path) as rec:
        for t in range(steps):
            rec.decode_step(t, positions=(t, t + 1))
            rec.input("input_ids", x + t)
            rec.forward("embed", (x + t) * scale, inputs=["input_ids"])
            rec.forward("head", np.tanh(x + t), inputs=["embed"])
    return path


def test_the_graph_of_a_generation_is_its_first_decode_step(tmp_path):
    a = _generation(tmp_path / "a.h5", scale=1.5)
    b = _generation(tmp_path / "b.h5")
    block = td.diff(a, b).to_dict()["graph"]
    assert [(n["kind"], n["name"]) for n in block["nodes"]] == [
        ("input", "input_ids"), ("forward", "embed"), ("forward", "head")]
    assert block["edges"] == [[0, 1], [1, 2]] and block["dataflow"] == "declared"
    assert "omitted" not in block


def test_a_graph_over_the_cap_says_how_much_it_left_out(tmp_path, monkeypatch):
    monkeypatch.setattr(graph, "MAX_NODES", 2)
    a = _generation(tmp_path / "a.h5", steps=1)
    block = td.diff(a, a).to_dict()["graph"]
    assert [n["name"] for n in block["nodes"]] == ["input_ids", "embed"]
    assert block["omitted"] == 1 and block["edges"] == [[0, 1]]
