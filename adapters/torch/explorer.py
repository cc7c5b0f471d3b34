"""Model Explorer node keys of a torch trace's records: the nodes of a ``torch.export`` graph,
as Model Explorer's PyTorch adapter builds them (the fx node names). A module's record is the
output of its call: the last node of the k-th contiguous run of nodes whose ``nn_module_stack``
holds that module is call k (a new entry in the stack, ``act@1``, starts a new call)."""
from __future__ import annotations

ROOT = "<root>"


def node_keys(records, model=None) -> dict:
    """``{(record name, call): {"ids": [fx node name], "group": module path}}`` for the forward,
    input and param records (a parameter or buffer is its placeholder); ``model`` is a
    ``torch.export.ExportedProgram`` or a ``.pt2`` file (none: no keys, the trace alone does not
    say which fx node is which module)."""
    if model is None:
        return {}
    program = _load(model)
    calls = module_calls(program.graph_module.graph.nodes)
    specs = program.graph_signature.input_specs
    inputs = [spec.arg.name for spec in specs if spec.kind.name == "USER_INPUT"]
    placeholders = {spec.target: spec.arg.name for spec in specs
                    if spec.kind.name in ("PARAMETER", "BUFFER") and spec.target}
    input_records = [r for r in records if r.kind == "input"]
    out = {}
    for record in records:
        if record.kind == "forward" and (record.name, record.call) in calls:
            node = calls[(record.name, record.call)]
            group = "" if record.name == ROOT else record.name.replace(".", "/")
            out[(record.name, record.call)] = {"ids": [node], "group": group}
        elif record.kind == "param" and record.name in placeholders:
            out[(record.name, record.call)] = {"ids": [placeholders[record.name]], "group": ""}
    # user inputs in order, when the trace recorded as many
    if len(input_records) == len(inputs):
        for record, node in zip(input_records, inputs):
            out[(record.name, record.call)] = {"ids": [node], "group": ""}
    return out


def module_calls(nodes) -> dict:
    """``{(module path, call): the fx node name ending that call}``; the root module is
    ``<root>``, ending at the last computing node. A call is a contiguous run of nodes under
    the same ``nn_module_stack`` entry: a module called twice in a row has two entries
    (``...act`` and ``...act@1``)."""
    runs, open_runs, last = {}, {}, None
    for node in nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        entries = {(path or ROOT): key
                   for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items()}
        entries.setdefault(ROOT, ROOT)
        for path in list(open_runs):
            if entries.get(path) != open_runs[path][1]:
                del open_runs[path]
        for path, key in entries.items():
            if path not in open_runs:
                open_runs[path] = (len(runs.setdefault(path, [])), key)
                runs[path].append(node.name)
            runs[path][open_runs[path][0]] = node.name
        last = node.name
    out = {(path, call): name for path, ends in runs.items() for call, name in enumerate(ends)}
    if last is not None:
        out[(ROOT, 0)] = last
    return out


def _load(model):
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model
    return torch.export.load(model)
