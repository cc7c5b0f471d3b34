"""Issue 22 §1: steps, decode steps and batches are three distinct record fields (format v3),
older traces still read, and the checks treat only ``step`` as training."""
import json
import shutil
from pathlib import Path

import numpy as np

import tracediff as td

GOLDEN_V2 = Path(__file__).parent.parent / "traces" / "test_golden_examples" / "test_numpy_demo_net[mlp].h5"


def test_step_decode_step_and_batch_index_round_trip(tmp_path):
    path = tmp_path / "t.h5"
    with td.Recorder(path) as rec:
        rec.step(2)
        rec.forward("fc", np.ones(3))
        rec.decode_step(1, positions=(5, 6))
        rec.forward("fc", np.ones(3))
        rec.batch(4)
        rec.forward("fc", np.ones(3))
        rec.param("fc.weight", np.ones(2))
    trace = td.open(path)
    assert trace.attrs["format_version"] == 3
    assert [r.position for r in trace] == [(2, -1, -1), (2, 1, -1), (2, 1, 4), (2, 1, 4)]
    # call indices restart in each group: the same layer again is call 0, not 1
    assert [r.call for r in trace] == [0, 0, 0, 0]
    assert trace.get("fc", decode_step=1, batch_index=-1).meta["positions"] == [5, 6]
    assert "positions" not in trace.get("fc.weight", kind="param").meta
    assert (trace.steps, trace.decode_steps, trace.batches) == ([2], [-1, 1], [-1, 4])
    assert len(trace.records(kind="forward", decode_step=1)) == 2


def test_a_v2_trace_still_reads_outside_decode_steps_and_batches(tmp_path):
    path = tmp_path / "v2.h5"
    shutil.copyfile(GOLDEN_V2, path)
    trace = td.open(path)
    assert trace.version == 2 and len(trace) > 5
    assert {(r.decode_step, r.batch_index) for r in trace} == {(-1, -1)}
    assert td.diff(path, path).ok


def _identical_inputs_differing_outputs(path, group):
    """Two forward passes on the same input whose outputs differ: as a KV cache makes decode
    steps differ, and as an active dropout makes two batches differ."""
    x = np.arange(6.0).reshape(2, 3)
    with td.Recorder(path, meta={"mode": "eval"}) as rec:
        for k in range(2):
            group(rec, k)
            rec.input("input_ids", x)
            rec.forward("attn", x * (k + 1), op_type="Linear")


def _check(path, check_id="train_mode"):
    return next(c for c in td.check(path).to_dict()["checks"] if c["id"] == check_id)


def test_train_mode_does_not_fire_on_decode_steps(tmp_path):
    _identical_inputs_differing_outputs(tmp_path / "decode.h5", lambda rec, k: rec.decode_step(k + 1))
    assert _check(tmp_path / "decode.h5")["status"] != "fail"
    # the same two passes as batches of an evaluation set are a nondeterministic forward
    _identical_inputs_differing_outputs(tmp_path / "batches.h5", lambda rec, k: rec.batch(k))
    result = _check(tmp_path / "batches.h5")
    assert result["status"] == "fail" and result["layers"] == ["attn"]
    assert "batch 0" in result["message"] and "batch 1" in result["message"]


def test_a_plain_diff_report_names_step_minus_one_and_no_decode_step(tmp_path):
    path = tmp_path / "one.h5"
    with td.Recorder(path) as rec:
        rec.forward("fc", np.ones(3))
    other = tmp_path / "two.h5"
    with td.Recorder(other) as rec:
        rec.forward("fc", np.zeros(3))
    first = json.loads(td.diff(path, other).to_json())["first_divergence"]
    assert first["step"] == -1 and "decode_step" not in first and first["forward"]["b_name"] == "fc"
    assert json.loads(td.diff(path, path).to_json())["first_divergence"]["step"] is None
    assert json.loads(td.diff(path, path).to_json())["steps"] is None


def test_show_lists_where_each_record_lies(tmp_path, capsys):
    from tracediff.cli import main

    path = tmp_path / "gen.h5"
    with td.Recorder(path) as rec:
        for t in range(2):
            rec.decode_step(t, positions=(3 + t, 4 + t))
            rec.forward("h", np.ones(2))
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert " at " in out.splitlines()[2] and "decode step 1" in out
    assert main(["show", str(path), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)["records"]
    assert [(r["step"], r["decode_step"], r["batch_index"]) for r in records] == [(-1, 0, -1), (-1, 1, -1)]


def test_numpy_record_over_batches_names_the_worst_batch_and_row(tmp_path):
    from tracediff.adapters import numpy as tdn

    rng = np.random.default_rng(0)
    W = rng.normal(size=(5, 7))
    batches = [rng.normal(size=(4, 5)) for _ in range(3)]

    def net(clip):
        def run(rec, x):
            h = rec_forward(rec, "fc", x @ W)
            return rec_forward(rec, "act", np.clip(h, -clip, clip))   # a port's wrong clamp
        return run

    def rec_forward(rec, name, value):
        rec.forward(name, value)
        return value

    tdn.record(net(np.inf), batches, tmp_path / "ref.h5", batches=True)
    outputs = tdn.record(net(2.5), batches, tmp_path / "cand.h5", batches=True)
    assert len(outputs) == 3 and td.open(tmp_path / "cand.h5").batches == [0, 1, 2]
    report = td.diff(tmp_path / "cand.h5", tmp_path / "ref.h5")
    act = next(x for x in report.to_dict()["steps"]["layers"] if x["b_name"] == "act")
    h = [np.abs(x @ W) - 2.5 for x in batches]              # how far each row is clipped
    worst = max(range(3), key=lambda b: h[b].max())
    assert (act["worst"]["batch_index"], act["worst"]["row"]) == (worst, int(np.argmax(h[worst].max(axis=1))))
    assert report.first_divergence.forward.b_name == "act"


def test_cli_diff_exits_1_and_its_json_names_the_step(tmp_path):
    from tracediff.cli import main

    def run(path, bad_step):
        with td.Recorder(path) as rec:
            for step in range(3):
                rec.step(step)
                rec.forward("fc", np.full(4, float(step)) + (1.0 if step == bad_step else 0.0))
    run(tmp_path / "a.h5", bad_step=1)
    run(tmp_path / "b.h5", bad_step=None)
    assert main(["diff", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--json", str(tmp_path / "r.json")]) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["first_divergence"]["step"] == 1 and report["first_divergence"]["forward"]["step"] == 1
    assert report["steps"]["layers"][0]["diverged"] == [1]
