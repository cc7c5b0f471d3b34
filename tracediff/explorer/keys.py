"""Which node of a side's graph each record is: asked of the adapter of the side's framework
(``adapters/<name>/explorer.py``). The graph is the model's when one is given, else the
trace's own dataflow (``graph.py``), whose node ids are the record names."""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from ..adapters.base import MODEL_SUFFIXES
from ..errors import TraceDiffError

# model files Model Explorer's adapters open, by suffix, and the trace framework they belong to:
# those tracediff records, and torch.export programs (torch.export.save)
MODEL_FRAMEWORKS = {**MODEL_SUFFIXES, ".pt2": "torch"}
# frameworks whose adapter keys records without a model (the record names are node names)
_WITHOUT_MODEL = ("onnx", "litert")


# the records that are nodes: a model input, a layer's output, a parameter
KINDS = ("input", "forward", "param")


@dataclass
class PairedRecord:
    """What keying needs of a record, when only the report's pairs are left (a replayed
    candidate's trace is deleted with its temporary folder)."""
    name: str
    kind: str = "forward"
    call: int = 0
    meta: dict = None

    def __post_init__(self):
        self.meta = self.meta or {}


def framework_of_model(model) -> str:
    """The trace framework a model file (or object) is drawn for; one line when none."""
    if type(model).__name__ == "ExportedProgram":
        return "torch"
    suffix = os.path.splitext(os.fspath(model))[1].lower()
    if suffix not in MODEL_FRAMEWORKS:
        raise TraceDiffError(
            f"model explorer: cannot draw {model}: give a .onnx, .tflite or torch.export .pt2 "
            "file (torch.export.save)")
    if not os.path.exists(model):
        raise TraceDiffError(f"model explorer: model {model} does not exist")
    return MODEL_FRAMEWORKS[suffix]


def side_nodes(framework, records, model=None) -> tuple[dict, str]:
    """``({(name, call): {"ids", "group"}}, graph)``: graph is ``"model"`` when the keys are the
    model's node ids, ``"trace"`` when they are the trace's own graph's (the record names)."""
    if model is not None or framework in _WITHOUT_MODEL:
        adapter = importlib.import_module(f"tracediff.adapters.{framework}.explorer")
        return adapter.node_keys(records, model), "model"
    return trace_nodes(records), "trace"


def trace_nodes(records) -> dict:
    """Keys of the graph drawn from the trace itself (``graph.py``): the record names."""
    return {(r.name, r.call): {"ids": [node_id(r.name, r.call)], "group": group_of(r)}
            for r in records if r.kind in ("forward", "input")}


def node_id(name, call) -> str:
    return name if not call else f"{name}#{call}"


def group_of(record) -> str:
    """A record's layer in the trace's graph: the module it belongs to (meta ``module``, else its
    name's dotted path), less the record itself when it is that module's output (Model Explorer
    puts a node beside the layers inside it, not in a layer of its own)."""
    if record.kind == "input":
        return ""
    module = record.meta.get("module") or record.name
    if module == record.name:
        module = record.name.rpartition(".")[0]
    return "" if module == "<root>" else module.replace(".", "/").replace(":", "/")
