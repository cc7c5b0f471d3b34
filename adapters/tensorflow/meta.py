"""What a Keras layer tells the diff engine: axis layouts of activations and roles of weights.

Keras is channels-last by default where PyTorch is channels-first; these layouts let the diff
engine compare an NHWC activation with an NCHW one (status ``layout``) instead of calling it a
divergence. Everything here reads layer attributes only; no framework is imported.
"""
from __future__ import annotations

# Canonical parameter roles (docs/conventions.md) by Keras weight name.
ROLES = {
    "kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
    "moving_mean": "running_mean", "moving_variance": "running_var",
    "recurrent_kernel": "recurrent_weight", "embeddings": "embedding",
    "depthwise_kernel": "weight", "pointwise_kernel": "weight",
}

# Activation layouts by tensor rank, for layers with a data_format.
_CHANNELS_LAST = {3: "NLC", 4: "NHWC", 5: "NDHWC"}
_CHANNELS_FIRST = {3: "NCL", 4: "NCHW", 5: "NCDHW"}

# Convolution kernels by rank: Keras stores the spatial axes first, then in, then out.
_CONV_KERNEL = {3: "LIO", 4: "HWIO", 5: "DHWIO"}
_CONV_TRANSPOSE_KERNEL = {3: "LOI", 4: "HWOI", 5: "DHWOI"}
_RECURRENT = ("SimpleRNNCell", "LSTMCell", "GRUCell", "SimpleRNN", "LSTM", "GRU")

# Layers that move axes around: their outputs do not inherit their input's layout.
_LAYOUT_BREAKERS = {"Reshape", "Permute", "RepeatVector", "Flatten", "GlobalAveragePooling1D",
                    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
                    "GlobalMaxPooling2D", "GlobalMaxPooling3D"}


def class_names(layer) -> set:
    return {cls.__name__ for cls in type(layer).__mro__}


def declared_layout(layer, rank: int) -> str | None:
    """The layout a layer itself declares for tensors of ``rank`` (its input and output)."""
    data_format = getattr(layer, "data_format", None)
    if data_format == "channels_last":
        return _CHANNELS_LAST.get(rank)
    if data_format == "channels_first":
        return _CHANNELS_FIRST.get(rank)
    axis = _channel_axis(layer)
    if axis is None or rank not in _CHANNELS_LAST:
        return None
    if axis in (-1, rank - 1):
        return _CHANNELS_LAST[rank]
    if axis == 1:
        return _CHANNELS_FIRST[rank]
    return None


def _channel_axis(layer):
    """The feature axis of batch and group normalisation (a single int), else None."""
    names = class_names(layer)
    if not names & {"BatchNormalization", "GroupNormalization"}:
        return None
    axis = getattr(layer, "axis", None)
    if isinstance(axis, (list, tuple)):
        axis = axis[0] if len(axis) == 1 else None
    return axis if isinstance(axis, int) else None


def breaks_layout(layer) -> bool:
    return bool(class_names(layer) & _LAYOUT_BREAKERS)


def flatten_layout(layer, input_layout: str | None, input_shape) -> dict:
    """Meta for a Flatten output: the axis order its elements come in, e.g. ``N(HWC)``.

    A channels-last Flatten emits (H, W, C) order where PyTorch's flatten emits (C, H, W): the
    same values, permuted. ``unflattened_shape`` lets the diff engine undo the permutation.
    """
    if not input_layout or input_shape is None or len(input_shape) != len(input_layout):
        return {}
    order, shape = input_layout, [int(d) for d in input_shape]
    if getattr(layer, "data_format", "channels_last") == "channels_first" and len(shape) > 2:
        # Keras moves axis 1 last before flattening (its "switch to channels-last").
        order = order[0] + order[2:] + order[1]
        shape = [shape[0], *shape[2:], shape[1]]
    return {"layout": f"{order[0]}({order[1:]})", "unflattened_shape": shape}


def param_layout(layer, weight_name: str, rank: int) -> str | None:
    """Axis layout of a weight that differs from PyTorch's (Dense ``IO`` vs Linear ``OI``)."""
    names = class_names(layer)
    if weight_name in ("kernel", "recurrent_kernel") and rank == 2 and (
            "Dense" in names or names & set(_RECURRENT)):
        return "IO"
    if weight_name == "kernel" and any(n.startswith("Conv") and "Transpose" in n for n in names):
        return _CONV_TRANSPOSE_KERNEL.get(rank)
    if weight_name == "kernel" and any(n.startswith("BaseConv") or n.startswith("Conv")
                                       for n in names):
        return _CONV_KERNEL.get(rank)
    return None


def weight_name(variable) -> str:
    """A weight's own name: ``kernel`` (Keras 3's ``variable.name``; tf-keras names it
    ``dense/kernel:0``, its layer's scope and an output index around it)."""
    name = variable.name
    if name.endswith(":0"):
        name = name[:-2]
    return name.rsplit("/", 1)[-1]


def param_meta(layer, path: str, variable) -> dict:
    name = weight_name(variable)
    rank = len(variable.shape)
    return {
        "role": ROLES.get(name), "layout": param_layout(layer, name, rank),
        "op_type": type(layer).__name__, "module": path,
        "trainable": bool(getattr(variable, "trainable", True)),
        "framework_dtype": str(getattr(variable, "dtype", "")),
    }


def config_meta(layer, input_shape=None) -> dict:
    """The settings a port must copy that the values alone do not name (docs/conventions.md):
    ``eps`` of a normalisation, ``momentum`` of a BatchNorm in torch's convention (the weight of
    the new batch: Keras' 0.99 is 0.01), ``pad`` (``[before, after]`` per spatial axis) of a
    ``"same"`` convolution or pooling, which pads more after than before when it must pad an odd
    amount (stride 2 on an even size)."""
    meta = {}
    epsilon = getattr(layer, "epsilon", None)
    if isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool):
        meta["eps"] = float(epsilon)
    momentum = getattr(layer, "momentum", None)
    if "BatchNormalization" in class_names(layer) and isinstance(momentum, (int, float)):
        meta["momentum"] = round(1.0 - float(momentum), 12)
    if getattr(layer, "padding", None) == "same" and input_shape is not None:
        pad = same_padding(layer, input_shape)
        if pad:
            meta["pad"] = pad
    return meta


def same_padding(layer, input_shape):
    """``[[before, after], ...]`` that TensorFlow's ``"same"`` padding adds on each spatial
    axis of an input of ``input_shape``, or None when the layer's geometry is unknown."""
    kernel = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    strides = getattr(layer, "strides", None)
    if not kernel or not strides:
        return None
    dilation = getattr(layer, "dilation_rate", None) or (1,) * len(kernel)
    spatial = list(input_shape)[1:-1] if getattr(layer, "data_format", "channels_last") != \
        "channels_first" else list(input_shape)[2:]
    if len(spatial) != len(kernel) or any(not isinstance(n, int) for n in spatial):
        return None
    out = []
    for n, k, s, d in zip(spatial, kernel, strides, dilation):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        out.append([total // 2, total - total // 2])
    return out
