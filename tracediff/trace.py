"""The lazy trace reader: ``td.open(path)``."""
from __future__ import annotations

import fnmatch
import json
import math
import os
import threading
import warnings
from dataclasses import dataclass, field

import h5py
import numpy as np

from . import format as fmt
from .dtypes import numpy_dtype
from .errors import IncompleteTraceWarning, TraceDiffError, TraceFormatError, first_line
from .mapped import MappedBlob
from .stats import STAT_FIELDS

MAX_NDIM = 64
_TEXT_LABELS = {"name": "a name", "dtype": "a dtype", "shape": "a shape", "hash": "a hash",
                "meta": "metadata"}


@dataclass
class Record:
    """One record's metadata; ``read()`` loads its tensor and nothing else."""

    index: int
    name: str
    kind: str
    call: int
    step: int
    dtype: str
    shape: tuple
    stored: bool
    stats: dict
    hash: str = ""
    nbytes: int = 0
    decode_step: int = -1      # the decode step of a generation, -1 outside one (format v3)
    batch_index: int = -1      # the batch of an evaluation set, -1 outside one (format v3)
    rank: int | None = 0      # the rank that wrote it (None: reassembled from several ranks)
    _meta_text: str = field(default="{}", repr=False)
    _offset: int = field(default=-1, repr=False)
    _sample: tuple = field(default=(0, 0), repr=False)
    _trace: "Trace" = field(default=None, repr=False, compare=False)
    _meta: dict = field(default=None, init=False, repr=False, compare=False)

    @property
    def meta(self) -> dict:
        """What the adapter knew of the record's origin (parsed on first use: listing a
        100,000-record trace should not parse 100,000 JSON objects nobody asked for)."""
        if self._meta is None:
            try:
                meta = json.loads(self._meta_text or "{}")
            except ValueError:
                meta = {}
            self._meta = meta if isinstance(meta, dict) else {}
        return self._meta

    @property
    def key(self) -> tuple:
        """(kind, name, call): unique within a position."""
        return (self.kind, self.name, self.call)

    @property
    def position(self) -> tuple:
        """(step, decode_step, batch_index): the group of records a key is unique in."""
        return (self.step, self.decode_step, self.batch_index)

    @property
    def numel(self) -> int:
        return int(self.stats["numel"])

    def read(self) -> np.ndarray:
        """The tensor, bit-exact, with its logical dtype (bfloat16 via ml_dtypes)."""
        return self._stored(self._trace._copy_bytes)

    def view(self) -> np.ndarray:
        """The tensor as ``read()`` gives it, but read-only and, where the file allows, not
        copied: the file's own pages mapped (see ``tracediff.mapped``). For reading a large
        tensor once, as the diff does; the array stays valid after the trace is closed."""
        return self._stored(self._trace._view_bytes)

    def _stored(self, read_bytes) -> np.ndarray:
        if not self.stored:
            raise TraceDiffError(
                f"record {self.name!r} ({self.kind}) in {self._trace.path} holds statistics only "
                "(recorded with values=False); record again with values=True to read it")
        dtype = numpy_dtype(self.dtype)
        return read_bytes(self._offset, self.nbytes, self).view(dtype).reshape(self.shape)

    def check_span(self):
        """Refuse, as ``read()`` would, a stored record whose bytes the index places outside the
        data; reads nothing."""
        if self.stored:
            self._trace._check_span(self._offset, self.nbytes, self)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat indices, values) of the seeded sample a record keeps; the whole tensor when stored."""
        indices = fmt.sample_indices(self.numel)
        if self.stored:
            return indices, self.read().reshape(-1)[indices]
        offset, count = self._sample
        if count != indices.size:
            raise TraceFormatError(
                f"{self._trace.path} is damaged: record {self.index} ({self.name!r}) keeps a sample "
                f"of {count} element(s) where {indices.size} were drawn; record it again")
        dtype = numpy_dtype(self.dtype)
        raw = self._trace._read_bytes(offset, count * dtype.itemsize, self)
        return indices[:count], raw.view(dtype)

    def __str__(self):
        call = f"#{self.call}" if self.call else ""
        return f"{self.kind} {self.name}{call}"


class Trace:
    """A trace opened for reading. The index is read at open; tensors only when asked for."""

    def __init__(self, path, *, warn_incomplete=True, mapped=True):
        self.path = os.fspath(path)
        self._map_views = mapped   # False: views read through HDF5 (Dask workers, see dask/)
        self._file = _open_h5(self.path)
        try:
            self._load(warn_incomplete)
        except (TraceDiffError, Warning):  # a warning raised under simplefilter("error")
            self._file.close()
            raise
        except Exception as exc:  # damaged metadata: one line, never a traceback
            self._file.close()
            raise TraceFormatError(
                f"{self.path} is a damaged tracediff trace ({type(exc).__name__}: "
                f"{first_line(exc, 'unreadable index')}); record it again") from None

    def _load(self, warn_incomplete):
        f = self._file
        attrs = {}
        for key in f.attrs:
            try:
                attrs[key] = _plain(f.attrs[key])
            except Exception:
                attrs[key] = None
        if attrs.get("format") != fmt.FORMAT_NAME:
            raise TraceFormatError(
                f"{self.path} is an HDF5 file but not a tracediff trace (no format attribute "
                f"{fmt.FORMAT_NAME!r}); record it with tracediff")
        version = attrs.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise TraceFormatError(f"{self.path} has an invalid format_version {version!r}; record it again")
        if version > fmt.FORMAT_VERSION:
            raise TraceFormatError(
                f"{self.path} uses trace format v{version}, newer than this tracediff reads "
                f"(v{fmt.FORMAT_VERSION}); upgrade tracediff")
        self.attrs = attrs
        self.version = version
        layout = (fmt.record_dtype() if version >= 3 else fmt.record_dtype_v2() if version == 2
                  else fmt.record_dtype_v1())
        required = (fmt.RECORDS, fmt.DATA, fmt.STRINGS) if version >= 2 else (fmt.RECORDS, fmt.DATA)
        for name in required:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise TraceFormatError(f"{self.path} is a damaged tracediff trace: dataset {name!r} is missing")
        records = f[fmt.RECORDS]
        data = f[fmt.DATA]
        if records.ndim != 1 or data.ndim != 1 or records.dtype.names is None:
            raise TraceFormatError(f"{self.path} is a damaged tracediff trace: index has the wrong layout")
        missing = [n for n in layout.names if n not in records.dtype.names]
        if missing:
            raise TraceFormatError(
                f"{self.path} is a damaged tracediff trace: index lacks field(s) {', '.join(missing)}")
        self._data = data
        self._data_size = int(data.shape[0])
        # a MappedBlob once a view asked for one, False where none can be or none is wanted
        self._mapped = None if self._map_views else False
        self._mapping_lock = threading.Lock()
        n = int(records.shape[0])
        committed = n
        closed = False
        if fmt.STATE in f:
            try:
                state = np.asarray(f[fmt.STATE][()]).reshape(-1)
                committed = int(state[0])
                closed = state.size > 1 and int(state[1]) == 1
            except Exception:
                committed = n
        # state[1] marks a clean close; the attribute, traces written before it did
        self.complete = closed or attrs.get("complete") is True
        attrs["complete"] = self.complete   # the attribute itself stays false (see format.md)
        if not self.complete:
            n = max(0, min(n, committed))
            if warn_incomplete:
                warnings.warn(
                    f"{self.path} is incomplete (its writer did not close it): "
                    f"{n} record(s) readable up to the last complete one", IncompleteTraceWarning,
                    stacklevel=3)
        rows = records[:n] if n else records[:0]
        columns = self._columns(rows, layout)
        texts = self._texts_v2(columns, f[fmt.STRINGS]) if version >= 2 else _texts_v1(columns)
        self._records = self._build_records(len(rows), columns, texts)

    def _columns(self, rows, layout) -> dict:
        """The index's columns, each checked to have the kind of type its field needs."""
        columns = {name: rows[name] for name in layout.names}
        for name, column in columns.items():
            expected = layout[name]
            if expected.kind == "O":
                fits = column.dtype.kind == "O"
            elif expected.kind in "iu":   # counts, offsets, codes: used as integers
                fits = column.dtype.kind in "iu"
            else:
                fits = column.dtype.kind in "iuf"
            if not fits:
                raise TraceFormatError(
                    f"{self.path} is damaged: index field {name!r} has type {column.dtype}; "
                    "record it again")
        return columns

    def _texts_v2(self, columns, strings) -> dict:
        if strings.ndim != 1 or strings.dtype != np.uint8:
            raise TraceFormatError(
                f"{self.path} is a damaged tracediff trace: dataset {fmt.STRINGS!r} has the wrong layout")
        # a damaged extent may claim more than the file holds: bytes past its end do not exist
        size = min(int(strings.shape[0]), os.path.getsize(self.path))
        return self._texts(columns, size, lambda nbytes: self._read_strings(strings, nbytes))

    def _texts(self, columns, size, read) -> dict:
        """Each record's text fields, cut from one read of the strings blob (``size`` bytes,
        ``read(nbytes)`` its first ``nbytes`` as bytes); spans checked column-wise with NumPy,
        the blob decoded once when it is ASCII (the usual case)."""
        offsets = columns["strings_offset"].astype(np.int64)
        lengths = np.stack([columns[f"{field}_len"].astype(np.int64) for field in fmt.TEXT_FIELDS],
                           axis=-1).reshape(offsets.size, len(fmt.TEXT_FIELDS))
        # each length checked against the size first, so that no sum below can overflow
        bad = (offsets < 0) | ((lengths < 0) | (lengths > size)).any(axis=1)
        bad |= offsets > size - np.where(bad[:, None], 0, lengths).sum(axis=1)
        if bad.any():
            index = int(np.argmax(bad))
            start = int(offsets[index])
            end = start + sum(lengths[index].tolist())
            raise TraceFormatError(
                f"{self.path} is damaged: record {index} points outside the index strings "
                f"(bytes {start}..{end} of {size}); record it again")
        ends = offsets[:, None] + np.cumsum(lengths, axis=1)
        blob = read(int(ends[:, -1].max()) if offsets.size else 0)
        starts = (ends - lengths).T.tolist()
        ends = ends.T.tolist()
        texts = {}
        if blob.isascii():
            whole = blob.decode("ascii")
            for j, field in enumerate(fmt.TEXT_FIELDS):
                texts[field] = [whole[a:b] for a, b in zip(starts[j], ends[j])]
        else:
            for j, field in enumerate(fmt.TEXT_FIELDS):
                column = texts[field] = []
                for index, (a, b) in enumerate(zip(starts[j], ends[j])):
                    try:
                        column.append(blob[a:b].decode("utf-8"))
                    except UnicodeDecodeError:
                        raise TraceFormatError(
                            f"{self.path} is damaged: record {index} has {_TEXT_LABELS[field]} "
                            "that is not valid UTF-8; record it again") from None
        codes = columns["kind"].tolist()
        for index, code in enumerate(codes):
            if not 0 <= code < len(fmt.KINDS):
                raise TraceFormatError(
                    f"{self.path} is damaged: record {index} has unknown kind code {code}; "
                    "record it again")
        texts["kind"] = [fmt.KINDS[code] for code in codes]
        return texts

    def _read_strings(self, strings, nbytes) -> bytes:
        if nbytes == 0:
            return b""
        try:
            return _read_range(strings, 0, nbytes).tobytes()
        except (OSError, ValueError) as exc:  # HDF5 found a bad checksum, chunk or filter
            raise TraceFormatError(
                f"{self.path} is damaged: the index strings cannot be read ({first_line(exc)}); "
                "record it again") from None

    def _build_records(self, count, columns, texts) -> list:
        """Records from the index columns and their text fields (a Python loop over 100,000
        numpy rows is what made listing slow)."""
        numbers = {name: columns[name].tolist() for name in
                   ("call", "step", "stored", "offset", "nbytes", "sample_offset", "sample_count") + STAT_FIELDS}
        for name in ("decode_step", "batch_index"):   # v3; earlier traces have neither
            numbers[name] = columns[name].tolist() if name in columns else [-1] * count
        shapes = {}
        out = []
        rank = self.rank
        stat_rows = zip(*(numbers[key] for key in STAT_FIELDS))
        for index, (kind, name, dtype, shape_text, digest, meta, row, call, step, decode_step,
                    batch_index, stored, nbytes, offset, sample_offset, sample_count) in enumerate(zip(
                        texts["kind"], texts["name"], texts["dtype"], texts["shape"], texts["hash"],
                        texts["meta"], stat_rows, numbers["call"], numbers["step"],
                        numbers["decode_step"], numbers["batch_index"], numbers["stored"],
                        numbers["nbytes"], numbers["offset"], numbers["sample_offset"],
                        numbers["sample_count"])):
            if kind not in fmt.KINDS:
                raise TraceFormatError(f"{self.path} is damaged: record {index} has unknown kind {kind!r}")
            shape = shapes.get(shape_text)
            if shape is None:
                shape = shapes[shape_text] = self._parse_shape(index, shape_text)
            stats = dict(zip(STAT_FIELDS, row))
            # later arithmetic trusts these (sample indices, finite counts): check them once here
            numel = math.prod(shape)
            if stats["numel"] != numel or not (0 <= stats["nan"] <= numel and 0 <= stats["inf"] <= numel):
                raise TraceFormatError(
                    f"{self.path} is damaged: record {index} declares shape {list(shape)} but "
                    f"statistics for {stats['numel']} element(s) ({stats['nan']} NaN, "
                    f"{stats['inf']} Inf); record it again")
            out.append(Record(
                index=index, name=name, kind=kind, call=call, step=step, decode_step=decode_step,
                batch_index=batch_index, dtype=dtype, shape=shape, stored=bool(stored),
                stats=stats, hash=digest, nbytes=nbytes, rank=rank,
                _meta_text=meta, _offset=offset, _sample=(sample_offset, sample_count), _trace=self))
        return out

    def _parse_shape(self, index, text) -> tuple:
        try:
            shape = tuple(int(d) for d in json.loads(text))
        except (ValueError, TypeError):
            raise TraceFormatError(f"{self.path} is damaged: record {index} has an unreadable shape") from None
        if len(shape) > MAX_NDIM or any(d < 0 for d in shape):
            raise TraceFormatError(f"{self.path} is damaged: record {index} declares shape {list(shape)}")
        return shape

    def _check_span(self, offset, nbytes, record):
        dtype = numpy_dtype(record.dtype)
        expected = math.prod(record.shape) * dtype.itemsize if record.stored else None
        if (offset < 0 or nbytes < 0 or offset + nbytes > self._data_size
                or (expected is not None and nbytes != expected)):
            raise TraceFormatError(
                f"{self.path} is damaged: record {record.index} ({record.name!r}) points outside "
                "the stored data; record it again")

    def _view_bytes(self, offset, nbytes, record) -> np.ndarray:
        blob = self._blob(offset, nbytes, record)
        raw = blob.view(offset, nbytes) if blob else None
        if raw is None:
            raw = self._read_bytes(offset, nbytes, record)
            raw.flags.writeable = False
        return raw

    def _blob(self, offset, nbytes, record) -> MappedBlob | None:
        """The direct reader of the data blob, or None where reads go through HDF5."""
        self._check_span(offset, nbytes, record)
        if self._mapped is None:
            with self._mapping_lock:   # the diff compares pairs on several threads
                if self._mapped is None:  # a writer may still be growing an incomplete trace
                    blob = (MappedBlob.open(self._file, self._data) if self.complete
                            else None)
                    self._mapped = blob or False
        return self._mapped or None

    def _copy_bytes(self, offset, nbytes, record) -> np.ndarray:
        """A fresh, writable array: read from the file directly where its layout allows (a read
        through HDF5 costs ~0.1 ms of overhead, most of a small tensor's time), else through
        HDF5."""
        blob = self._blob(offset, nbytes, record)
        raw = blob.copy(offset, nbytes) if blob else None
        return raw if raw is not None else self._read_bytes(offset, nbytes, record)

    def _read_bytes(self, offset, nbytes, record) -> np.ndarray:
        self._check_span(offset, nbytes, record)
        if nbytes == 0:
            return np.zeros(0, np.uint8)
        try:
            return _read_range(self._data, offset, nbytes)
        except (OSError, ValueError) as exc:  # HDF5 found a bad checksum, chunk or filter
            raise TraceFormatError(
                f"{self.path} is damaged: the data of record {record.index} ({record.name!r}) "
                f"cannot be read ({first_line(exc)}); record it again") from None

    # -- metadata -----------------------------------------------------------------------------
    @property
    def framework(self) -> str:
        return str(self.attrs.get("framework", ""))

    @property
    def dims(self) -> dict:
        try:
            dims = json.loads(self.attrs.get("dims") or "{}")
            return {str(k): int(v) for k, v in dims.items()} if isinstance(dims, dict) else {}
        except (ValueError, TypeError, AttributeError):
            return {}

    @property
    def rank(self) -> int:
        """The rank that wrote this file (root attribute ``rank``; 0 in a one-process run)."""
        rank = self.attrs.get("rank")
        return rank if isinstance(rank, int) and rank >= 0 else 0

    @property
    def steps(self) -> list:
        """The training steps (``-1``: records outside training)."""
        return sorted({r.step for r in self._records})

    @property
    def decode_steps(self) -> list:
        """The decode steps of a generation (``[-1]`` outside one)."""
        return sorted({r.decode_step for r in self._records})

    @property
    def batches(self) -> list:
        """The batch indices of an evaluation set (``[-1]`` outside one)."""
        return sorted({r.batch_index for r in self._records})

    # -- records ------------------------------------------------------------------------------
    def __len__(self):
        return len(self._records)

    def __iter__(self):
        return iter(self._records)

    def __getitem__(self, index) -> Record:
        return self._records[index]

    def records(self, kind=None, name=None, step=None, decode_step=None, batch_index=None) -> list:
        """Records in execution order, filtered by kind (one or several), name glob, step,
        decode step and batch."""
        kinds = (kind,) if isinstance(kind, str) else kind
        out = []
        for r in self._records:
            if kinds is not None and r.kind not in kinds:
                continue
            if name is not None and not fnmatch.fnmatchcase(r.name, name):
                continue
            if step is not None and r.step != step:
                continue
            if decode_step is not None and r.decode_step != decode_step:
                continue
            if batch_index is not None and r.batch_index != batch_index:
                continue
            out.append(r)
        return out

    def get(self, name, kind="forward", call=0, step=None, decode_step=None, batch_index=None) -> Record:
        for r in self._records:
            if r.name == name and r.kind == kind and r.call == call and (step is None or r.step == step) \
                    and (decode_step is None or r.decode_step == decode_step) \
                    and (batch_index is None or r.batch_index == batch_index):
                return r
        raise KeyError(f"no {kind} record named {name!r} (call {call}) in {self.path}")

    def close(self):
        if self._mapped:
            self._mapped.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"<tracediff.Trace {self.path!r}: {len(self)} records, framework={self.framework!r}>"


