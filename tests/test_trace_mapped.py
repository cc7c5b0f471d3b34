"""Record.view(): the diff's zero-copy read. Where the file's layout allows, a tensor is the
file's own pages, each run of the blob mapped once; elsewhere it is read through HDF5. Either
way it holds exactly what read() returns, and it is read-only. read() copies from the mapping
where it can too."""
from __future__ import annotations

import mmap
import os

import h5py
import numpy as np
import pytest

import tracediff as td
from tracediff import format as fmt
from tracediff import mapped as mapped_module
from tracediff import trace as trace_module
from tracediff.mapped import MappedBlob

from diff_helpers import rng

MIB = 1 << 20


def _mapped(array) -> bool:
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return base is not None


def _large_trace(path, expected_bytes=0):
    """Records from a few bytes to several chunks, at offsets that straddle chunk edges."""
    sizes = [3, 5000, MIB // 4, MIB // 4 + 1, 300_001, 1_048_583, 7, 2_000_003]
    arrays = {f"t{i}": rng(i).standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)}
    with td.Recorder(path, expected_bytes=expected_bytes) as rec:
        for name, value in arrays.items():
            rec.forward(name, value)
    return arrays


@pytest.mark.parametrize("expected_bytes", [0, fmt.LARGE_TRACE], ids=["64KiB-chunks", "1MiB-chunks"])
def test_view_holds_what_read_holds_and_maps_the_file(tmp_path, expected_bytes):
    path = tmp_path / "t.h5"
    arrays = _large_trace(path, expected_bytes)
    with td.open(path) as trace:
        mapped = []
        for record in trace:
            view = record.view()
            assert view.dtype == record.read().dtype and view.shape == record.read().shape
            np.testing.assert_array_equal(view, arrays[record.name])
            assert not view.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                view[...] = 0
            mapped.append(_mapped(view))
        # small and multi-chunk ones alike, each lying in one run of chunks; one that crosses
        # a gap between two runs is copied from both
        in_one_run = [trace._mapped._run(r._offset, r.nbytes) is not None for r in trace]
    assert mapped == in_one_run and sum(mapped) >= 5 and mapped[0]


def test_read_and_small_views_skip_hdf5(tmp_path, monkeypatch):
    """A read through HDF5 costs ~0.1 ms of its own work, most of a small tensor's: where the
    record lies in one run of chunks, a view is a slice of the mapped file and read() its copy,
    a fresh writable array."""
    path = tmp_path / "t.h5"
    value = rng(9).standard_normal(3 * 7 * 11).astype(np.float32).reshape(3, 7, 11)
    with td.Recorder(path) as rec:
        rec.forward("fc", value)
    with td.open(path) as trace:
        monkeypatch.setattr(trace_module, "_read_range", None)   # any read through HDF5 fails
        record = trace[0]
        copied, view = record.read(), record.view()
        np.testing.assert_array_equal(copied, value)
        np.testing.assert_array_equal(view, value)
        assert copied.flags.writeable and not view.flags.writeable
        assert not _mapped(copied) and _mapped(view)
        copied[...] = 0
        np.testing.assert_array_equal(record.read(), value)


def test_view_stays_valid_after_the_trace_is_closed(tmp_path):
    path = tmp_path / "t.h5"
    arrays = _large_trace(path, fmt.LARGE_TRACE)
    with td.open(path) as trace:
        views = {record.name: record.view() for record in trace}
    assert any(_mapped(view) for view in views.values())
    for name, view in views.items():
        np.testing.assert_array_equal(view, arrays[name])


def test_an_incomplete_trace_is_read_not_mapped(tmp_path):
    """A trace whose writer is still at work may grow under a mapping: it is read through
    HDF5 (and the values are the same)."""
    path = tmp_path / "open.h5"
    value = rng(3).standard_normal(400_009).astype(np.float32)
    rec = td.Recorder(path)
    rec.forward("big", value)
    rec.flush()
    try:
        with pytest.warns(td.IncompleteTraceWarning):
            trace = td.open(path)
        with trace:
            view = next(iter(trace)).view()
        assert not _mapped(view) and not view.flags.writeable
        np.testing.assert_array_equal(view, value)
    finally:
        rec.close()


