"""What a Dask worker runs: a batch of pairs compared by the engine's own ``compare_pair``.

Traces are opened without memory maps: mapped pages a worker touched count as its memory in
the nanny's eyes (RSS), so a diff of mapped traces would be restarted for memory it does not
own. Read through HDF5, a pair's tensors are the worker's only large allocations, freed when
the pair is done."""
from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict

from ..errors import TraceDiffError
from ..trace import open_trace

MAX_OPEN = 4    # traces kept open per worker process (each holds its index)
_open: OrderedDict = OrderedDict()
_lock = threading.Lock()


def compare_batch(path_a: str, path_b: str, jobs: list, dims, compare_pair) -> list:
    """``compare_pair`` (the engine's, sent by reference: this module imports no engine) of
    each ``(a_index, b_index, tolerance)``, in order."""
    ta, tb = _trace(path_a), _trace(path_b)
    return [compare_pair(ta[ia], tb[ib], tol, dims) for ia, ib, tol in jobs]


def _trace(path: str):
    """The trace at ``path``, opened once per worker and file version (a rewritten file is
    opened again)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise TraceDiffError(
            f"a Dask worker on {socket.gethostname()} cannot find {path}: the traces must be at "
            "the same path on every worker (a shared file system)") from None
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _lock:
        trace = _open.get(key)
        if trace is not None:
            _open.move_to_end(key)
            return trace
        trace = _open[key] = open_trace(path, warn_incomplete=False, mapped=False)
        while len(_open) > MAX_OPEN:
            _open.popitem(last=False)[1].close()
        return trace
