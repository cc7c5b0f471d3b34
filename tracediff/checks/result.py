"""What a health check reports: ``CheckResult`` per check, ``CheckReport`` for a whole trace."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

SCHEMA = "tracediff.check/1"
STATUSES = ("pass", "warn", "fail", "skip")


@dataclass
class CheckResult:
    """One check's verdict: the figure measured, the threshold, the layers concerned, advice."""

    id: str
    status: str
    message: str
    layers: list = field(default_factory=list)
    value: object = None
    threshold: str = ""
    advice: str = ""
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"check status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def to_dict(self) -> dict:
        out = {"id": self.id, "status": self.status, "layers": list(self.layers),
               "value": _json_number(self.value), "threshold": self.threshold,
               "message": self.message, "advice": self.advice}
        if self.details:
            out["details"] = _json_clean(self.details)
        return out


def skip(check_id: str, why: str, threshold: str = "") -> CheckResult:
    """A skipped check always says why."""
    return CheckResult(check_id, "skip", f"skipped: {why}", threshold=threshold)


@dataclass
class CheckReport:
    """The verdicts of every check run on one trace; ``ok`` is false when any check failed."""

    checks: list
    path: str = ""

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def __getitem__(self, check_id: str) -> CheckResult:
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(f"no check {check_id!r} in this report: ids are "
                       f"{', '.join(c.id for c in self.checks)}")

    def by_status(self, status: str) -> list:
        return [c for c in self.checks if c.status == status]

    def to_dict(self) -> dict:
        out = {"schema": SCHEMA, "ok": self.ok}
        if self.path:
            out["path"] = self.path
        out["checks"] = [c.to_dict() for c in self.checks]
        return out

    def to_json(self, path=None) -> str:
        """The report as JSON (strict: non-finite numbers become strings); written to ``path``."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return text

    def __str__(self):
        from ..report.check_terminal import plain_text
        return plain_text(self)


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _json_number(value.item())
    return value


def _json_clean(value):
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    return _json_number(value)
