"""Multi-rank traces from real torch.distributed runs (gloo, CPU, 2 ranks, one thread each):
each rank records its own file, ``td.open(folder)`` reads them as one trace, the diff against
a one-process reference reassembles shards by placement and names a missing all-reduce, a
shard along the wrong axis and a diverged replica at their layer and ranks."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is required", allow_module_level=True)

import tracediff as td  # noqa: E402
from tracediff.cli import main  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.errors import TraceDiffError, TraceFormatError  # noqa: E402
from tracediff.ranks import RankedTrace  # noqa: E402

import ranks_runs as runs  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Every distributed run of this file, in one 2-rank job, and the one-process references."""
    folder = tmp_path_factory.mktemp("ranks")
    runs.spawn(folder, world=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, x, target = runs.tp_reference()
        tdt.record(model, x, folder / "tp_ref.h5", loss_fn=runs.mse(target))
        model, x, target = runs.dp_reference()
        tdt.record(model, x, folder / "dp_ref.h5", loss_fn=runs.mse(target))
        model, x, target = runs.encoder_reference()
        tdt.record(model, x, folder / "encoder_ref.h5", loss_fn=runs.mse(target))
    finally:
        torch.set_num_threads(before)
    return folder


def test_each_rank_writes_its_own_file_and_rank_0_the_manifest(root):
    folder = root / "tp.trace"
    assert sorted(os.listdir(folder)) == ["manifest.json", "rank-00000.h5", "rank-00001.h5"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert manifest["ranks"] == [{"rank": 0, "file": "rank-00000.h5"}, {"rank": 1, "file": "rank-00001.h5"}]
    assert manifest["mesh"]["shape"] == [2]
    for rank in (0, 1):
        with td.open(folder / f"rank-{rank:05d}.h5") as trace:
            assert trace.rank == rank and trace.attrs["world_size"] == 2
            assert {r.rank for r in trace} == {rank}
    # a {rank} template names the files; the manifest lists them
    fsdp = json.loads((root / "fsdp.trace" / "manifest.json").read_text())
    assert [e["file"] for e in fsdp["ranks"]] == ["rank-0.h5", "rank-1.h5"]


def test_open_folder_reads_all_ranks_as_one_trace(root):
    with td.open(root / "tp.trace") as trace, td.open(root / "tp_ref.h5") as ref:
        assert isinstance(trace, RankedTrace) and trace.world_size == 2
        assert sorted((r.kind, r.name) for r in trace) == sorted((r.kind, r.name) for r in ref)
        up = trace.get("mlp.up.weight", kind="param")
        assert up.rank is None and up.ranks == (0, 1)
        assert up.meta["placement"] == "Shard(0)"
        assert [p.record.shape for p in up.parts] == [(8, 8), (8, 8)]
        assert up.shape == (16, 8)
        assert np.array_equal(up.read(), ref.get("mlp.up.weight", kind="param").read())
        down = trace.get("mlp.down")
        assert down.meta["placement"] == "Partial(sum)"
        np.testing.assert_allclose(down.read(), ref.get("mlp.down").read(), rtol=1e-5, atol=1e-6)
        # the gradient of a partial sum reaches every rank whole
        assert trace.get("mlp.down", kind="backward").meta["placement"] == "Replicate()"
        assert trace.get("mlp.down.weight", kind="param_grad").meta["placement"] == "Shard(1)"


def test_correct_tensor_parallel_run_diffs_clean(root):
    report = td.diff(root / "tp.trace", root / "tp_ref.h5")
    assert report.ok, [(p.kind, p.label(), p.status) for p in report.diverged_pairs]
    assert report.findings == []
    assert report.unmatched == {"a": [], "b": []}
    assert {p.kind for p in report.pairs} == {"input", "forward", "backward", "loss", "param", "param_grad"}


def test_missing_all_reduce_is_named_at_its_layer_and_ranks(root):
    report = td.diff(root / "tp_no_reduce.trace", root / "tp_ref.h5")
    assert not report.ok
    assert report.first_divergence.forward.a_name == "mlp"
    finding = report.findings[0]
    assert (finding["kind"], finding["a_name"], finding["record_kind"], finding["ranks"]) == \
        ("missing_all_reduce", "mlp", "forward", [0, 1])
    assert "their sum is the reference's: a missing all-reduce" in finding["message"]
    assert report.first_divergence.forward.hint.startswith("missing_all_reduce: forward mlp")
    assert [f["kind"] for f in report.findings] == ["missing_all_reduce"]   # later ones counted in it


def test_data_parallel_run_diffs_clean_with_gradients_after_all_reduce(root):
    with td.open(root / "ddp.trace" / "rank-00001.h5") as rank1:
        assert rank1.get("embed").meta["placement"] == "Shard(0)"
        assert rank1.get("embed").shape == (2, 6, 8)
        assert rank1.get("loss", kind="loss").meta["placement"] == "Partial(avg)"
        assert rank1.get("embed", kind="backward").meta["grad_divisor"] == 2
        assert rank1.get("head.weight", kind="param_grad").meta["placement"] == "Replicate()"
    with td.open(root / "ddp.trace") as trace, td.open(root / "dp_ref.h5") as ref:
        # DDP's averaging all-reduce ran before the gradient was recorded: every rank holds the
        # full batch's gradient
        full = ref.get("head.weight", kind="param_grad").read()
        for part in trace.get("head.weight", kind="param_grad").parts:
            np.testing.assert_allclose(part.record.read(), full, rtol=1e-5, atol=1e-7)
    report = td.diff(root / "ddp.trace", root / "dp_ref.h5")
    assert report.ok, [(p.kind, p.label(), p.status) for p in report.diverged_pairs]
    assert report.findings == [] and len(report.pairs) == len(td.open(root / "dp_ref.h5"))


def test_recording_a_ddp_loop_records_gradients_after_their_all_reduce(root):
    with td.open(root / "dp_ref.h5") as ref:
        full = {r.name: r.read() for r in ref.records(kind="param_grad")}
    with td.open(root / "ddp_loop.trace") as trace:
        grads = trace.records(kind="param_grad")
        assert sorted(r.name for r in grads) == sorted(full)
        for record in grads:
            assert record.ranks == (0, 1)
            for part in record.parts:
                np.testing.assert_allclose(part.record.read(), full[record.name], rtol=1e-5, atol=1e-7)


def test_shard_taken_along_the_wrong_axis_is_named(root):
    report = td.diff(root / "ddp_axis.trace", root / "dp_ref.h5")
    assert not report.ok
    finding = report.findings[0]
    assert (finding["kind"], finding["a_name"], finding["record_kind"], finding["ranks"]) == \
        ("shard_axis", "input", "input", [0, 1])
    assert "recorded as Shard(0) on ranks 0, 1, but its shards join into the reference along " \
           "axis 1" in finding["message"]
    assert report.first_divergence.forward.a_name == "embed"
    assert [f["kind"] for f in report.findings] == ["shard_axis", "shard_axis"]   # input, then embed


def test_diverged_replica_is_named_with_its_rank(root):
    report = td.diff(root / "ddp_replica.trace", root / "dp_ref.h5")
    assert not report.ok
    finding = report.findings[0]
    assert (finding["kind"], finding["a_name"], finding["record_kind"], finding["ranks"]) == \
        ("replica", "head.weight", "param", [1])
    assert "rank(s) 0 agree with the reference" in finding["message"]
    # the copy that diverged is the one compared: the parameter pair fails too
    param = next(p for p in report.pairs if p.kind == "param" and p.a_name == "head.weight")
    assert param.diverged and param.hint.startswith("replica: param head.weight")
    assert report.first_divergence.forward.a_name == "head"


def test_fsdp2_parameters_are_recorded_as_their_shards(root):
    with td.open(root / "fsdp.trace" / "rank-1.h5") as rank1:
        weight = rank1.get("layers.0.self_attn.in_proj_weight", kind="param")
        assert weight.shape == (12, 8)           # 24 rows over 2 ranks
        assert weight.meta["placement"] == "Shard(0)"
        assert (weight.meta["mesh"], weight.meta["mesh_coord"]) == ([2], [1])
        assert weight.meta["global_shape"] == [24, 8]
        bias = rank1.get("layers.1.linear2.bias", kind="param_grad")
        assert (bias.shape, bias.meta["placement"]) == ((4,), "Shard(0)")
        assert rank1.get("layers.1.linear1", kind="forward").meta["placement"] == "Shard(0)"
    report = td.diff(root / "fsdp.trace", root / "encoder_ref.h5")
    assert report.ok, [(p.kind, p.label(), p.status) for p in report.diverged_pairs]
    assert report.findings == []


def test_dtensor_tensor_parallel_run_records_placements_and_diffs_clean(root):
    with td.open(root / "dtensor_tp.trace" / "rank-00001.h5") as rank1:
        up = rank1.get("mlp.up.weight", kind="param")
        assert (up.shape, up.meta["placement"], up.meta["mesh_coord"]) == ((8, 8), "Shard(0)", [1])
        down = rank1.get("mlp.down.weight", kind="param_grad")
        assert (down.shape, down.meta["placement"]) == ((8, 8), "Shard(1)")
        assert rank1.get("head.weight", kind="param").meta["placement"] == "Replicate()"
        act = rank1.get("mlp.act")
        assert (act.shape, act.meta["placement"], act.meta["global_shape"]) == ((2, 3, 8), "Shard(2)", [2, 3, 16])
        assert rank1.get("mlp.act", kind="backward").meta["placement"] == "Shard(2)"
    report = td.diff(root / "dtensor_tp.trace", root / "tp_ref.h5")
    assert report.ok, [(p.kind, p.label(), p.status) for p in report.diverged_pairs]
    assert report.findings == [] and report.unmatched == {"a": [], "b": []}


def test_plain_file_under_several_ranks_is_refused(root):
    assert (root / "refusal.txt").read_text() == (
        f"cannot record {root / 'plain-0.h5'} from 2 ranks: each rank records its own file; give "
        "a folder ('run.trace') or a template with {rank} ('run.trace/rank-{rank:05d}.h5')")


def test_missing_and_incomplete_ranks_are_named_in_one_line(root, tmp_path, capsys):
    folder = tmp_path / "run.trace"
    shutil.copytree(root / "tp.trace", folder)
    os.remove(folder / "rank-00001.h5")
    with pytest.raises(TraceFormatError) as missing:
        td.open(folder)
    assert str(missing.value) == (
        f"{folder}: rank(s) 1 missing (rank-00001.h5) of 2 rank(s); every rank must record and "
        "close its trace: record the run again")
    assert main(["diff", str(folder), str(root / "tp_ref.h5")]) == 2
    err = capsys.readouterr().err
    assert "rank(s) 1 missing (rank-00001.h5)" in err and len(err.strip().splitlines()) == 1
    writer = td.Recorder(folder / "rank-00001.h5", framework="torch", rank=1, world_size=2)
    try:
        writer.forward("ln", np.zeros((2, 3, 8), np.float32))
        writer.flush()
        with pytest.raises(TraceFormatError, match=r"rank\(s\) 1 incomplete \(their writer did not "
                                                    r"close rank-00001.h5\) of 2 rank\(s\)"):
            td.open(folder)
    finally:
        writer.close()


def test_cli_show_diff_and_check_accept_a_rank_folder(root, capsys):
    assert main(["show", str(root / "tp.trace"), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["attrs"]["world_size"] == 2
    assert next(r for r in listing["records"] if r["name"] == "mlp.up.weight")["shape"] == [16, 8]
    assert main(["diff", str(root / "tp_no_reduce.trace"), str(root / "tp_ref.h5")]) == 1
    out = capsys.readouterr().out
    assert "finding (missing_all_reduce): forward mlp: the copies on ranks 0, 1 disagree" in out
    assert main(["check", str(root / "ddp.trace")]) == 0
    assert "0 fail" in capsys.readouterr().out


def test_a_folder_outside_torch_distributed_is_a_one_rank_trace(tmp_path, root):
    model, x, target = runs.tp_reference()
    tdt.record(model, x, tmp_path / "one.trace", loss_fn=runs.mse(target))
    assert sorted(os.listdir(tmp_path / "one.trace")) == ["manifest.json", "rank-00000.h5"]
    with td.open(tmp_path / "one.trace") as trace:
        assert trace.world_size == 1 and trace.get("mlp.up").ranks == (0,)
    assert td.diff(tmp_path / "one.trace", root / "tp_ref.h5").ok


def test_bad_shards_declaration_is_one_line(tmp_path):
    with pytest.raises(TraceDiffError, match=r"^shards\['fc'\]: 'Shard\(\)' names no axis: write Shard\(d\)"):
        tdt.record(torch.nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "t.h5", shards={"fc": "Shard()"})
    with pytest.raises(TraceDiffError, match=r"^shards\['\*'\]: 'Split\(0\)' is not a placement: use "
                                             r"Shard\(d\), Replicate\(\), Partial\(sum\) or Partial\(avg\)$"):
        tdt.record(torch.nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "t.h5", shards={"*": "Split(0)"})
    assert not (tmp_path / "t.h5").exists()
