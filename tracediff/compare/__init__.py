"""The diff engine: ``td.diff(a, b)`` aligns two traces, compares every pair and names the first
diverging layer forward and backward. ``docs/diff.md`` describes the rules."""
from .engine import diff
from .report import Pair, Report

__all__ = ["diff", "Report", "Pair"]
