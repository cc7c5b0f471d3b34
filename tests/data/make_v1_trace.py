"""Write tests/data/v1_trace.h5, the format-v1 trace tests/test_trace_v1.py reads.

It must be written by a tracediff that writes format v1 (up to commit 8088723):

    git archive 8088723 tracediff | tar -x -C /tmp/v1 && \
        PYTHONPATH=/tmp/v1 .venv/bin/python tests/data/make_v1_trace.py
"""
import pathlib

import ml_dtypes
import numpy as np

import tracediff as td
from tracediff import format as fmt

PATH = pathlib.Path(__file__).with_name("v1_trace.h5")


def record(path):
    """The fixture's records, written in the format of the tracediff that runs this."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    w = np.arange(12, dtype=np.float64).reshape(3, 4) / 8
    with td.Recorder(path, framework="numpy", dims={"batch": 2, "features": 3}, model="tiny v1",
                     seed=5, overwrite=True, meta={"note": "größe"}) as rec:
        rec.input("x", x)
        rec.param("fc1.weight", w, grad=np.ones_like(w), role="weight")
        rec.forward("größe/σ", x @ w, op_type="Linear")
        rec.forward("half", (x / 3).astype(ml_dtypes.bfloat16))
        rec.forward("stats only", np.tanh(x @ w), values=False)
        rec.loss(np.float32(0.5))
        rec.backward("größe/σ", np.full((2, 4), 0.125))


def main():
    if fmt.FORMAT_VERSION != 1:
        raise SystemExit(f"this tracediff writes format v{fmt.FORMAT_VERSION}, not v1: see above")
    record(PATH)


if __name__ == "__main__":
    main()
