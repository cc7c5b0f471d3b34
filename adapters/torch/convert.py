"""Torch tensors to NumPy arrays, bit-exact, and the ordered writer that copies them to host.

bfloat16 and the float8 types have no NumPy dtype: their bits are viewed as an integer tensor of
the same width, handed to NumPy, and reinterpreted with ml_dtypes, so no value is ever rounded.
"""
from __future__ import annotations

import collections
import threading
import warnings

import numpy as np
import torch

from tracediff.errors import TraceDiffError
from tracediff.recorder import Summary

# torch dtype -> (same-width integer dtype, ml_dtypes name)
_VIA_INTEGER = {
    torch.bfloat16: (torch.int16, "bfloat16"),
}
for _name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"):
    if hasattr(torch, _name):
        _VIA_INTEGER[getattr(torch, _name)] = (torch.uint8, _name)

# dtypes that Tensor.numpy() views as they are (quantized dtypes are not among them)
_NUMPY_NATIVE = frozenset((
    torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128, torch.bool,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64))

# Host-side bytes a writer may hold before it synchronises and writes.
PENDING_BUDGET = 256 << 20
# Free staging buffers kept for the next recording in this process (``release_staging``).
STAGING_KEPT = 256 << 20


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values as a NumPy array with the same logical dtype and the same bits.

    CPU tensors are viewed, not copied: write the array before the tensor changes.
    """
    t = tensor.detach()
    if t.is_cpu and t.dtype in _NUMPY_NATIVE and t.layout is torch.strided and not (
            t.is_conj() or t.is_neg()):
        return t.numpy()  # the common case, checked in the fewest calls
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_quantized:
        raise TraceDiffError(f"quantized tensor ({t.dtype}) cannot be recorded: dequantize it first")
    special = _VIA_INTEGER.get(t.dtype)
    if special is not None:
        import ml_dtypes

        integer, name = special
        return t.view(integer).numpy().view(getattr(ml_dtypes, name))
    try:
        return t.numpy()
    except TypeError:
        raise TraceDiffError(
            f"tensor of dtype {t.dtype} cannot be recorded: NumPy has no such type; "
            "cast it in the model or exclude this layer") from None


class StagingPool:
    """Host buffers that copies wait in until the writer thread has written them. Written
    buffers come back and are handed out again, in this recording and the next ones, so
    steady steps allocate (and page-fault in) nothing; at most ``limit`` bytes are kept free."""

    def __init__(self, limit: int = STAGING_KEPT):
        self.limit = limit
        self._free = {}                     # (nbytes, pinned) -> buffers
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int, pinned: bool) -> torch.Tensor:
        with self._lock:
            free = self._free.get((nbytes, pinned))
            if free:
                self._bytes -= nbytes
                return free.pop()
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)

    def give(self, buffer: torch.Tensor, pinned: bool):
        nbytes = buffer.numel()
        with self._lock:
            if self._bytes + nbytes <= self.limit:
                self._free.setdefault((nbytes, pinned), []).append(buffer)
                self._bytes += nbytes

    def clear(self):
        with self._lock:
            self._free.clear()
            self._bytes = 0

    @property
    def kept_bytes(self) -> int:
        return self._bytes


STAGING = StagingPool()


def release_staging():
    """Free the staging buffers kept for later recordings (at most ``STAGING_KEPT`` bytes)."""
    STAGING.clear()


class HostWriter:
    """Writes tensors to a Recorder in the order they arrive.

    Inline (``background=False``), CPU tensors are written at once, in the hook: nothing is
    copied, and a later in-place op cannot change what was recorded. Otherwise the hook copies
    each tensor into a staging buffer from ``STAGING`` (pinned, with a non-blocking copy on the
    current stream and a CUDA event, for a GPU tensor, which always takes this path) and
    returns; one thread waits for each copy and writes it while the model runs on. CPU tensors
    that arrive while copies are queued are staged too, to keep the execution order.
    ``drain()`` waits until everything queued is written; at most ``budget`` bytes wait in the
    queue (the model thread waits beyond that).
    """

    def __init__(self, recorder, budget: int = PENDING_BUDGET, background: bool = False):
        self.recorder = recorder
        self.budget = budget
        self.background = background
        self._queue = collections.deque()   # (kind, name, host tensor, event, call, meta, buffer)
        self._queued_bytes = 0
        self._cv = threading.Condition()
        self._thread = None
        self._closing = False
        self._error = None
        self._warned = set()

    def write(self, kind, name, tensor, call=None, **meta):
        t = tensor.detach()
        on_cpu = t.is_cpu
        if on_cpu and not self.background and not self._queue:
            self._raise_error()
            self._write_now(kind, name, t, call, meta)
            return
        if on_cpu and not self.recorder.values:
            # Stats-only: the statistics, hash and sample are taken here, before the model can
            # change the tensor; the thread only appends them. No copy of the tensor is made.
            self._raise_error()
            summary = self._describe(kind, name, t)
            if summary is not None:
                self._put((kind, name, summary, None, call, meta, None))
            return
        if t.device.type in ("cuda", "cpu") and t.layout == torch.strided and not t.is_quantized:
            host, event, buffer = self._stage(t)
        else:
            host, event, buffer = t.to("cpu", copy=True), None, None
        self._put((kind, name, host, event, call, meta, buffer))

    def drain(self):
        """Wait until every queued tensor is written; re-raise a writer error here."""
        with self._cv:
            while self._queue and self._error is None:
                self._cv.wait()
        self._raise_error()

    def close(self, raise_errors: bool = True):
        """Write what is queued (unless a write failed) and stop the thread."""
        try:
            if raise_errors:
                self.drain()
        finally:
            with self._cv:
                self._closing = True
                self._cv.notify_all()
            if self._thread is not None:
                self._thread.join()
                self._thread = None

    # -- model thread ------------------------------------------------------------------------
    def _put(self, item):
        nbytes = _nbytes(item[2])
        with self._cv:
            while self._queue and self._queued_bytes + nbytes > self.budget and self._error is None:
                self._cv.wait()
            self._raise_error()
            self._queue.append(item)
            self._queued_bytes += nbytes
            self._cv.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tracediff-writer", daemon=True)
                self._thread.start()

    def _raise_error(self):
        if self._error is not None:
            raise self._error

    def _stage(self, t):
        """Copy ``t`` into a staging buffer from the pool: pinned, without blocking, for a CUDA
        tensor (with an event that marks the copy done); a plain copy for a CPU tensor."""
        from_cuda = t.device.type == "cuda"
        nbytes = t.numel() * t.element_size()
        buffer = STAGING.take(nbytes, pinned=from_cuda)
        host = buffer.view(t.dtype).view(t.shape) if nbytes else torch.empty(t.shape, dtype=t.dtype)
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        host.copy_(t, non_blocking=from_cuda)
        if not from_cuda:
            return host, None, buffer
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(t.device))
        return host, event, buffer

    # -- writer thread -----------------------------------------------------------------------
    def _run(self):
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                kind, name, host, event, call, meta, buffer = self._queue[0]
                failed = self._error is not None
            if not failed:
                try:
                    if event is not None:
                        event.synchronize()
                    self._write_now(kind, name, host, call, meta)
                except BaseException as exc:  # handed to the model thread at its next call
                    self._error = exc
            with self._cv:
                self._queue.popleft()
                self._queued_bytes -= _nbytes(host)
                if buffer is not None:
                    STAGING.give(buffer, pinned=event is not None)
                self._cv.notify_all()

    def _write_now(self, kind, name, payload, call, meta):
        """Append a ``Summary`` made in the hook, or describe and append a tensor."""
        summary = payload if isinstance(payload, Summary) else self._describe(kind, name, payload)
        if summary is not None:
            self.recorder.append(kind, name, summary, call=call, **meta)

    def _describe(self, kind, name, t):
        try:
            return self.recorder.describe(to_numpy(t))
        except TraceDiffError as exc:
            # A hook must not break the user's model over one tensor we cannot store.
            if name not in self._warned:
                self._warned.add(name)
                warnings.warn(f"tracediff: skipped {kind} {name!r}: {exc}", RuntimeWarning, stacklevel=3)
            return None


def _nbytes(payload) -> int:
    if isinstance(payload, Summary):
        return payload.stored.size
    return payload.numel() * payload.element_size()
