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


_NORMS = ("BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization")
_PADDED = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")


def node_settings(node) -> dict:
    """The settings a port must copy, in the units the torch and Keras adapters record
    (docs/conventions.md): ``eps`` of a normalisation, ``momentum`` of a BatchNormalization in
    torch's convention (ONNX's 0.9 is 0.1), ``training`` of a BatchNormalization or Dropout,
    ``pad`` (``[begin, end]`` per spatial axis) of an explicitly padded convolution or pooling."""
    attrs = {a.name: a for a in node.attribute}
    meta = {}
    if node.op_type in _NORMS:
        eps = attrs["epsilon"].f if "epsilon" in attrs else 1e-5
        meta["eps"] = float(f"{eps:.7g}")              # a float32 attribute: 1e-5 is 9.99999975e-06
    if node.op_type == "BatchNormalization":
        momentum = attrs["momentum"].f if "momentum" in attrs else 0.9
        meta["momentum"] = float(f"{1 - momentum:.7g}")
        # training_mode (opset 14+), else the running statistics among the outputs (opset < 14)
        meta["training"] = bool(attrs["training_mode"].i) if "training_mode" in attrs else \
            sum(1 for t in node.output if t) > 1
    if node.op_type == "Dropout" and len(node.input) < 3:
        meta["training"] = False          # no training_mode input: an inference Dropout
    if node.op_type in _PADDED:
        auto = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        pads = list(attrs["pads"].ints) if "pads" in attrs else None
        rank = len(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else \
            (len(pads) // 2 if pads else 0)
        if auto in ("NOTSET", "VALID") and rank:
            pads = pads if pads and auto == "NOTSET" else [0] * (2 * rank)
            meta["pad"] = [[pads[k], pads[k + rank]] for k in range(rank)]
    return meta


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
