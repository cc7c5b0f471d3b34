"""NumPy adapter: hand-written nets record themselves through ``td.Recorder``.

A hand-written net calls ``rec.forward``/``rec.backward``/``rec.param`` where it computes them;
``record`` opens the trace with the NumPy framework attributes, records the inputs, runs the net
and closes the trace (marking it incomplete if the net raised).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import TraceDiffError
from ..recorder import Recorder


def record(fn, inputs, path, *, overwrite=False, values=True, dims=None, seed=None,
           model_name=None, batches=False, **meta):
    """Run ``fn(rec, inputs)`` with a fresh recorder on ``path`` and return what it returns.

    ``inputs`` is an array (recorded as ``input``) or a dict of arrays (``input:<name>``).
    ``batches=True``: ``inputs`` is an iterable of such inputs; ``fn`` runs on each, its
    records carry the batch's ``batch_index``, and the list of its results is returned.
    """
    model = model_name or getattr(fn, "__qualname__", type(fn).__name__)
    if batches and (isinstance(inputs, (np.ndarray, dict)) or not isinstance(inputs, Iterable)):
        raise TraceDiffError(
            f"record(batches=True) takes an iterable of batches (a list of arrays or dicts), "
            f"got {type(inputs).__name__}: pass a list of them, or batches=False for one input")
    with Recorder(path, framework="numpy", framework_version=np.__version__, dims=dims,
                  model=model, seed=seed, overwrite=overwrite, values=values, meta=meta) as rec:
        if not batches:
            return _run(fn, rec, inputs)
        out = []
        for index, batch in enumerate(inputs):
            rec.batch(index)
            out.append(_run(fn, rec, batch))
        return out


def _run(fn, rec, inputs):
    if isinstance(inputs, dict):
        for name, value in inputs.items():
            rec.input(f"input:{name}", value)
    else:
        rec.input("input", inputs)
    return fn(rec, inputs)
