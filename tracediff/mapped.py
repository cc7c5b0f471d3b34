"""Reads of a trace's data blob straight from its file: each run of the blob that lies back to
back in the file is mapped into memory on first use, and a tensor's bytes are a slice of that
mapping. The runs used last stay mapped, up to MAPPED_BUDGET bytes.

A diff reads each tensor of both traces once, and a replay reads the reference's two or three
times. Through HDF5 every byte is copied from the page cache into a fresh array first (a third
of a large diff's time), and every read costs ~0.1 ms of HDF5's own work (most of a small
tensor's time); a system call a read still costs a few microseconds and a copy. Mapped, the
comparison reads the page cache directly, and a page is faulted in once while its run stays
mapped. HDF5
still owns the layout: the chunk addresses come from it, and only what lies one to one in the
file is read this way: an unfiltered blob in a file with no user block, closed by its writer and
not shorter than the addresses say. A range that crosses a gap between two runs of chunks is
copied from both.
"""
from __future__ import annotations

import bisect
import collections
import mmap
import os
import threading

import h5py
import numpy as np


MAPPED_BUDGET = 64 << 20    # bytes of runs a reader keeps mapped between reads


class MappedBlob:
    """The runs of a 1-D uint8 dataset that lie contiguously in its file."""

    def __init__(self, fd: int, starts: np.ndarray, ends: np.ndarray, addresses: np.ndarray):
        self._fd = fd
        # plain lists: a lookup per read, which NumPy's searchsorted made cost ~2 us
        self._starts, self._ends, self._addresses = (np.asarray(x).tolist()
                                                     for x in (starts, ends, addresses))
        self._maps = collections.OrderedDict()    # run -> (mapping, file address of its first
                                                  # byte), the least recently used first
        self._mapped_bytes = 0
        self._lock = threading.Lock()             # the diff compares pairs on several threads

    @classmethod
    def open(cls, h5file: h5py.File, dataset: h5py.Dataset) -> "MappedBlob | None":
        """Direct reads of ``dataset``'s bytes, or None when its layout does not allow them."""
        try:
            runs = _runs(h5file, dataset)
        except Exception:  # an HDF5 or h5py without the chunk queries: read through HDF5
            return None
        if runs is None:
            return None
        try:    # the file HDF5 has open: the path may name a newer trace written over it since
            fd = os.dup(h5file.id.get_vfd_handle())
        except (OSError, ValueError, AttributeError):
            return None
        starts, ends, addresses = runs
        if ends.size and int((addresses + (ends - starts)).max()) > os.fstat(fd).st_size:
            os.close(fd)   # shorter than HDF5 says: reading a mapped page past the end would crash
            return None
        return cls(fd, starts, ends, addresses)

    def view(self, offset: int, nbytes: int) -> np.ndarray | None:
        """``nbytes`` bytes from ``offset`` as a read-only array over the mapped file (the
        mapping lives as long as the array), or copied from the runs a range across a gap
        between chunks lies in; None where a part of the range lies in no run."""
        run = self._run(offset, nbytes)
        if run is not None:
            return self._slice(run, offset, nbytes)
        out = self._gathered(offset, nbytes)
        if out is not None:
            out.flags.writeable = False
        return out

    def copy(self, offset: int, nbytes: int) -> np.ndarray | None:
        """``nbytes`` bytes from ``offset`` in a fresh, writable array; None where a part of
        them lies in no run."""
        run = self._run(offset, nbytes)
        if run is not None:
            return self._slice(run, offset, nbytes).copy()
        return self._gathered(offset, nbytes)

    def _slice(self, run, offset, nbytes) -> np.ndarray:
        pages, first = self._mapping(run)
        address = self._addresses[run] + offset - self._starts[run]
        return np.frombuffer(pages, np.uint8, nbytes, address - first)

    def _gathered(self, offset, nbytes) -> np.ndarray | None:
        """A range across runs that follow each other in the blob (not in the file), copied
        from each into one fresh array; None where a part of it lies in no run."""
        if self._fd is None:
            return None
        out, done = np.empty(nbytes, np.uint8), 0
        while done < nbytes:
            run = self._run(offset + done, 1)
            if run is None:
                return None
            take = min(nbytes - done, self._ends[run] - offset - done)
            out[done:done + take] = self._slice(run, offset + done, take)
            done += take
        return out

    def _mapping(self, run):
        with self._lock:
            found = self._maps.get(run)
            if found is not None:
                self._maps.move_to_end(run)
                return found
            address = self._addresses[run]
            first = address - address % mmap.ALLOCATIONGRANULARITY
            length = address + self._ends[run] - self._starts[run] - first
            found = self._maps[run] = (mmap.mmap(self._fd, length, offset=first,
                                                 access=mmap.ACCESS_READ), first)
            self._mapped_bytes += length
            # pages a mapping touched count in the reader's resident memory while it is held:
            # the oldest are let go (each lives on while an array over it does)
            while self._mapped_bytes > MAPPED_BUDGET and len(self._maps) > 1:
                _, (pages, _) = self._maps.popitem(last=False)
                self._mapped_bytes -= len(pages)
            return found

    def _run(self, offset, nbytes) -> int | None:
        """The run holding blob bytes ``offset`` to ``offset + nbytes``; None if none does."""
        if self._fd is None:
            return None
        run = bisect.bisect_right(self._starts, offset) - 1
        if run < 0 or offset + nbytes > self._ends[run]:
            return None
        return run

    def close(self):
        """Close the file; arrays over its mappings stay valid (each holds its mapping)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._maps.clear()
            self._mapped_bytes = 0


def _runs(h5file, dataset):
    """``(starts, ends, addresses)``: the dataset's byte ranges stored back to back in the file,
    with the file address of each range's first byte; None when the layout is not mappable."""
    if h5file.driver != "sec2" or h5file.userblock_size != 0:
        return None
    plist = dataset.id.get_create_plist()
    if plist.get_nfilters() != 0 or dataset.dtype != np.uint8 or dataset.ndim != 1:
        return None
    layout = plist.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        address = dataset.id.get_offset()
        if address is None:
            return None
        size = int(dataset.shape[0])
        return np.array([0]), np.array([size]), np.array([address])
    if layout != h5py.h5d.CHUNKED:
        return None
    chunk = int(dataset.chunks[0])
    found = []
    dataset.id.chunk_iter(found.append)
    found = sorted((info.chunk_offset[0], info.byte_offset, info.size) for info in found)
    if not found or any(size != chunk for _, _, size in found):
        return None
    logical = np.array([f[0] for f in found], dtype=np.int64)
    address = np.array([f[1] for f in found], dtype=np.int64)
    # a run breaks where the next chunk is not the next one in the blob or not next in the file
    breaks = np.flatnonzero((np.diff(logical) != chunk) | (np.diff(address) != chunk)) + 1
    first = np.concatenate([[0], breaks])
    last = np.concatenate([breaks, [logical.size]]) - 1
    return logical[first], logical[last] + chunk, address[first]
