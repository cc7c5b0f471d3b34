"""What a Flax module tells the diff engine: activation layouts, parameter roles and layouts,
the settings a port must copy, and the JAX settings that change numerics (trace meta).

Flax is channels-last like Keras: ``Conv`` outputs are ``NHWC``, ``Dense`` kernels ``IO``,
``Conv`` kernels ``HWIO`` (docs/conventions.md). Only attributes are read here.
"""
from __future__ import annotations

import math

ROLES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "embedding",
         "mean": "running_mean", "var": "running_var", "weight": "weight"}

_CHANNELS_LAST = {3: "NLC", 4: "NHWC", 5: "NDHWC"}
_CONV_KERNEL = {3: "LIO", 4: "HWIO", 5: "DHWIO"}
_CONVS = {"Conv", "ConvTranspose", "ConvLocal"}
_NORMS = {"BatchNorm", "GroupNorm", "LayerNorm", "RMSNorm", "InstanceNorm"}
_DENSE = {"Dense", "Linear", "DenseGeneral", "LinearGeneral", "Einsum"}


def class_names(module) -> set:
    return {cls.__name__ for cls in type(module).__mro__}


def declared_layout(module, rank: int) -> str | None:
    """Channels-last for convolutions and for normalisations over the last axis."""
    names = class_names(module)
    if names & _CONVS:
        return _CHANNELS_LAST.get(rank)
    if names & {"BatchNorm", "GroupNorm"} and getattr(module, "axis", -1) in (-1, rank - 1):
        return _CHANNELS_LAST.get(rank)
    return None


def flatten_layout(input_layout: str | None, input_shape, output_shape) -> dict:
    """A rank-2 output holding a channels-last input's elements per batch row: ``N(HWC)`` and
    ``unflattened_shape``, so the diff engine undoes the order PyTorch's flatten differs by."""
    if not input_layout or len(input_shape) != len(input_layout) or len(output_shape) != 2:
        return {}
    if output_shape[0] != input_shape[0] or output_shape[1] != math.prod(input_shape[1:]):
        return {}
    return {"layout": f"{input_layout[0]}({input_layout[1:]})",
            "unflattened_shape": [int(d) for d in input_shape]}


def config_meta(module, call_kwargs=None) -> dict:
    """``eps`` of a normalisation; ``momentum`` of a BatchNorm in torch's convention (the weight
    of the new batch: Flax's 0.99 is recorded 0.01); ``training`` of a BatchNorm
    (``use_running_average``) or Dropout (``deterministic``), given as an attribute or, as
    Flax merges them, as an argument of the call (``call_kwargs``)."""
    call_kwargs = call_kwargs or {}
    meta = {}
    names = class_names(module)
    eps = getattr(module, "epsilon", None)
    if names & _NORMS and isinstance(eps, float):
        meta["eps"] = eps
    momentum = getattr(module, "momentum", None)
    if "BatchNorm" in names and isinstance(momentum, float):
        meta["momentum"] = round(1.0 - momentum, 12)
    for cls, flag in (("BatchNorm", "use_running_average"), ("Dropout", "deterministic")):
        value = call_kwargs.get(flag, getattr(module, flag, None))
        if cls in names and isinstance(value, bool):
            meta["training"] = not value
    return meta


def param_meta(module_path: str, attribute: str, value, owner=None, *, trainable=True) -> dict:
    """``module``, ``role``, ``layout`` (when it differs from torch's) and dtype of a parameter
    ``<module_path>.<attribute>``; ``owner`` is the Flax module holding it, when known."""
    meta = {"module": module_path, "role": ROLES.get(attribute, attribute),
            "requires_grad": bool(trainable), "framework_dtype": str(value.dtype)}
    if owner is not None:
        meta["op_type"] = type(owner).__name__
    layout = param_layout(owner, attribute, len(value.shape))
    if layout:
        meta["layout"] = layout
    return meta


def param_layout(owner, attribute: str, rank: int) -> str | None:
    if attribute != "kernel":
        return None
    names = class_names(owner) if owner is not None else set()
    if rank == 2 and (names & _DENSE or owner is None):
        return "IO"
    if names & _CONVS or owner is None:
        return _CONV_KERNEL.get(rank)
    return None


def trace_meta(jax) -> dict:
    """JAX settings a float64 or matmul-precision difference comes from: without x64 JAX
    silently makes float64 inputs float32; matmul precision ``default`` may use reduced
    precision passes on accelerators."""
    precision = jax.config.jax_default_matmul_precision
    return {"x64": bool(jax.config.jax_enable_x64),
            "default_matmul_precision": "default" if precision is None else str(precision),
            "backend": jax.default_backend()}
