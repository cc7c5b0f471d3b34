"""A trace kept in memory instead of a file: what ``td.replay`` records its candidate into.

Every adapter's ``record`` takes an ``InMemory`` where it takes a path (``Recorder`` writes it);
``InMemory.open()`` then reads it as a ``Trace``. The records are the ones a file would hold,
byte for byte: the same index rows, text fields and data blob. Only the HDF5 layer is left out:
for a trace that is read once by the process that wrote it, the chunked writes, the flushes that
make each record durable and the reads back cost about a third of a recording. The tensors'
bytes are copied into buffers that come back when the trace is released and serve the next
recording (at most ``KEPT`` bytes are kept).
"""
from __future__ import annotations

import bisect
import sys
import threading

import numpy as np

from . import format as fmt
from .errors import TraceDiffError
from .recorder import Recorder
from .trace import Trace


KEPT = 256 << 20   # bytes of released trace memory kept for the next in-memory recording


class _BufferPool:
    """The buffers tensors' bytes are copied into. A released trace's come back and are handed
    out again to the next recording of the same model (the same sizes), which then page-faults
    nothing in: a fault costs microseconds on a VM, ~20 ms of a replay of a 33 MB trace. At
    most ``KEPT`` bytes are kept free."""

    def __init__(self):
        self._free = {}      # nbytes -> buffers
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                self._bytes -= nbytes
                return free.pop()
        return np.empty(nbytes, np.uint8)

    def give(self, buffer: np.ndarray):
        with self._lock:
            if self._bytes + buffer.size <= KEPT:
                self._free.setdefault(buffer.size, []).append(buffer)
                self._bytes += buffer.size

    def clear(self):
        with self._lock:
            self._free.clear()
            self._bytes = 0


_POOL = _BufferPool()


def release_kept():
    """Free the buffers kept for later in-memory recordings (at most ``KEPT`` bytes)."""
    _POOL.clear()


class MemoryRecorder(Recorder):
    """A ``Recorder`` writing into an ``InMemory``; ``Recorder(InMemory(), ...)`` makes one."""

    def __init__(self, destination: "InMemory", *args, **kwargs):
        self._destination = destination
        super().__init__(destination.name, *args, **kwargs)

    def _create(self, attrs, overwrite):
        if self._destination.attrs is not None and not overwrite:
            raise TraceDiffError(
                f"{self.path} already holds a trace: pass overwrite=True or a new InMemory")
        self._destination.release()
        self._destination.attrs = attrs
        self._file = self._destination      # what marks the recorder open

    def _write_data(self, block):
        self._destination.write(block)
        self._data_written += block.size

    def _write_pending_data(self):
        if self._pending_data:
            self._data_written += self._destination.gather(self._pending_data)
            self._pending_data.clear()

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
        self.attrs = None        # the root attributes, once a recorder has begun
        self.rows = []           # arrays of index rows, in the order they were committed
        self.strings = []        # the index's text fields, one bytes block a commit
        self.blocks = []         # the data blob, one array a write
        self.complete = False
        self._pooled = []        # the blocks taken from the pool

    def write(self, block: np.ndarray):
        """Append ``block`` to the data blob: as it is where it is this trace's own array,
        copied into a buffer of the pool where it is a view of memory the model goes on using."""
        if not block.flags.owndata:
            buffer = _POOL.take(block.size)
            buffer[...] = block
            self._pooled.append(buffer)
            block = buffer
        self.blocks.append(block)

    def gather(self, blocks) -> int:
        """Append ``blocks`` to the data blob side by side, in one buffer of the pool; returns
        how many bytes that is."""
        buffer = _POOL.take(sum(block.size for block in blocks))
        np.concatenate(blocks, out=buffer)
        self._pooled.append(buffer)
        self.blocks.append(buffer)
        return buffer.size

    def release(self):
        """Let the trace go: its buffers go back to the pool, except any an array still uses
        (a view of a record read from it)."""
        self.attrs, self.rows, self.strings, self.blocks = None, [], [], []
        pooled, self._pooled = self._pooled, []
        for buffer in pooled:
            # its references: ``pooled``, ``buffer`` and getrefcount's argument; a view adds one
            if sys.getrefcount(buffer) <= 3:
                _POOL.give(buffer)

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
        self._map_views = True
        self._mapping_lock = threading.Lock()
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
        self._mapped = False    # the trace's arrays: InMemory.release may hand them out again

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
        if nbytes == 0 or start + nbytes <= self._blocks[i].size:
            out = self._blocks[i][start:start + nbytes]
        else:   # not written by Recorder, which writes each tensor whole: gathered
            parts, left = [], nbytes
            while left:
                part = self._blocks[i][start:start + left]
                parts.append(part)
                left -= part.size
                i, start = i + 1, 0
            out = np.concatenate(parts)
        out.flags.writeable = False
        return out

    def copy(self, offset: int, nbytes: int) -> np.ndarray:
        return self.view(offset, nbytes).copy()

    def close(self):
        pass
