"""The multi-rank trace format on its own (no torch): rank files written with td.Recorder and a
manifest, reassembled by placement over 1-D and 2-D meshes, as docs/format.md specifies."""
import os

import numpy as np
import pytest

import tracediff as td
from tracediff.errors import TraceDiffError, TraceFormatError
from tracediff.ranks import manifest


def write_ranks(folder, world, records, mesh_shape=None, values=True):
    """``records(rank) -> [(kind, name, array, meta)]`` for each rank's file."""
    folder.mkdir()
    manifest.write(folder, world, [manifest.rank_file(r) for r in range(world)], mesh_shape)
    for rank in range(world):
        with td.Recorder(folder / manifest.rank_file(rank), rank=rank, world_size=world,
                         values=values) as rec:
            for kind, name, array, meta in records(rank):
                rec.record(kind, name, array, **meta)
    return folder


def test_shard_partial_and_replicate_are_reassembled(tmp_path):
    full = np.arange(30, dtype=np.float32).reshape(5, 6)
    shards = np.array_split(full, 3, axis=0)          # unequal: 2, 2, 1 rows
    terms = [full * 0.5, full * 0.25, full * 0.25]

    def records(rank):
        return [("forward", "rows", shards[rank], {"placement": "Shard(0)"}),
                ("forward", "sum", terms[rank], {"placement": "Partial(sum)"}),
                ("forward", "mean", full + (rank - 1), {"placement": "Partial(avg)"}),
                ("forward", "same", full, {})]
    with td.open(write_ranks(tmp_path / "run.trace", 3, records)) as trace:
        assert trace.world_size == 3 and len(trace) == 4
        rows = trace.get("rows")
        assert rows.shape == (5, 6) and rows.ranks == (0, 1, 2) and rows.rank is None
        assert np.array_equal(rows.read(), full)
        assert rows.stats["numel"] == 30 and rows.stats["max"] == 29.0
        assert np.array_equal(trace.get("sum").read(), full)
        assert np.allclose(trace.get("mean").read(), full)
        same = trace.get("same")
        assert np.array_equal(same.read(), full) and same.hash == trace.rank_traces[2].get("same").hash
        assert [r.rank for r in trace.rank_traces[1]] == [1, 1, 1, 1]


def test_two_dimensional_mesh_shards_along_both_dimensions(tmp_path):
    full = np.arange(48, dtype=np.float64).reshape(4, 12)
    mesh = (2, 2)

    def records(rank):
        i, j = divmod(rank, 2)
        block = np.array_split(np.array_split(full, 2, axis=0)[i], 2, axis=1)[j]
        inner = np.array_split(np.array_split(full, 2, axis=1)[i], 2, axis=1)[j]  # both on axis 1
        return [("param", "w", block, {"placement": ["Shard(0)", "Shard(1)"], "mesh": [2, 2],
                                       "mesh_coord": [i, j]}),
                ("param", "v", inner, {"placement": ["Shard(1)", "Shard(1)"]}),
                ("param", "r", full[:, :6], {"placement": ["Shard(1)", "Replicate()"],
                                             "mesh": [2, 2], "mesh_coord": [i, j]})
                if i == 0 else ("param", "r", full[:, 6:], {"placement": ["Shard(1)", "Replicate()"],
                                                           "mesh": [2, 2], "mesh_coord": [i, j]})]
    with td.open(write_ranks(tmp_path / "mesh.trace", 4, records, mesh)) as trace:
        for name in ("w", "v", "r"):
            record = trace.get(name, kind="param")
            assert record.shape == full.shape, name
            assert np.array_equal(record.read(), full), name


def test_stats_only_ranks_reassemble_replicated_and_partial_but_not_shards(tmp_path):
    full = np.linspace(-1, 1, 200, dtype=np.float32).reshape(10, 20)

    def records(rank):
        return [("forward", "sum", full / 2, {"placement": "Partial()"}),
                ("forward", "same", full, {"placement": "Replicate()"}),
                ("forward", "rows", np.array_split(full, 2)[rank], {"placement": "Shard(0)"})]
    folder = write_ranks(tmp_path / "stats.trace", 2, records, values=False)
    ref_path = tmp_path / "ref.h5"
    with td.Recorder(ref_path, values=False) as rec:
        rec.forward("sum", full)
        rec.forward("same", full)
    with td.open(folder) as trace:
        indices, values = trace.get("sum").sample()
        assert np.allclose(values, full.reshape(-1)[indices])
        assert trace.get("same").sample()[1].tolist() == full.reshape(-1)[indices].tolist()
        assert trace.get("rows").stats["numel"] == 200
        assert trace.get("rows").stats["max"] == pytest.approx(1.0)
        with pytest.raises(TraceDiffError, match=r"record 'rows' \(forward\) is sharded across ranks 0, 1 "
                                                 r"and holds statistics only"):
            trace.get("rows").sample()
    report = td.diff(folder, ref_path)
    assert report.ok and [p.a_name for p in report.pairs] == ["sum", "same"]


def test_bad_folders_are_one_line(tmp_path):
    empty = tmp_path / "orphans.trace"
    empty.mkdir()
    (empty / "rank-00000.h5").write_bytes(b"")
    with pytest.raises(TraceFormatError, match=r"orphans.trace is a folder without manifest.json: "
                                               r"not a multi-rank trace"):
        td.open(empty)

    def records(rank):
        return [("forward", "x", np.zeros((2, 3), np.float32), {"placement": "Shard(2)"})]
    folder = write_ranks(tmp_path / "axis.trace", 2, records)
    with pytest.raises(TraceFormatError, match=r"rank 0, forward 'x': placement Shard\(2\) names an axis "
                                               r"a tensor of shape \[2, 3\] does not have"):
        td.open(folder)
    swapped = write_ranks(tmp_path / "swapped.trace", 2, lambda rank: [("forward", "x", np.zeros(2), {})])
    os.replace(swapped / "rank-00000.h5", swapped / "tmp.h5")
    os.replace(swapped / "rank-00001.h5", swapped / "rank-00000.h5")
    os.replace(swapped / "tmp.h5", swapped / "rank-00001.h5")
    with pytest.raises(TraceFormatError, match=r"rank-00000.h5 was written by rank 1, but the manifest "
                                               r"of .*swapped.trace lists it as rank 0"):
        td.open(swapped)
    (folder / "manifest.json").write_text('{"format": "tracediff.ranks", "world_size": 3, "ranks": []}')
    with pytest.raises(TraceFormatError, match=r"manifest.json is damaged: it must list ranks "
                                               r"0..world_size-1"):
        td.open(folder)
