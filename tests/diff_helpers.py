"""Small trace builders for the diff engine tests: prime-sized synthetic tensors."""
from __future__ import annotations

import numpy as np

import tracediff as td

DIMS = {"batch": 3, "features": 7, "hidden": 11, "classes": 5, "seq": 13}


def rng(seed=0):
    return np.random.default_rng(seed)


def write(path, records, *, dims=DIMS, framework="numpy", values=True):
    """``records``: (kind, name, array[, meta dict]) in execution order. Returns the path."""
    with td.Recorder(path, framework=framework, dims=dims, values=values) as rec:
        for item in records:
            kind, name, value = item[:3]
            meta = item[3] if len(item) > 3 else {}
            rec.record(kind, name, value, **meta)
    return str(path)


def chain(tmp_path, reference: dict, candidate: dict, *, dims=DIMS, meta=None):
    """Two traces of forward records with the same names, in the given order; returns
    (a_path, b_path). ``candidate`` overrides some of the reference's tensors."""
    meta = meta or {}
    ref = [("forward", name, value, meta.get(name, {})) for name, value in reference.items()]
    cand = [("forward", name, candidate.get(name, value), meta.get(name, {}))
            for name, value in reference.items()]
    return (write(tmp_path / "a.h5", cand, dims=dims), write(tmp_path / "b.h5", ref, dims=dims))
