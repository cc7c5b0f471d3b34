"""Record names and metadata of a LiteRT trace, from tensor names and the model's flatbuffer:
readable names for ``;``-joined tensor names, the Keras layer (``module``) a tensor belongs to,
op types, fused activations, layouts, parameter roles and quantization parameters."""
from __future__ import annotations

import re

# TFLite kernels' layouts: conv kernels OHWI, depthwise kernels 1HWC (docs/conventions.md)
_KERNEL_LAYOUTS = {"CONV_2D": {4: "OHWI"}, "DEPTHWISE_CONV_2D": {4: "1HWC"},
                   "TRANSPOSE_CONV": {4: "OHWI"}, "CONV_3D": {5: "DHWIO"},
                   "FULLY_CONNECTED": {2: "OI"}}
_ROLES = {"CONV_2D": {1: "weight", 2: "bias"}, "DEPTHWISE_CONV_2D": {1: "weight", 2: "bias"},
          "FULLY_CONNECTED": {1: "weight", 2: "bias"}, "TRANSPOSE_CONV": {1: "weight", 3: "bias"},
          "CONV_3D": {1: "weight", 2: "bias"}, "PRELU": {1: "weight"}}
_SPATIAL = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "MAX_POOL_2D", "AVERAGE_POOL_2D",
            "L2_POOL_2D", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"}
# ops that only change a tensor's representation: their output belongs to their input's layer
_PASS_THROUGH = {"QUANTIZE", "DEQUANTIZE"}
_KERAS_SUFFIX = re.compile(r"_\d+$")
# name scopes a TensorFlow op opens inside its layer's (tf.nn.batch_normalization's)
OP_SCOPES = {"batchnorm"}
_FOLDING_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "FULLY_CONNECTED"}


def folds_batchnorm(op_type, output_name) -> bool:
    """A convolution (or FULLY_CONNECTED) whose output the converter named after a BatchNorm's
    ``batchnorm`` ops: it folded that BatchNormalization into its weights and bias."""
    first = output_name.split(";", 1)[0].split("/")
    return op_type in _FOLDING_OPS and any(c in OP_SCOPES for c in first[:-1])


def readable_names(tensor_names) -> dict:
    """``{tensor index: record name}``. A fused op's tensor is named by the ``;``-joined
    locations of every op fused into it, its own (the last applied) first: the record is named
    by that first part (``functional_1/conv_1/Relu;functional_1/conv_1/convolution`` ->
    ``functional_1/conv_1/Relu``). Where two tensors would get the same name, the later keeps
    its whole tensor name (unique in the model)."""
    out, taken = {}, set()
    for index, full in tensor_names.items():
        name = full.split(";", 1)[0] or full
        if name in taken:
            name = full
        taken.add(name)
        out[index] = name
    return out


# the TensorFlow op a fused activation was (its location's last component)
_ACTIVATION_OPS = {"RELU": "Relu", "RELU6": "Relu6", "TANH": "Tanh", "RELU_N1_TO_1": "Relu1",
                   "SIGN_BIT": "Sign"}


def value_first(full, activation) -> str:
    """The ``;``-joined name of a tensor with a fused ``activation`` reordered so that the
    activation's location comes first: the tensor holds the activation's value. The converter
    lists a separate Keras ReLU layer after the op it fused into (``fc1_1/MatMul;act1_1/Relu;
    fc1_1/BiasAdd``), which would name the record, and its ``module``, after the Dense."""
    op = _ACTIVATION_OPS.get(activation)
    parts = full.split(";")
    own = [p for p in parts if op and p.rsplit("/", 1)[-1] == op]
    if not own or parts[0] == own[0]:
        return full
    return ";".join([own[0]] + [p for p in parts if p != own[0]])


def module_decoder(tensor_names):
    """A function tensor name -> Keras layer path (``conv``, ``inner/d2``) or None.

    The name scope of the first ``;`` part, less the model's own scope (the first component,
    common to every scoped name). Keras 3 models traced by the converter get ``_1`` on every
    scope (``functional_1/conv_1``): when the model's scope and every layer's scope end in
    ``_<n>``, that suffix is taken off every component that has one."""
    scopes = [name.split(";", 1)[0].split("/")[:-1] for name in tensor_names]
    scopes = [s for s in scopes if len(s) >= 2]
    roots = {s[0] for s in scopes}
    root = roots.pop() if len(roots) == 1 else None
    strip = bool(scopes) and all(_KERAS_SUFFIX.search(s[1]) for s in scopes) \
        and _KERAS_SUFFIX.search(scopes[0][0]) is not None

    def decode(name):
        scope = name.split(";", 1)[0].split("/")[:-1]
        if root is None or len(scope) < 2 or scope[0] != root:
            return None
        parts = scope[1:]
        if strip:
            parts = [_KERAS_SUFFIX.sub("", c) for c in parts]
        if len(parts) > 1 and parts[-1] in OP_SCOPES:
            parts = parts[:-1]          # bn/batchnorm/add_1 is the layer bn's
        return "/".join(parts)

    return decode


def quantization(details) -> dict:
    """``scale``, ``zero_point`` (lists when per axis, with ``quantized_dimension``) of a
    quantized tensor; {} for a float one."""
    params = details.get("quantization_parameters") or {}
    scales, zeros = list(params.get("scales", [])), list(params.get("zero_points", []))
    if not scales:
        return {}
    if len(scales) == 1:
        return {"scale": float(scales[0]), "zero_point": int(zeros[0]) if zeros else 0}
    return {"scale": [float(s) for s in scales], "zero_point": [int(z) for z in zeros],
            "quantized_dimension": int(params.get("quantized_dimension", 0))}


def activation_layout(op_type, rank):
    return "NHWC" if op_type in _SPATIAL and rank == 4 else None


def param_meta(consumers, rank) -> dict:
    """``role`` and ``layout`` of a constant from the ops reading it: ``[(op_type, position)]``."""
    meta = {}
    for op_type, position in consumers:
        role = _ROLES.get(op_type, {}).get(position)
        if role:
            meta["role"] = role
            if role == "weight" and rank in _KERNEL_LAYOUTS.get(op_type, {}):
                meta["layout"] = _KERNEL_LAYOUTS[op_type][rank]
            break
    return meta


def passes_through(op_type) -> bool:
    return op_type in _PASS_THROUGH


def fused_activations(model_bytes) -> dict:
    """``{operator index: fused activation name}`` of subgraph 0's operators that have one
    (``RELU``, ``RELU6``, ``NONE``...), read from the flatbuffer (the interpreter does not say)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    if model.SubgraphsLength() == 0:
        return {}
    options = {v: k for k, v in vars(schema.BuiltinOptions).items() if isinstance(v, int)}
    activations = {v: k for k, v in vars(schema.ActivationFunctionType).items()
                   if isinstance(v, int) and not k.startswith("_")}
    graph = model.Subgraphs(0)
    out = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        cls = getattr(schema, options.get(op.BuiltinOptionsType(), ""), None)
        table = op.BuiltinOptions()
        if cls is None or table is None or not hasattr(cls, "FusedActivationFunction"):
            continue
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        out[i] = activations.get(opts.FusedActivationFunction(), "NONE")
    return out
