"""Zero-copy reads of a trace's data blob: the file's own pages mapped into memory.

A diff reads each tensor of both traces once. Through HDF5 every byte is copied from the page
cache into a fresh array first (a third of a large diff's time); mapped, the comparison reads
the page cache directly. HDF5 still owns the layout: the chunk addresses come from it, and only
what maps one to one onto the file is mapped: an unfiltered blob, its chunks stored back to back
(a range that crosses a gap between chunks is read through HDF5 instead), in a file with no
user block, closed by its writer and not shorter than the addresses say.
"""
from __future__ import annotations

import mmap
import os

import h5py
import numpy as np


class MappedBlob:
    """The runs of a 1-D uint8 dataset that lie contiguously in its file, mapped on demand."""

    def __init__(self, fd: int, starts: np.ndarray, ends: np.ndarray, addresses: np.ndarray):
        self._fd = fd
        self._starts, self._ends, self._addresses = starts, ends, addresses
        self._runs = {}     # run index -> (mmap of the whole run, offset of its first byte in it)

    @classmethod
    def open(cls, h5file: h5py.File, dataset: h5py.Dataset) -> "MappedBlob | None":
        """The mapping of ``dataset``'s bytes, or None when its layout does not allow one."""
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
        """``nbytes`` bytes from ``offset`` as a read-only array over the mapped file, or None
        when they do not lie in one contiguous run. Each run is mapped once, on the first view
        into it, so a small tensor costs no system call; a mapping lives as long as the arrays
        over it."""
        if self._fd is None:
            return None
        run = int(np.searchsorted(self._starts, offset, side="right")) - 1
        if run < 0 or offset + nbytes > self._ends[run]:
            return None
        mapped = self._runs.get(run)
        if mapped is None:
            address = int(self._addresses[run])
            base = address - address % mmap.ALLOCATIONGRANULARITY
            length = address - base + int(self._ends[run] - self._starts[run])
            pages = mmap.mmap(self._fd, length, offset=base, access=mmap.ACCESS_READ)
            mapped = self._runs[run] = (pages, address - base)
        pages, start = mapped
        return np.frombuffer(pages, np.uint8, nbytes, start + offset - int(self._starts[run]))

    def close(self):
        self._runs = {}     # the mappings close with the last array over them
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
    dataset.id.chunk_iter(lambda info: found.append((info.chunk_offset[0], info.byte_offset,
                                                     info.size)))
    if not found or any(size != chunk for _, _, size in found):
        return None
    found.sort()
    logical = np.array([f[0] for f in found], dtype=np.int64)
    address = np.array([f[1] for f in found], dtype=np.int64)
    # a run breaks where the next chunk is not the next one in the blob or not next in the file
    breaks = np.flatnonzero((np.diff(logical) != chunk) | (np.diff(address) != chunk)) + 1
    first = np.concatenate([[0], breaks])
    last = np.concatenate([breaks, [logical.size]]) - 1
    return logical[first], logical[last] + chunk, address[first]
