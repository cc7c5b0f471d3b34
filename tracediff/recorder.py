"""The trace writer every adapter uses: ``td.Recorder``."""
from __future__ import annotations

import datetime
import json
import operator
import os
import platform
import socket
import sys
from collections import defaultdict
from typing import NamedTuple

import h5py
import numpy as np

from . import format as fmt
from ._version import __version__
from .dtypes import to_array
from .errors import TraceDiffError, first_line
from .stats import STAT_FIELDS, summarize


SMALL_BLOCK = 1 << 16  # tensors below this many bytes are batched with their index rows


class Summary(NamedTuple):
    """What a record keeps of its tensor (``Recorder.describe``)."""
    dtype: str                # logical dtype name
    shape: tuple
    stats: dict               # summarize()
    digest: str               # format.tensor_hash()
    stored: np.ndarray        # uint8: the tensor's bytes, or its sample's
    nbytes: int               # the whole tensor's
    stored_values: bool
    sample_count: int         # elements in the sample (0 when the values are stored)


class Recorder:
    """Write one trace: records are appended in execution order and flushed as they arrive.

    ``path``: the trace file, or a ``tracediff.memory.InMemory`` to keep the trace in this
    process. ``values=False`` keeps statistics, a seeded sample of elements and a hash instead
    of the whole tensor. A writer that is killed leaves a file readable up to its last complete
    record.
    ``expected_bytes``: an estimate of the bytes the records will hold, if known (a large trace
    is then written in larger chunks).
    """

    def __new__(cls, path=None, *args, **kwargs):
        # a destination other than a file (tracediff.memory.InMemory) names its own writer
        writer = getattr(path, "writer", None)
        if cls is Recorder and writer is not None:
            cls = writer
        return super().__new__(cls)

    def __init__(self, path, framework="numpy", dims=None, *, model="", seed=None,
                 framework_version="", overwrite=False, values=True, meta=None,
                 flush_every=1, expected_bytes=0, rank=None, world_size=None):
        self.path = os.fspath(path)
        self.values = values
        self._calls = defaultdict(int)
        self._last_flow = None      # (kind, name) of the latest input or forward record
        self._step = -1
        self._decode_step = -1
        self._batch_index = -1
        self._positions = None      # [start, stop) of the sequence a decode step computes
        self._count = 0
        self._data_end = 0
        self._file = None
        self._lock = None
        self._pending = []
        self._pending_data = []
        self._data_written = 0
        self._flush_every = max(1, int(flush_every))
        self._expected_bytes = int(expected_bytes)
        self._row_dtype = fmt.record_dtype()
        self._strings_end = 0        # where the next record's text fields go
        self._pending_strings = []   # their bytes, written by flush() with the rows
        ranks = {} if rank is None else {"rank": int(rank), "world_size": int(world_size or 1)}
        self._create(_attributes(framework, framework_version, dims, model, seed, values, meta,
                                 ranks), overwrite)

    def _create(self, attrs: dict, overwrite: bool):
        """Create the file with its root attributes ``attrs`` and its empty datasets."""
        if os.path.exists(self.path) and not overwrite:
            raise TraceDiffError(
                f"{self.path} already exists: choose another path or pass overwrite=True")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise TraceDiffError(f"cannot write trace {self.path}: folder {folder} does not exist")
        self._lock = _replace_and_lock(self.path)
        try:
            # HDF5's own lock is dropped by SWMR writers; ours (held on a separate descriptor
            # until close) is what keeps a second writer from truncating a live trace.
            self._file = h5py.File(self.path, "w", libver="latest", locking=False)
            _forget_truncation(self.path)
            self._init_file(attrs)
        except BaseException as exc:
            if self._file is not None:
                self._file.close()
                self._file = None
            _unlock(self._lock)
            if isinstance(exc, OSError):
                raise TraceDiffError(_write_error(self.path, exc)) from None
            raise

    def _init_file(self, attrs: dict):
        f = self._file
        _write_attributes(f, attrs)
        self._records = f.create_dataset(fmt.RECORDS, shape=(0,), maxshape=(None,),
                                         dtype=fmt.record_dtype(), chunks=(fmt.RECORDS_CHUNK,))
        chunk = fmt.LARGE_DATA_CHUNK if self._expected_bytes >= fmt.LARGE_TRACE else fmt.DATA_CHUNK
        self._data = f.create_dataset(fmt.DATA, shape=(0,), maxshape=(None,), dtype="u1",
                                      chunks=(chunk,))
        self._strings = f.create_dataset(fmt.STRINGS, shape=(0,), maxshape=(None,), dtype="u1",
                                         chunks=(fmt.STRINGS_CHUNK,))
        self._state = f.create_dataset(fmt.STATE, data=np.zeros(2, dtype="<i8"))
        f.swmr_mode = True
        f.flush()
        # Rows are built with the file's own compound layout: saying so spares HDF5 a
        # field-by-field conversion (~4 us a row).
        self._row_type = self._records.id.get_type()

    # -- the contract's verbs -------------------------------------------------------------
    def input(self, name, value, **meta):
        index = self.record("input", name, value, **meta)
        self._last_flow = ("input", name)
        return index

    def forward(self, name, value, *, call=None, inputs=None, **meta):
        """``inputs``: the records this output consumed (meta ``inputs``, the dataflow), each a
        record name (its latest ``forward`` call, else the ``input`` of that name) or a dict
        ``{"kind", "name", "call"}``; default: the previous ``input`` or ``forward`` record.
        ``inputs=[]`` says it consumed no record."""
        edges = self._edges(name, inputs)
        index = self.record("forward", name, value, call=call, inputs=edges, **meta)
        self._last_flow = ("forward", name)
        return index

    def _edges(self, name, inputs) -> list | None:
        if inputs is None:
            if self._last_flow is None:
                return None
            inputs = [{"kind": self._last_flow[0], "name": self._last_flow[1]}]
        edges = []
        for item in inputs:
            if isinstance(item, str):
                kind = "forward" if self._calls.get(("forward", item)) else "input"
                item = {"kind": kind, "name": item}
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                    or item.get("kind", "forward") not in _KIND_CODES:
                raise TraceDiffError(
                    f"forward {name!r}: inputs= takes record names or dicts "
                    f"{{'kind', 'name', 'call'}}, got {item!r}")
            kind = item.get("kind", "forward")
            call = item.get("call")
            if call is None:
                call = max(0, self._calls.get((kind, item["name"]), 1) - 1)
            edges.append({"kind": kind, "name": item["name"], "call": int(call)})
        return edges

    def backward(self, name, value, *, call=None, **meta):
        """dL/d(output of ``name``); ``call`` pairs it with that call of the forward record."""
        return self.record("backward", name, value, call=call, **meta)

    def param(self, name, value, grad=None, **meta):
        index = self.record("param", name, value, **meta)
        if grad is not None:
            self.record("param_grad", name, grad, **meta)
        return index

    def param_grad(self, name, value, **meta):
        return self.record("param_grad", name, value, **meta)

    def loss(self, value, name="loss", **meta):
        return self.record("loss", name, value, **meta)

    def step(self, step: int):
        """Records after this call belong to training step ``step``; call indices restart."""
        self._step = int(step)
        self._restart()

    def decode_step(self, decode_step: int, positions=None):
        """Records after this call belong to decode step ``decode_step`` of a generation (the
        prompt's forward is step 0, each new token's one step after); call indices restart.
        ``positions``: ``(start, stop)``, the sequence positions this step computes, kept in
        each record's meta ``positions`` so that the diff can compare the step with those
        positions of a run on the whole sequence."""
        self._decode_step = int(decode_step)
        self._positions = None if positions is None else [int(positions[0]), int(positions[1])]
        self._restart()

    def batch(self, batch_index: int):
        """Records after this call belong to batch ``batch_index`` of an evaluation set; call
        indices restart."""
        self._batch_index = int(batch_index)
        self._restart()

    def _restart(self):
        self._calls.clear()
        self._last_flow = None

    # -- the one writer ---------------------------------------------------------------------
    def record(self, kind, name, value, *, call=None, values=None, **meta) -> int:
        """Append one record and flush it; returns its index in execution order."""
        self._check_record(kind, name)  # before the tensor is read
        return self._append(kind, name, self.describe(value, values=values), call, meta)

    def describe(self, value, *, values=None) -> Summary:
        """The part of a record that reads the tensor: statistics, hash, and the bytes kept
        (all of them, or a copied sample with ``values=False``). ``append`` does the rest,
        which reads nothing of the tensor and may run later, on another thread."""
        array, dtype_name = to_array(value)
        keep_values = self.values if values is None else values
        flat = np.ascontiguousarray(array).reshape(-1)  # one copy at most, shared by all below
        stats = summarize(flat)
        digest = fmt.tensor_hash(flat)
        if keep_values:
            stored, sample_count = (flat.view(np.uint8) if flat.size else np.zeros(0, np.uint8)), 0
        else:
            sample = flat[fmt.sample_indices(flat.size)]
            stored, sample_count = sample.view(np.uint8), sample.size
        return Summary(dtype_name, array.shape, stats, digest, stored, flat.nbytes, keep_values,
                       sample_count)

    def append(self, kind, name, summary: Summary, *, call=None, **meta) -> int:
        """Append a record from ``describe``'s summary; returns its index in execution order."""
        self._check_record(kind, name)
        return self._append(kind, name, summary, call, meta)

    def _append(self, kind, name, summary: Summary, call, meta) -> int:
        key = (kind, name)
        if call is None:
            call = self._calls[key]
        self._calls[key] = max(self._calls[key], call + 1)
        if summary.stored_values:
            place = (1, self._data_end, summary.nbytes, 0, 0)
        else:
            place = (0, -1, summary.nbytes, self._data_end, summary.sample_count)
        self._append_data(summary.stored)
        if self._positions is not None and "positions" not in meta and kind not in ("param", "param_grad"):
            meta["positions"] = self._positions
        texts = (name, summary.dtype, _shape_text(summary.shape), summary.digest,
                 _META_JSON.encode({k: v for k, v in meta.items() if v is not None}))
        encoded = [text.encode("utf-8") for text in texts]
        # the v2 row, field by field (_ROW_FIELDS)
        row = (_KIND_CODES[kind], call, self._step, self._decode_step, self._batch_index, *place, *_STAT_VALUES(summary.stats),
               self._strings_end, *map(len, encoded))
        block = b"".join(encoded)
        self._strings_end += len(block)
        self._pending_strings.append(block)
        index = self._count + len(self._pending)
        self._pending.append(row)
        if len(self._pending) >= self._flush_every:
            self.flush()
        return index

    def _check_record(self, kind, name):
        if self._file is None:
            raise TraceDiffError(f"recorder for {self.path} is closed: records cannot be added")
        if kind not in _KIND_CODES:
            raise TraceDiffError(f"unknown record kind {kind!r}: use one of {', '.join(fmt.KINDS)}")
        if not isinstance(name, str) or not name:
            raise TraceDiffError(f"record name must be a non-empty string, got {name!r}")

    def flush(self):
        """Write the pending index rows (and their text fields) and make every record so far
        durable."""
        if self._file is None:
            return
        self._write_pending_data()
        if not self._pending:
            return
        rows = np.array(self._pending, dtype=self._row_dtype)
        start, end = self._count, self._count + rows.size
        strings = np.frombuffer(b"".join(self._pending_strings), dtype=np.uint8)
        self._commit(start, rows, strings)
        self._pending.clear()
        self._pending_strings.clear()
        self._count = end

    def _commit(self, start: int, rows: np.ndarray, strings: np.ndarray):
        """Write index rows ``start...`` and their text fields, then make them durable."""
        end = start + rows.size
        try:
            if strings.size:
                _write_at(self._strings, self._strings_end - strings.size, strings, grow=True)
            _write_at(self._records, start, rows, grow=True, mtype=self._row_type)
            # Two flushes: one HDF5 flush writes its dirty metadata in no set order across
            # datasets, so a kill inside it could leave the index rows on disk without the data
            # or strings blob's new extent. The count that makes records visible is written
            # only after the data, strings and rows are durable.
            self._file.flush()
            _write_at(self._state, 0, np.array([end], dtype="<i8"))
            self._file.flush()
        except OSError as exc:
            raise TraceDiffError(_write_error(self.path, exc)) from None

    def _append_data(self, raw: np.ndarray):
        """Reserve ``raw``'s place at the end of the data blob; small blocks wait for ``flush``."""
        if raw.size == 0:
            return
        self._data_end += raw.size
        if self._flush_every > 1 and raw.size < SMALL_BLOCK:
            self._pending_data.append(raw.copy())
            return
        self._write_pending_data()
        self._write_data(raw)

    def _write_pending_data(self):
        if not self._pending_data:
            return
        block = np.concatenate(self._pending_data)
        self._pending_data.clear()
        self._write_data(block)

    def _write_data(self, block: np.ndarray):
        """Append ``block`` to the data blob at the end of what is written so far."""
        try:
            _write_at(self._data, self._data_written, block, grow=True)
        except OSError as exc:
            raise TraceDiffError(_write_error(self.path, exc)) from None
        self._data_written += block.size

    # -- closing --------------------------------------------------------------------------
    def close(self, complete: bool = True):
        """Close the file; ``complete`` marks a clean end of the run."""
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            f, self._file = self._file, None
        self._close(f, complete)

    def _close(self, f, complete: bool):
        try:
            try:
                # The end marker is state[1], not an attribute: a process killed while HDF5
                # flushes an attribute change in SWMR mode leaves metadata that SWMR readers
                # retry for minutes, and reopening the file "r+" to write one leaves it
                # unopenable if killed meanwhile.
                f[fmt.STATE][1] = 1 if complete else 0
                f.flush()
            finally:
                f.close()
        except OSError as exc:
            raise TraceDiffError(_write_error(self.path, exc)) from None
        finally:
            _unlock(self._lock)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(complete=exc_type is None)
        return False

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            try:
                self.close(complete=False)
            except Exception:
                pass

    @property
    def count(self) -> int:
        return self._count + len(self._pending)


