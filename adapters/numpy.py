"""NumPy adapter: hand-written nets record themselves through ``td.Recorder``.

A hand-written net calls ``rec.forward``/``rec.backward``/``rec.param`` where it computes them;
``record`` opens the trace with the NumPy framework attributes, records the inputs, runs the net
and closes the trace (marking it incomplete if the net raised).
"""
from __future__ import annotations

import numpy as np

from ..recorder import Recorder


def record(fn, inputs, path, *, overwrite=False, values=True, dims=None, seed=None,
           model_name=None, **meta):
    """Run ``fn(rec, inputs)`` with a fresh recorder on ``path`` and return what it returns.

    ``inputs`` is an array (recorded as ``input``) or a dict of arrays (``input:<name>``).
    """
    model = model_name or getattr(fn, "__qualname__", type(fn).__name__)
    with Recorder(path, framework="numpy", framework_version=np.__version__, dims=dims,
                  model=model, seed=seed, overwrite=overwrite, values=values, meta=meta) as rec:
        if isinstance(inputs, dict):
            for name, value in inputs.items():
                rec.input(f"input:{name}", value)
        else:
            rec.input("input", inputs)
        return fn(rec, inputs)
