"""values=False keeps statistics, a seeded sample and a hash; the file stays small."""
import os

import numpy as np

import tracediff as td
from tracediff import format as fmt


def test_stats_only_keeps_stats_sample_and_hash(tmp_path):
    big = np.random.default_rng(0).standard_normal((1021, 1031)).astype(np.float32)
    with td.Recorder(tmp_path / "full.h5") as rec:
        rec.forward("x", big)
    with td.Recorder(tmp_path / "stats.h5", values=False) as rec:
        rec.forward("x", big)
        rec.forward("x", big + 1)
    full = td.open(tmp_path / "full.h5").get("x")
    first, second = td.open(tmp_path / "stats.h5").records()
    assert not first.stored and full.stored
    assert first.stats == full.stats
    indices, values = first.sample()
    full_indices, full_values = full.sample()
    assert indices.tolist() == full_indices.tolist() and len(indices) == 64
    assert values.tobytes() == big.reshape(-1)[indices].tobytes() == full_values.tobytes()
    assert first.hash == fmt.tensor_hash(big) != second.hash and first.hash.startswith("xxh3:")
    assert os.path.getsize(tmp_path / "stats.h5") < os.path.getsize(tmp_path / "full.h5") / 5


def test_per_record_override_of_values(tmp_path):
    with td.Recorder(tmp_path / "t.h5", values=False) as rec:
        rec.record("forward", "keep", np.arange(3.0), values=True)
        rec.forward("drop", np.arange(3.0))
    trace = td.open(tmp_path / "t.h5")
    assert trace.get("keep").read().tolist() == [0.0, 1.0, 2.0]
    assert not trace.get("drop").stored
