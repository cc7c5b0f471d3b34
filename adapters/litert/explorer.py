"""Model Explorer node keys of a LiteRT trace's records. Model Explorer's built-in TFLite adapter
numbers each op node by its index in the subgraph and lists the full tensor name of each output
(``tensor_name``), which node data may be keyed by too: with the model the keys are op indices,
without it the tensor names (meta ``tflite_tensor``). Inputs and constants (parameters) are
keyed by their tensor names either way: the adapter lists them as ``tensor_name`` of its
input and constant nodes."""
from __future__ import annotations


def node_keys(records, model=None) -> dict:
    """``{(record name, call): {"ids": [key], "group": name scope}}`` for the forward, input and
    param records."""
    by_tensor = _op_ids(model) if model is not None else {}
    out = {}
    for record in records:
        if record.kind not in ("forward", "input", "param"):
            continue
        tensor = record.meta.get("tflite_tensor") or record.name
        key = by_tensor.get(tensor, tensor)
        scope = tensor.split(";")[0].rpartition("/")[0]
        out[(record.name, record.call)] = {"ids": [key], "group": scope}
    return out


def _op_ids(model) -> dict:
    """``{output tensor name: op index}`` of subgraph 0."""
    from .capture import interpreter

    with open(model, "rb") as handle:
        it = interpreter(handle.read())   # no delegate: ops keep their indices in the file
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    out = {}
    for op in it._get_ops_details():
        for tensor in op["outputs"]:
            if tensor >= 0:
                out[names[int(tensor)]] = str(op["index"])
    return out
