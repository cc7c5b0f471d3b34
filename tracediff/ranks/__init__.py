"""Multi-rank traces: a folder of per-rank trace files and a manifest, read as one logical
trace whose records are reassembled by placement (docs/format.md "Multi-rank traces")."""
from .manifest import MANIFEST, is_ranked, rank_file
from .placement import Placement, parse
from .trace import RankedTrace, open_ranked

__all__ = ["MANIFEST", "Placement", "RankedTrace", "is_ranked", "open_any", "open_ranked", "parse",
           "rank_file"]


def open_any(path, *, warn_incomplete=True):
    """``td.open``: a multi-rank trace folder as one logical trace, any other path as one
    trace file (``tracediff.trace.open_trace``)."""
    from ..trace import open_trace
    if is_ranked(path):
        return open_ranked(path)
    return open_trace(path, warn_incomplete=warn_incomplete)