_KIND_CODES = {kind: code for code, kind in enumerate(fmt.KINDS)}
_ROW_FIELDS = ("kind", "call", *fmt.POSITION_FIELDS, "stored", "offset", "nbytes", "sample_offset", "sample_count",
               *STAT_FIELDS, "strings_offset", *(f"{field}_len" for field in fmt.TEXT_FIELDS))
assert _ROW_FIELDS == fmt.record_dtype().names, "Recorder.record builds rows in this order"
_STAT_VALUES = operator.itemgetter(*STAT_FIELDS)
_META_JSON = json.JSONEncoder(default=str)  # what json.dumps(meta, default=str) writes, built once


def _attributes(framework, framework_version, dims, model, seed, values, meta, ranks) -> dict:
    """A new trace's root attributes (docs/format.md)."""
    dims = {str(k): int(v) for k, v in (dims or {}).items()}
    return {
        "format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION,
        "tracediff_version": __version__, "framework": str(framework),
        "framework_version": str(framework_version), "python": platform.python_version(),
        "host": socket.gethostname(), "platform": sys.platform,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": str(model), "seed": -1 if seed is None else int(seed),
        "dims": json.dumps(dims), "values": bool(values), "complete": False,
        "meta": json.dumps(meta or {}, default=str), **ranks,
    }


