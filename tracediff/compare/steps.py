"""Steps, decode steps and batches: which group of records of a is aligned with which of b, and
the slice of a whole-sequence run that one decode step of a generation is compared with.

A record's group is its ``position``, ``(step, decode_step, batch_index)``. Two traces with the
same groups are aligned group by group; otherwise their groups are paired in sorted order. A
generation recorded per decode step against a run on the whole sequence (no decode steps) is the
exception: each decode step is aligned with that one run, and compared with the positions it
computed (its records' meta ``positions``, ``[start, stop)``).
"""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import numpy_dtype
from ..format import sample_indices
from ..stats import summarize


def group_pairs(groups_a, groups_b) -> list:
    """``(group of a, group of b, windowed)`` in the order the report walks them; ``windowed``:
    the decode step of one side is compared with a slice of the other's whole run."""
    keys_a, keys_b = sorted(groups_a), sorted(groups_b)
    decoded_a = any(k[1] >= 0 for k in keys_a)
    decoded_b = any(k[1] >= 0 for k in keys_b)
    if decoded_a != decoded_b:
        decoded, whole = (keys_a, keys_b) if decoded_a else (keys_b, keys_a)
        out = []
        for key in decoded:
            match = (key[0], -1, key[2])
            if match not in whole:
                if len(whole) != 1:
                    continue
                match = whole[0]
            pair = (key, match) if decoded_a else (match, key)
            out.append((*pair, key[1] >= 0))
        return out
    if set(keys_a) == set(keys_b):
        return [(k, k, False) for k in keys_b]
    return [(ka, kb, False) for ka, kb in zip(keys_a, keys_b)]


def window(ra, rb) -> tuple | None:
    """``(side, axis, start, stop)``: the slice of the whole-run record (side ``"a"`` or ``"b"``)
    that the decode-step record computed; None where the shapes agree or cannot be reconciled
    along one sequence axis. A record as long as the step's new positions (hidden states,
    logits) takes them; one as long as everything so far (a KV cache) takes the prefix; a
    shorter one the step's last positions (Hugging Face's ``generate`` computes the prompt's
    logits at its last position only)."""
    decoded, whole, side = (ra, rb, "b") if ra.decode_step >= 0 else (rb, ra, "a")
    positions = decoded.meta.get("positions")
    if not (isinstance(positions, list) and len(positions) == 2 and whole.stored) \
            or len(decoded.shape) != len(whole.shape) or decoded.shape == whole.shape:
        return None
    start, stop = (int(v) for v in positions)
    differ = [k for k, (x, y) in enumerate(zip(decoded.shape, whole.shape)) if x != y]
    if len(differ) != 1:
        return None
    axis = differ[0]
    n, m = decoded.shape[axis], whole.shape[axis]
    if n == stop - start and m >= stop:
        return side, axis, start, stop
    if n == stop and m >= stop:
        return side, axis, 0, stop
    if n < stop - start and m >= stop:
        return side, axis, stop - n, stop
    return None


def windowed(ra, rb, where):
    """``(ra, rb)`` with the side ``where`` names replaced by its slice."""
    if where is None:
        return ra, rb
    side, axis, start, stop = where
    if side == "a":
        return Window(ra, axis, start, stop), rb
    return ra, Window(rb, axis, start, stop)


def records(pair, ta, tb):
    """The two records ``pair`` compared: its records of a and b, the whole-run side cut to the
    decode step's slice where it was."""
    return windowed(ta[pair.a_index], tb[pair.b_index], pair.window)


class Window:
    """Positions ``start:stop`` along ``axis`` of a stored record, standing in for the record
    (as the diff reads records) as if it held only those positions."""

    def __init__(self, record, axis, start, stop):
        self.source = record
        self.axis, self.start, self.stop = axis, start, stop
        for name in ("index", "name", "kind", "call", "step", "decode_step", "batch_index",
                     "dtype", "stored", "meta", "_meta_text", "key", "position"):
            setattr(self, name, getattr(record, name))
        shape = list(record.shape)
        shape[axis] = stop - start
        self.shape = tuple(shape)
        self.hash = ""   # the slice's bytes were never hashed
        self.nbytes = math.prod(self.shape) * numpy_dtype(record.dtype).itemsize
        self._stats = None

    def _cut(self, array) -> np.ndarray:
        index = [slice(None)] * array.ndim
        index[self.axis] = slice(self.start, self.stop)
        return np.ascontiguousarray(array[tuple(index)])

    def read(self) -> np.ndarray:
        return self._cut(self.source.read())

    def view(self) -> np.ndarray:
        out = self._cut(self.source.view())
        out.flags.writeable = False
        return out

    def check_span(self):
        self.source.check_span()

    @property
    def stats(self) -> dict:
        if self._stats is None:
            self._stats = summarize(self.view().reshape(-1))
        return self._stats

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def sample(self):
        indices = sample_indices(self.numel)
        return indices, self.view().reshape(-1)[indices]

    def __str__(self):
        return f"{self.source}[{self.start}:{self.stop} of axis {self.axis}]"
