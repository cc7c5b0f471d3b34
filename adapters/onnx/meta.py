"""Record names and per-record metadata of an ONNX trace: node output names, activation
layouts, parameter roles and layouts (the module paths are in ``origins``)."""
from __future__ import annotations

SPATIAL_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "MaxPool", "AveragePool",
               "GlobalAveragePool", "GlobalMaxPool", "InstanceNormalization", "LpPool"}
_RANK_LAYOUT = {3: "NCL", 4: "NCHW"}


def record_names(nodes, file_positions):
    """The record name of every node output: ``[(node_index, output_index, tensor, name)]``.

    A node without a name is called ``<op_type>_<its index in the file>``; a node with several
    outputs adds ``:<output index>``. Empty (omitted optional) outputs are left out.
    """
    out = []
    for index, node in enumerate(nodes):
        base = node.name or f"{node.op_type}_{file_positions[index]}"
        several = len(node.output) > 1
        for position, tensor in enumerate(node.output):
            if tensor:
                out.append((index, position, tensor, f"{base}:{position}" if several else base))
    return out


def output_layout(op_type, shape):
    if op_type in SPATIAL_OPS:
        return _RANK_LAYOUT.get(len(shape))
    return None


# The role of an op's parameter inputs, by input position, for initializers whose names say none
_INPUT_ROLES = {
    "Conv": {1: "weight", 2: "bias"}, "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "BatchNormalization": {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
    "LayerNormalization": {1: "weight", 2: "bias"}, "GroupNormalization": {1: "weight", 2: "bias"},
    "PRelu": {1: "weight"},
}


def param_meta(name, shape, consumers, owner=None):
    """``role``, ``layout`` and ``module`` of an initializer from its name and its consumers
    (``[(op_type, input position, node attributes dict)]``). ``owner``: the module (or record)
    of the node that reads it, the ``module`` of a parameter whose name says nothing of one."""
    meta = {}
    leaf = name.rsplit(".", 1)[-1]
    if "." in name and not name.startswith("onnx::"):
        meta["module"] = name.rsplit(".", 1)[0]
    elif owner:
        meta["module"] = owner
        leaf = ""
        for op_type, position, _ in consumers:
            leaf = leaf or _INPUT_ROLES.get(op_type, {}).get(position, "")
    if leaf in ("running_mean", "running_var", "bias"):
        meta["role"] = leaf
    elif leaf.startswith("weight_hh"):
        meta["role"] = "recurrent_weight"
    elif leaf.endswith("weight"):
        meta["role"] = "weight"
    for op_type, position, attrs in consumers:
        if op_type == "Gather" and position == 0:
            meta["role"] = "embedding"
        elif op_type in ("Conv", "ConvTranspose") and position == 1 and len(shape) == 4:
            meta["layout"] = "OIHW"
        elif op_type == "Gemm" and position == 1 and len(shape) == 2:
            meta["layout"] = "OI" if attrs.get("transB", 0) else "IO"
        elif op_type == "MatMul" and position == 1 and len(shape) == 2:
            meta["layout"] = "IO"
    return meta


def parameter_aliases(graph, float_types):
    """``{alias: initializer}`` for the Identity outputs of float initializers that are named
    like a parameter path. The legacy torch exporter stores parameters with equal values once
    (a fresh LayerNorm's ones, a BatchNorm's zeros) and names the others through Identity nodes
    (``layer.norm2.weight``, not ``/x/Identity_output_0``): each is a parameter of torch's."""
    floats = {t.name for t in graph.initializer if t.data_type in float_types}
    return {node.output[0]: node.input[0] for node in graph.node
            if node.op_type == "Identity" and node.input and node.input[0] in floats
            and _parameter_like(node.output[0])}


def _parameter_like(name):
    return "." in name and not name.startswith(("/", "onnx::")) and " " not in name
