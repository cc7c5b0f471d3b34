"""A trace kept in memory (tracediff.memory.InMemory): what replay records its candidate into.
It holds exactly what the file would, reads like one, and a replay that falls back to a
temporary file (a reference too large to hold twice) reports the same."""
import os

import numpy as np
import pytest

import tracediff as td
from tracediff import TraceDiffError
from tracediff.memory import InMemory
from tracediff.replays import run as replay_run
from tracediff.trace import open_trace

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from tracediff.adapters import torch as tdt  # noqa: E402


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.ReLU(), torch.nn.Linear(11, 5))


def _loss(out):
    return F.cross_entropy(out, torch.arange(3) % 5)


def test_a_torch_recording_in_memory_holds_what_the_file_holds(tmp_path):
    model, x = _model(), torch.randn(3, 7)
    tdt.record(model, x, tmp_path / "run.h5", loss_fn=_loss)
    memory = InMemory()
    tdt.record(model, x, memory, loss_fn=_loss)
    with open_trace(tmp_path / "run.h5") as on_disk, memory.open() as kept:
        assert len(kept) == len(on_disk) == 18 and kept.complete
        assert kept.framework == "torch" and kept.path == "<in memory>"
        for a, b in zip(on_disk, kept):
            assert (a.kind, a.name, a.call, a.dtype, a.shape, a.hash, a.stats, a.meta) == \
                   (b.kind, b.name, b.call, b.dtype, b.shape, b.hash, b.stats, b.meta)
            np.testing.assert_array_equal(a.read(), b.read())
        report = td.diff(kept, on_disk)
    assert report.ok and {p.status for p in report.pairs} == {"ok"}


def test_its_views_are_read_only_and_its_values_copies_of_the_tensors():
    memory = InMemory()
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    with td.Recorder(memory) as rec:
        rec.forward("fc", value)
        value += 100           # the model goes on changing its tensor
    record = memory.open()[0]
    view, copied = record.view(), record.read()
    np.testing.assert_array_equal(view, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert not view.flags.writeable and copied.flags.writeable
    copied[...] = 0
    np.testing.assert_array_equal(record.view(), np.arange(12, dtype=np.float32).reshape(3, 4))


def test_reading_before_recording_and_recording_twice_are_refused_with_one_line():
    memory = InMemory()
    with pytest.raises(TraceDiffError, match=r"^<in memory>: nothing was recorded into it$"):
        memory.open()
    with td.Recorder(memory) as rec:
        rec.forward("fc", np.ones(3, np.float32))
    with pytest.raises(TraceDiffError, match=r"^<in memory> already holds a trace: pass "
                                             r"overwrite=True or a new InMemory$"):
        td.Recorder(memory)
    with td.Recorder(memory, overwrite=True) as rec:
        rec.forward("other", np.zeros(2, np.float32))
    assert [r.name for r in memory.open()] == ["other"]


def _bugged(model):
    bad = _model()
    bad.load_state_dict(model.state_dict())
    with torch.no_grad():
        bad[2].weight.mul_(1.05)
    return bad


def test_a_replay_through_a_temporary_file_reports_what_one_in_memory_does(tmp_path,
                                                                         monkeypatch):
    model, x = _model(), torch.randn(3, 7)
    tdt.record(model, x, tmp_path / "ref.h5", loss_fn=_loss)
    bad = _bugged(model)
    in_memory = td.replay(bad, tmp_path / "ref.h5", loss_fn=_loss).to_dict()
    monkeypatch.setattr(replay_run, "IN_MEMORY_MAX", 0)    # a reference "too large" to hold twice
    on_disk = td.replay(bad, tmp_path / "ref.h5", loss_fn=_loss).to_dict()
    for report in (in_memory, on_disk):
        report.pop("elapsed_s", None)
    assert in_memory == on_disk
    assert [c["a_name"] for c in in_memory["root_causes"]] == ["2"]


def test_keep_writes_the_candidates_trace_to_a_file(tmp_path):
    model, x = _model(), torch.randn(3, 7)
    tdt.record(model, x, tmp_path / "ref.h5", loss_fn=_loss)
    td.replay(_bugged(model), tmp_path / "ref.h5", loss_fn=_loss, keep=tmp_path / "cand.h5")
    assert os.path.exists(tmp_path / "cand.h5")
    with open_trace(tmp_path / "cand.h5") as kept:
        assert len(kept) == 18 and kept.complete
