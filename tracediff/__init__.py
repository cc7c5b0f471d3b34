"""tracediff: record per-layer tensors of a model run, diff two runs, check a run's health.

``import tracediff`` imports no framework, and NumPy and h5py only when a name that needs them
is first used; each framework adapter imports its framework when it is used
(``from tracediff.adapters import torch``).
"""
from . import primes
from ._version import __version__
from .errors import IncompleteTraceWarning, TraceDiffError, TraceFormatError

__all__ = [
    "Recorder", "Trace", "Record", "open", "diff", "replay", "check", "gradcheck", "primes",
    "TraceDiffError", "TraceFormatError", "IncompleteTraceWarning", "__version__",
]


def __getattr__(name):
    # Everything that needs NumPy/h5py loads on first use: pytest imports tracediff's plugin
    # (tracediff.pytest_plugin) in every session, which must not pay for them.
    if name == "Recorder":
        from .recorder import Recorder
        return Recorder
    if name in ("Record", "Trace"):
        from . import trace
        return getattr(trace, name)
    if name == "open":
        from .ranks import open_any
        return open_any
    if name == "diff":
        from .compare import diff
        return diff
    if name == "replay":
        from .replays import replay
        return replay
    if name == "check":
        from .checks import check
        return check
    if name == "gradcheck":
        from .checks.gradcheck import gradcheck
        return gradcheck
    raise AttributeError(f"module 'tracediff' has no attribute {name!r}")
