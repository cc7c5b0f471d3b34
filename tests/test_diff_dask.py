"""``td.diff(..., dask=...)`` / ``tracediff diff --dask``: the pairs compared on a Dask cluster
(real worker processes) must give the report the in-process diff gives, and a cluster that
loses pairs must say which, never pass."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("distributed")
torch = pytest.importorskip("torch")

import distributed  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402
from tracediff.cli import main  # noqa: E402
from tracediff.dask import cluster as dask_cluster  # noqa: E402
from tracediff.report.markdown import render_markdown  # noqa: E402

from dask_kill import KillOnce  # noqa: E402

PLANTED = "encoder.layers.1.linear1"


def _model(planted=False):
    """A two-layer torch TransformerEncoder and a classifier head; ``planted``: the weights of
    one feed-forward Linear copied wrong (scaled by 1.01)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    encoder = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True),
        num_layers=2, enable_nested_tensor=False)
    model.add_module("encoder", encoder)
    model.add_module("head", torch.nn.Linear(16, 5))
    if planted:
        with torch.no_grad():
            model.get_submodule(PLANTED).weight.mul_(1.01)
    return model.eval()


def _record(path, planted=False, values=True):
    torch.manual_seed(1)
    x = torch.randn(3, 7, 16)
    target = torch.tensor([[0, 1, 2, 3, 4, 0, 1]] * 3)

    def loss_fn(out):
        return torch.nn.functional.cross_entropy(out.reshape(-1, 5), target.reshape(-1))

    tdt.record(_model(planted), x, path, loss_fn, values=values)
    return str(path)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    return {"ref": _record(root / "ref.h5"), "bug": _record(root / "bug.h5", planted=True),
            "ref_stats": _record(root / "ref_s.h5", values=False),
            "bug_stats": _record(root / "bug_s.h5", planted=True, values=False),
            "root": root}


@pytest.fixture(scope="module")
def client():
    """Three worker processes of one compare thread each, as ``local:3`` starts them: each of
    the two tests that kill one leaves a live one without waiting for its nanny's restart."""
    cluster = distributed.LocalCluster(n_workers=3, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=50)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _compared_on_workers(client, run):
    with distributed.get_task_stream(client) as stream:
        report = run()
    keys = [t["key"] for t in stream.data]
    return report, [k for k in keys if str(k).startswith("tracediff-compare-")]


@pytest.mark.parametrize("values", [True, False], ids=["full", "stats-only"])
def test_dask_report_is_the_in_process_report(client, traces, values):
    suffix = "" if values else "_stats"
    bug, ref = traces["bug" + suffix], traces["ref" + suffix]
    here = td.diff(bug, ref)
    there, tasks = _compared_on_workers(client, lambda: td.diff(bug, ref, dask=client))
    assert tasks, "no pair was compared on a worker"
    assert there.to_dict() == here.to_dict()
    assert there.first_divergence.forward.b_name == PLANTED
    assert not there.ok
    same = td.diff(ref, ref, dask=client)
    assert same.ok and same.to_dict() == td.diff(ref, ref).to_dict()


def test_workers_read_through_hdf5_not_memory_maps(client, traces):
    td.diff(traces["bug"], traces["ref"], dask=client)

    def mappings():
        from tracediff.dask import worker
        return [t._mapped for t in worker._open.values()]

    found = [m for per_worker in client.run(mappings).values() for m in per_worker]
    assert found and all(m is False for m in found)   # False: views read through HDF5


def test_pairs_too_large_for_a_worker_are_compared_here(client, traces, monkeypatch):
    monkeypatch.setattr(dask_cluster, "PAIR_SHARE", 0.0)   # every stored pair above the limit
    here = td.diff(traces["bug"], traces["ref"])
    there, tasks = _compared_on_workers(client, lambda: td.diff(traces["bug"], traces["ref"], dask=client))
    assert there.to_dict() == here.to_dict()
    assert not tasks   # the traces hold no empty tensor: every pair is over a zero limit


def test_a_trace_the_workers_cannot_see_is_one_error(client, traces, tmp_path):
    import shutil

    moved = tmp_path / "bug.h5"
    shutil.copy(traces["bug"], moved)
    with td.open(moved) as bug:      # opened here, then gone from the path the workers get
        moved.unlink()
        with pytest.raises(td.TraceDiffError, match=r"a Dask worker on .* cannot find .*bug\.h5: "
                           r"the traces must be at the same path on every worker"):
            td.diff(bug, traces["ref"], dask=client)


def test_a_killed_worker_s_pairs_are_retried(client, traces, tmp_path):
    marker = tmp_path / "killed"
    here = td.diff(traces["bug"], traces["ref"])
    client.register_plugin(KillOnce(str(marker)), name="kill-once")
    try:
        there = td.diff(traces["bug"], traces["ref"], dask=client)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert marker.exists(), "no worker was killed"
    assert there.to_dict() == here.to_dict()


