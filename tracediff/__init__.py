"""tracediff: record per-layer tensors of a model run, diff two runs, check a run's health.

``import tracediff`` imports NumPy and h5py only; each framework adapter imports its framework
when it is used (``from tracediff.adapters import torch``).
"""
from . import primes
from ._version import __version__
from .errors import IncompleteTraceWarning, TraceDiffError, TraceFormatError
from .recorder import Recorder
from .trace import Record, Trace
from .trace import open_trace as open

__all__ = [
    "Recorder", "Trace", "Record", "open", "diff", "check", "gradcheck", "primes",
    "TraceDiffError", "TraceFormatError", "IncompleteTraceWarning", "__version__",
]


def __getattr__(name):
    # The diff engine and health checks are imported on first use, keeping ``import tracediff`` light.
    if name == "diff":
        from .compare import diff
        return diff
    if name == "check":
        from .checks import check
        return check
    if name == "gradcheck":
        from .checks.gradcheck import gradcheck
        return gradcheck
    raise AttributeError(f"module 'tracediff' has no attribute {name!r}")
