"""Multi-rank traces: a folder of per-rank trace files and a manifest, read as one logical
trace whose records are reassembled by placement (docs/format.md "Multi-rank traces")."""
from .manifest import MANIFEST, is_ranked, rank_file
from .placement import Placement, parse
from .trace import RankedTrace, open_ranked

__all__ = ["MANIFEST", "Placement", "RankedTrace", "is_ranked", "open_ranked", "parse", "rank_file"]
