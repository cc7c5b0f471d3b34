"""The diff report: pairs, first divergences, unmatched records; strict JSON and renderers."""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import TraceDiffError

SCHEMA = "tracediff.diff/1"
STATUSES = ("ok", "diverged", "shape_mismatch", "dtype_mismatch", "nonfinite", "layout")


@dataclass
class Pair:
    a_name: str
    b_name: str
    kind: str
    status: str
    shape_a: list
    shape_b: list
    stats: dict
    tolerance: dict
    hint: str | None = None
    match: str = "name"
    confidence: float = 1.0
    a_call: int = 0
    b_call: int = 0
    a_index: int = -1
    b_index: int = -1
    step: int = -1
    decode_step: int = -1         # the decode step of a generation, -1 outside one
    batch_index: int = -1         # the batch of an evaluation set, -1 outside one
    dtype_a: str = ""
    dtype_b: str = ""
    diverged: bool = False        # counts as a divergence (a layout between declared layouts does not)
    worst: list = field(default_factory=list)
    introduced: dict | None = None
    local: dict | None = None     # replay: this layer run on the reference's inputs
    rearrangement: object = field(default=None, repr=False, compare=False)   # layout pairs; not in JSON
    tied: list = field(default_factory=list, repr=False, compare=False)      # as good layouts; not in JSON
    contradicts_declared: bool = field(default=False, repr=False, compare=False)
    window: tuple | None = field(default=None, repr=False, compare=False)  # steps.window; not in JSON

    @property
    def rel_l2(self):
        return self.stats.get("rel_l2") if self.stats else None

    @property
    def position(self) -> tuple:
        """(step, decode_step, batch_index): the group of records it was aligned in."""
        return (self.step, self.decode_step, self.batch_index)

    def label(self) -> str:
        a = self.a_name + (f"#{self.a_call}" if self.a_call else "")
        b = self.b_name + (f"#{self.b_call}" if self.b_call else "")
        return b if a == b else f"{a} <-> {b}"

    def to_dict(self) -> dict:
        out = {
            "a_name": self.a_name, "b_name": self.b_name, "kind": self.kind, "status": self.status,
            "shape_a": list(self.shape_a), "shape_b": list(self.shape_b), "stats": self.stats,
            "tolerance": self.tolerance, "hint": self.hint, "match": self.match,
            "confidence": round(self.confidence, 4), "a_call": self.a_call, "b_call": self.b_call,
            "a_index": self.a_index, "b_index": self.b_index, "step": self.step,
            "dtype_a": self.dtype_a, "dtype_b": self.dtype_b, "diverged": self.diverged,
            "worst": self.worst,
        }
        for key in ("decode_step", "batch_index"):   # only in traces that have them
            if getattr(self, key) >= 0:
                out[key] = getattr(self, key)
        if self.introduced is not None:
            out["introduced"] = self.introduced
        if self.local is not None:
            out["local"] = self.local
        return out


@dataclass
class FirstDivergence:
    forward: Pair | None = None
    backward: Pair | None = None
    param_grad: Pair | None = None

    first: Pair | None = None     # the earliest diverging pair of any kind: its step is the report's

    def to_dict(self) -> dict:
        out = {"forward": self.forward.to_dict() if self.forward else None,
               "backward": self.backward.to_dict() if self.backward else None,
               "param_grad": self.param_grad.to_dict() if self.param_grad else None,
               "step": self.step}
        for key in ("decode_step", "batch_index"):   # only in traces that have them
            if self.first is not None and getattr(self.first, key) >= 0:
                out[key] = getattr(self.first, key)
        return out

    @property
    def step(self) -> int | None:
        """The first divergent training step (-1: a trace outside training); None: no divergence."""
        return None if self.first is None else self.first.step

    @property
    def decode_step(self) -> int | None:
        return None if self.first is None or self.first.decode_step < 0 else self.first.decode_step

    @property
    def batch_index(self) -> int | None:
        return None if self.first is None or self.first.batch_index < 0 else self.first.batch_index