def open_trace(path, *, warn_incomplete=True, mapped=True) -> Trace:
    """Open a trace file lazily: the index is read, tensors only on ``Record.read()``.
    ``mapped=False``: ``Record.view()`` reads through HDF5 instead of mapping the file's pages.
    A multi-rank trace folder opens with ``tracediff.ranks.open_any`` (``td.open``)."""
    return Trace(path, warn_incomplete=warn_incomplete, mapped=mapped)


def _open_h5(path) -> h5py.File:
    if not os.path.exists(path):
        raise TraceFormatError(f"cannot open trace {path}: no such file")
    if os.path.isdir(path):
        raise TraceFormatError(f"cannot open trace {path}: it is a folder, not a trace file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise TraceFormatError(f"cannot open trace {path}: {exc.strerror}") from None
    if not _is_hdf5(path, head):
        raise TraceFormatError(
            f"{path} is not a tracediff trace: not an HDF5 file; traces are written by "
            "tracediff record / td.Recorder")
    try:
        # No HDF5 lock: a reader must never block a writer (writers lock among themselves, see
        # recorder._lock_for_writing), and SWMR keeps what a reader sees consistent.
        try:
            # A closed trace opens without SWMR: SWMR readers retry each metadata checksum
            # failure ~100 times with back-off, so a damaged file would take minutes to refuse.
            return h5py.File(path, "r", libver="latest", locking=False)
        except OSError as exc:
            if "already open for write" not in str(exc):
                raise
        return h5py.File(path, "r", libver="latest", swmr=True, locking=False)
    except Exception as exc:
        text = first_line(exc)
        if "truncated file" in text:
            raise TraceFormatError(
                f"cannot open trace {path}: the file is truncated (shorter than its header "
                "says); copy it again, or record it again") from None
        raise TraceFormatError(f"cannot open trace {path}: damaged HDF5 file ({text})") from None


def _is_hdf5(path, head: bytes) -> bool:
    if head == b"\x89HDF\r\n\x1a\n":
        return True
    try:
        return bool(h5py.is_hdf5(path))
    except Exception:
        return False


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _read_range(dataset, start: int, count: int) -> np.ndarray:
    """``count`` bytes of a 1-D uint8 dataset from ``start``, through h5py's low-level API."""
    out = np.empty(count, np.uint8)
    file_space = dataset.id.get_space()
    file_space.select_hyperslab((start,), (count,))
    dataset.id.read(h5py.h5s.create_simple((count,)), file_space, out)
    return out


def _texts_v1(columns) -> dict:
    """A v1 index's text fields: HDF5 variable-length strings, read with the rows."""
    return {name: [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                   for v in columns[name].tolist()]
            for name in ("name", "kind", "dtype", "shape", "hash", "meta")}