def _blob(path, chunks_in_file_order, chunk=1024, **options):
    """A 1-D uint8 dataset whose chunks are written (and so placed in the file) in the given
    order; chunk k holds the byte value k + 1."""
    with h5py.File(path, "w", libver="latest") as f:
        data = f.create_dataset("data", shape=(chunk * len(chunks_in_file_order),), dtype="u1",
                                chunks=(chunk,), **options)
        for k in chunks_in_file_order:
            data[k * chunk:(k + 1) * chunk] = k + 1
    return h5py.File(path, "r")


def test_a_range_across_a_gap_between_chunks_is_copied_from_both_runs(tmp_path):
    path = str(tmp_path / "blob.h5")
    chunk = MIB
    with _blob(path, [0, 1, 3, 2], chunk=chunk) as f:   # chunks 2 and 3 swapped in the file
        blob = MappedBlob.open(f, f["data"])
        assert blob is not None
        try:
            whole = blob.view(0, 2 * chunk)              # chunks 0-1: back to back
            assert whole is not None and (whole[:chunk] == 1).all() and (whole[chunk:] == 2).all()
            across = blob.view(chunk, 2 * chunk)         # chunks 1-2: not next to each other
            assert (across[:chunk] == 2).all() and (across[chunk:] == 3).all()
            assert not _mapped(across) and not across.flags.writeable
            third = blob.view(3 * chunk, chunk)
            assert third is not None and (third == 4).all()
            small = blob.view(chunk + 5, 3)                # a few bytes: the same mapping
            assert (small == 2).all() and _mapped(small) and not small.flags.writeable
            copied = blob.copy(chunk - 2, 4)               # a copy: writable, its own
            assert copied.tolist() == [1, 1, 2, 2] and copied.flags.writeable
            assert not _mapped(copied)
            copied = blob.copy(chunk, 2 * chunk)           # across the gap: a copy too
            assert (copied[chunk:] == 3).all() and copied.flags.writeable
        finally:
            blob.close()


def test_a_compressed_or_truncated_blob_is_not_mapped(tmp_path):
    path = str(tmp_path / "gz.h5")
    with _blob(path, [0, 1], compression="gzip") as f:
        assert MappedBlob.open(f, f["data"]) is None
    path = str(tmp_path / "cut.h5")
    with _blob(path, [0, 1, 2], chunk=MIB) as f:
        os.truncate(path, os.path.getsize(path) - MIB)   # the last chunk is gone
        assert MappedBlob.open(f, f["data"]) is None


def test_the_diff_of_mapped_traces_matches_the_diff_of_copies(tmp_path, monkeypatch):
    """The engine's verdict and every statistic are the same whether it compares mapped pages
    or arrays read through HDF5."""
    a_path, b_path = tmp_path / "a.h5", tmp_path / "b.h5"
    arrays = _large_trace(b_path, fmt.LARGE_TRACE)
    with td.Recorder(a_path, expected_bytes=fmt.LARGE_TRACE) as rec:
        for name, value in arrays.items():
            nudged = value * np.float32(1 + 2**-20)
            nudged[::9973] += np.float32(1e-3)
            rec.forward(name, nudged)
    mapped = td.diff(a_path, b_path).to_dict()
    monkeypatch.setattr(MappedBlob, "view", lambda self, offset, nbytes: None)
    copied = td.diff(a_path, b_path).to_dict()
    assert mapped["pairs"] == copied["pairs"]
    assert mapped["ok"] is copied["ok"] is False


def test_a_reader_keeps_at_most_its_budget_of_runs_mapped(tmp_path, monkeypatch):
    """Pages a mapping touched count in the reader's resident memory: beyond MAPPED_BUDGET the
    runs used longest ago are let go, and the views over them stay valid."""
    monkeypatch.setattr(mapped_module, "MAPPED_BUDGET", 1)     # one run at a time
    path = tmp_path / "t.h5"
    arrays = _large_trace(path)
    with td.open(path) as trace:
        views = {record.name: record.view() for record in trace}
        runs = len(trace._mapped._starts)
        assert runs > 1 and len(trace._mapped._maps) == 1
    for name, view in views.items():
        np.testing.assert_array_equal(view, arrays[name])
