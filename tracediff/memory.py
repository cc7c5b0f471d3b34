"""A trace kept in memory instead of a file: what ``td.replay`` records its candidate into.

Every adapter's ``record`` takes an ``InMemory`` where it takes a path (``Recorder`` writes it);
``InMemory.open()`` then reads it as a ``Trace``. The records are the ones a file would hold,
byte for byte: the same index rows, text fields and data blob. Only the HDF5 layer is left out:
for a trace that is read once by the process that wrote it, the chunked writes, the flushes that
make each record durable and the reads back cost about a third of a recording.
"""
from __future__ import annotations

import bisect

import numpy as np

from . import format as fmt
from .errors import TraceDiffError
from .recorder import Recorder
from .trace import Trace


class MemoryRecorder(Recorder):
    """A ``Recorder`` writing into an ``InMemory``; ``Recorder(InMemory(), ...)`` makes one."""

    def __init__(self, destination: "InMemory", *args, **kwargs):
        self._destination = destination
        super().__init__(destination.name, *args, **kwargs)

    def _create(self, attrs, overwrite):
        if self._destination.attrs is not None and not overwrite:
            raise TraceDiffError(
                f"{self.path} already holds a trace: pass overwrite=True or a new InMemory")
        self._destination.clear()
        self._destination.attrs = attrs
        self._file = self._destination      # what marks the recorder open

    def _write_data(self, block):
        # a tensor's bytes may be a view of its framework's memory, which the model goes on using
        self._destination.blocks.append(block if block.flags.owndata else block.copy())
        self._data_written += block.size

    def _commit(self, start, rows, strings):
        self._destination.rows.append(rows)
        if strings.size:
            self._destination.strings.append(strings.tobytes())

    def _close(self, f, complete):
        f.complete = complete


class InMemory:
    """Where a ``Recorder`` writes a trace that stays in this process; ``name`` stands in for
    the path in the trace's ``path`` and in messages."""

    writer = MemoryRecorder     # what ``Recorder(InMemory())`` makes

    def __init__(self, name: str = "<in memory>"):
        self.name = name
        self.clear()

    def clear(self):
        """Let go of the trace it holds."""
        self.attrs = None        # the root attributes, once a recorder has begun
        self.rows = []           # arrays of index rows, in the order they were committed
        self.strings = []        # the index's text fields, one bytes block a commit
        self.blocks = []         # the data blob, one array a write
        self.complete = False

    def open(self) -> "MemoryTrace":
        if self.attrs is None:
            raise TraceDiffError(f"{self.name}: nothing was recorded into it")
        return MemoryTrace(self)

    def __repr__(self):
        return f"InMemory({self.name!r})"


class MemoryTrace(Trace):
    """An ``InMemory`` trace opened for reading: a ``Trace`` whose views are the recorded arrays."""

    def __init__(self, store: InMemory):
        self.path = store.name
        self._file = None
        self.attrs = {**store.attrs, "complete": store.complete}
        self.version = self.attrs["format_version"]
        self.complete = store.complete
        self._mapped = _MemoryBlob(store.blocks)
        self._data_size = self._mapped.size
        layout = fmt.record_dtype()
        rows = np.concatenate(store.rows) if store.rows else np.zeros(0, layout)
        strings = b"".join(store.strings)
        columns = self._columns(rows, layout)
        texts = self._texts(columns, len(strings), lambda nbytes: strings[:nbytes])
        self._records = self._build_records(len(rows), columns, texts)

    def close(self):
        self._mapped = False

    def _read_bytes(self, offset, nbytes, record):
        raise TraceDiffError(f"{self.path} is closed: its tensors cannot be read any more")


class _MemoryBlob:
    """The data blob as the recorder's arrays: what ``MappedBlob`` is to a file. Each record's
    bytes lie in one array (the recorder writes a tensor whole)."""

    def __init__(self, blocks):
        self._starts, self._blocks = [0], [np.zeros(0, np.uint8)]
        self.size = 0
        for block in blocks:
            self._starts.append(self.size)
            self._blocks.append(block)
            self.size += block.size

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        i = bisect.bisect_right(self._starts, offset) - 1
        start = offset - self._starts[i]
        out = self._blocks[i][start:start + nbytes]
        out.flags.writeable = False
        return out

    def copy(self, offset: int, nbytes: int) -> np.ndarray:
        return self.view(offset, nbytes).copy()