def test_pairs_lost_with_their_worker_are_named(client, traces, tmp_path, monkeypatch, capsys):
    marker, out = tmp_path / "killed", tmp_path / "r.json"
    here = td.diff(traces["bug"], traces["ref"])
    monkeypatch.setattr(dask_cluster, "BATCH_PAIRS", 4)

    def set_failures(dask_scheduler, n):
        before, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, n
        return before

    before = client.run_on_scheduler(set_failures, n=0)   # no second try: the batch is lost
    client.register_plugin(KillOnce(str(marker)), name="kill-once")
    try:   # the command line joins this cluster by its address
        status = main(["diff", traces["bug"], traces["ref"], "--dask", client.scheduler.address,
                       "--json", str(out), "--quiet"])
    finally:
        client.unregister_worker_plugin("kill-once")
        client.run_on_scheduler(set_failures, n=before)
    there = json.loads(out.read_text())
    # the killed batch, and any other the dead worker held, are missing: the rest is compared
    killed = int(marker.read_text().rsplit("-", 1)[1])
    key = [(p.kind, p.b_name, p.b_call) for p in here.pairs]
    missing = [(m["kind"], m["b_name"], m["b_call"]) for m in there["missing"]]
    assert set(key[4 * killed:4 * killed + 4]) <= set(missing)
    assert len(missing) % 4 == 0 and 4 <= len(missing) < len(key)
    assert all(m["reason"].startswith("KilledWorker") for m in there["missing"])
    assert there["ok"] is False and status == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"tracediff diff: error: {len(missing)} pair(s) were not compared "
        f"({there['missing'][0]['reason']}), see \"missing\" in the JSON report; run again")
    assert f"{len(missing)} pair(s) not compared: {missing[0][0]} {missing[0][1]}" in captured.out
    headline = render_markdown(there).splitlines()[0]       # the HTML report's summary too
    assert headline.startswith("## tracediff: ❌ ") and \
        f"{len(missing)} pair(s) not compared: {missing[0][0]} {missing[0][1]}" in headline
    # the statistics of the pairs compared are the in-process ones (their verdicts and hints
    # may differ: a first divergence among the missing pairs is not there to explain)
    assert [(p["kind"], p["b_name"], p["b_call"], p["stats"]) for p in there["pairs"]] == \
        [(p["kind"], p["b_name"], p["b_call"], p["stats"])
         for p, k in zip(here.to_dict()["pairs"], key) if k not in missing]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_joins_a_cluster_started_by_dask_s_own_commands(traces, tmp_path, capsys):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "dask"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen(dask + ["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-dashboard"], **quiet)]
    try:
        procs.append(subprocess.Popen(dask + ["worker", address, "--nthreads", "1", "--nworkers", "1",
                                              "--no-dashboard", "--memory-limit", "1GiB"], **quiet))
        out = tmp_path / "r.json"
        status = main(["diff", traces["bug"], traces["ref"], "--dask", address, "--json", str(out),
                       "--quiet"])
        assert status == 1
        got = json.loads(out.read_text())
        assert got == json.loads(td.diff(traces["bug"], traces["ref"]).to_json())
        assert got["first_divergence"]["forward"]["b_name"] == PLANTED
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_cli_local_workers(traces, tmp_path, capsys):
    out = tmp_path / "r.json"
    status = main(["diff", traces["ref"], traces["ref"], "--dask", "local:1", "--json", str(out), "--quiet"])
    assert status == 0
    assert json.loads(out.read_text())["ok"] is True
    assert capsys.readouterr().out.startswith("OK:")


@pytest.mark.parametrize("spec, says", [
    ("local:0", "--dask local:0: give the number of local workers, e.g. local:4"),
    ("local:two", "--dask local:two: give the number of local workers, e.g. local:4"),
])
def test_bad_dask_spec_is_one_line(traces, capsys, spec, says):
    assert main(["diff", traces["bug"], traces["ref"], "--dask", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tracediff diff: error: {says}"


def test_without_the_extra_the_flag_says_what_to_install(traces, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)   # import distributed -> ImportError
    assert main(["diff", traces["bug"], traces["ref"], "--dask", "local:2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tracediff diff: error: --dask needs Dask's distributed scheduler, which is not "
                   "installed: pip install 'tracediff[dask]'"]
    with pytest.raises(td.TraceDiffError, match=r"pip install 'tracediff\[dask\]'"):
        td.diff(traces["bug"], traces["ref"], dask="local:2")


def test_an_unreachable_scheduler_is_one_line(traces, capsys, monkeypatch):
    monkeypatch.setattr(dask_cluster, "CONNECT_TIMEOUT_S", 1)
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    assert main(["diff", traces["bug"], traces["ref"], "--dask", address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tracediff diff: error: cannot reach the Dask scheduler at {address}")
    assert time.perf_counter() - started < 15


def test_a_multi_rank_folder_diffs_as_in_process(client, tmp_path):
    """A rank folder's records are reassembled by the caller (a worker opens one file a side):
    the report is still the in-process one, and a wrong shard is still named."""
    from test_ranks_format import write_ranks

    full = np.arange(42, dtype=np.float32).reshape(6, 7)
    with td.Recorder(tmp_path / "ref.h5") as rec:
        rec.record("forward", "rows", full)
        rec.record("forward", "same", full * 2)

    def records(rank):
        part = np.array_split(full, 2, axis=0)[rank].copy()
        if rank == 1:
            part[0, 3] += 1.0          # one element of rank 1's shard
        return [("forward", "rows", part, {"placement": "Shard(0)"}),
                ("forward", "same", full * 2, {})]
    folder = str(write_ranks(tmp_path / "run.trace", 2, records))
    ref = str(tmp_path / "ref.h5")
    here = td.diff(folder, ref)
    there = td.diff(folder, ref, dask=client)
    assert there.to_dict() == here.to_dict()
    assert there.first_divergence.forward.b_name == "rows" and not there.missing
