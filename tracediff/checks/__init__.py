"""Health checks: the debugging checklists, automated on a trace (``td.check``), and a
finite-difference gradient check for hand-written code (``td.gradcheck``)."""
from .result import CheckReport, CheckResult
from .runner import CHECKS, check

__all__ = ["check", "CheckReport", "CheckResult", "CHECKS", "gradcheck"]


def __getattr__(name):
    if name == "gradcheck":
        from .gradcheck import gradcheck
        return gradcheck
    raise AttributeError(f"module 'tracediff.checks' has no attribute {name!r}")