def _shape_text(shape) -> str:
    """``json.dumps(list(shape))`` for a tuple of ints, without the encoder."""
    return "[" + ", ".join(map(str, shape)) + "]"


def _replace_and_lock(path):
    """Lock ``path`` for writing. An existing file is unlinked rather than truncated, so that
    readers which still have it open keep reading the old trace."""
    if os.path.exists(path):
        old = _lock_for_writing(path)  # refuses while another writer is live
        try:
            os.unlink(path)
        except OSError as exc:
            raise TraceDiffError(_write_error(path, exc)) from None
        finally:
            _unlock(old)
    return _lock_for_writing(path)


def _forget_truncation(path):
    """HDF5 opens the (new, empty) file with O_TRUNC. ext4 and XFS remember a truncation and
    start writing back every dirty page at the next close of the file: at the end of a trace,
    ~0.1-0.2 s for 150 MB. Closing one descriptor now, while the file is empty, uses up that
    flush on nothing. (Durability against a killed process is unaffected: the page cache
    survives it.)"""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError:
        pass


def _lock_for_writing(path):
    """An exclusive advisory lock on ``path`` (created if missing), or one clear refusal."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise TraceDiffError(_write_error(path, exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise TraceDiffError(
            f"cannot write trace {path}: another recorder is writing it (two writers on one "
            "path); wait for it to finish or write elsewhere") from None
    return fd


def _unlock(fd):
    if fd is None:
        return
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_attributes(f, attrs: dict):
    """New root attributes through h5py's low-level API: what ``f.attrs[key] = value`` writes
    (``str`` as a fixed-length UTF-8 string), at a tenth of its cost (~100 us each)."""
    scalar = h5py.h5s.create(h5py.h5s.SCALAR)
    for key, value in attrs.items():
        data = np.asarray(fmt.text_attribute(value) if isinstance(value, str) else value)
        htype = h5py.h5t.py_create(data.dtype, logical=True)
        h5py.h5a.create(f.id, key.encode("utf-8"), htype, scalar).write(data, mtype=htype)


def _write_at(dataset, start: int, values: np.ndarray, grow: bool = False, mtype=None):
    """Write a 1-D block at ``start`` through h5py's low-level API (the high-level slicing costs
    ~100 us a call, which dominates small records). ``mtype``: the HDF5 type of ``values`` when
    it is exactly the file's."""
    if grow:
        dataset.id.set_extent((start + values.size,))
    file_space = dataset.id.get_space()
    file_space.select_hyperslab((start,), (values.size,))
    dataset.id.write(h5py.h5s.create_simple((values.size,)), file_space, values, mtype=mtype)


def _write_error(path, exc) -> str:
    text = str(exc)
    if "No space" in text or "errno = 28" in text:
        return f"cannot write trace {path}: the disk is full; free space and record again"
    if "Permission denied" in text or "errno = 13" in text or "Read-only" in text:
        return f"cannot write trace {path}: permission denied; choose a writable folder"
    return f"cannot write trace {path}: {first_line(exc)}"