@dataclass
class Report:
    a: dict
    b: dict
    pairs: list
    first_divergence: FirstDivergence
    unmatched: dict                       # {"a": [names], "b": [names]}
    unmatched_records: dict = field(default_factory=lambda: {"a": [], "b": []})
    histogram: dict = field(default_factory=lambda: {"forward": None, "backward": None})
    dims: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    root_causes: list | None = None       # replay: the layers wrong on the reference's inputs
    replayed: bool = False
    findings: list = field(default_factory=list)   # inputs and settings that differ (findings.py)
    steps: dict | None = None             # per-step summary (step_summary.py); None: one group
    graph: dict | None = None             # the traced dataflow, for drawing (graph.py)
    missing: list = field(default_factory=list)    # pairs a Dask cluster lost (dask/cluster.py)

    @property
    def ok(self) -> bool:
        return not self.missing and not any(p.diverged for p in self.pairs)

    @property
    def diverged_pairs(self) -> list:
        return [p for p in self.pairs if p.diverged]

    def to_dict(self) -> dict:
        missing = {"missing": self.missing} if self.missing else {}
        return strict({
            "schema": SCHEMA, "ok": self.ok, "a": self.a, "b": self.b,
            "first_divergence": self.first_divergence.to_dict(),
            "findings": self.findings,
            "pairs": [p.to_dict() for p in self.pairs],
            "unmatched": self.unmatched,
            "unmatched_records": self.unmatched_records,
            "histogram": self.histogram,
            "dims": self.dims,
            "summary": self.summary_counts(),
            "root_causes": self.root_causes,
            "replay": self.replay_summary(),
            "steps": self.steps,
            "graph": self.graph,
            **missing,
        })

    def replay_summary(self) -> dict | None:
        """How many forward pairs were replayed, how many skipped and why; None without replay."""
        if not self.replayed:
            return None
        skipped = {}
        replayed = 0
        for p in self.pairs:
            if p.local is None:
                continue
            if p.local["status"].startswith("skipped"):
                why = p.local["status"].partition(": ")[2]
                skipped[why] = skipped.get(why, 0) + 1
            else:
                replayed += 1
        return {"replayed": replayed, "skipped": sum(skipped.values()), "skipped_why": skipped}

    def summary_counts(self) -> dict:
        counts = {s: 0 for s in STATUSES}
        for p in self.pairs:
            counts[p.status] = counts.get(p.status, 0) + 1
        return {"pairs": len(self.pairs), "diverged": len(self.diverged_pairs), "statuses": counts,
                "unmatched_a": len(self.unmatched["a"]), "unmatched_b": len(self.unmatched["b"])}

    def to_json(self, path=None) -> str:
        """The report as strict JSON (no NaN/Infinity tokens); written to ``path`` if given."""
        text = json_lines(self.to_dict())
        if path is not None:
            _write(path, text)
        return text

    def to_html(self, path=None) -> str:
        from ..report.html import render_html
        text = render_html(self.to_dict())
        if path is not None:
            _write(path, text)
        return text

    def to_markdown(self, path=None) -> str:
        from ..report.markdown import render_markdown
        text = render_markdown(self.to_dict())
        if path is not None:
            _write(path, text)
        return text

    def to_model_explorer(self, directory, model_a=None, model_b=None) -> dict:
        """Model Explorer node data for both sides written into ``directory`` (docs/graph.md);
        ``model_a``/``model_b``: the .onnx, .tflite or torch.export .pt2 drawn for that side
        (None: the trace's own graph, or for ONNX and LiteRT the node names). Returns the
        directory's ``index.json``."""
        from ..explorer import write_overlays
        return write_overlays(self.to_dict(), directory, (model_a, model_b))

    def render(self, console=None, context=3) -> None:
        from ..report.terminal import render
        render(self, console=console, context=context)

    def __repr__(self):
        fd = self.first_divergence
        where = fd.forward.label() if fd.forward else (fd.backward.label() if fd.backward else None)
        return f"<tracediff diff report: ok={self.ok}, {len(self.pairs)} pairs, first divergence {where!r}>"


def _write(path, text):
    path = os.fspath(path)
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise TraceDiffError(f"cannot write report {path}: {exc.strerror}; choose a writable path") from None


def json_lines(report: dict) -> str:
    """Strict JSON with one top-level field, and one pair, a line: as readable in a diff or a
    pager as ``indent=1``, but made by the C encoder (``indent`` takes the pure-Python one,
    0.2-0.4 s for a few hundred pairs)."""
    dumps = functools.partial(json.dumps, allow_nan=False)
    fields = []
    for key, value in report.items():
        if isinstance(value, list) and value:
            value_text = "[\n  " + ",\n  ".join(map(dumps, value)) + "\n ]"
        else:
            value_text = dumps(value)
        fields.append(f" {dumps(key)}: {value_text}")
    return "{\n" + ",\n".join(fields) + "\n}"


_PLAIN = (str, int, bool, type(None))
_finite = math.isfinite


def strict(value):
    """JSON-safe: NaN -> null, +/-Inf -> "inf"/"-inf", NumPy scalars and arrays -> Python."""
    kind = type(value)
    if kind in _PLAIN:  # most of a report: answered before any isinstance
        return value
    if kind is float:
        return value if math.isfinite(value) else (None if math.isnan(value) else
                                                   "inf" if value > 0 else "-inf")
    # containers answer their plain members inline: a call per value was most of the cost
    if isinstance(value, dict):
        return {(k if type(k) is str else str(k)):
                (v if type(v) in _PLAIN or (type(v) is float and _finite(v)) else strict(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [v if type(v) in _PLAIN or (type(v) is float and _finite(v)) else strict(v)
                for v in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, complex):
        return [strict(value.real), strict(value.imag)]
    return value
