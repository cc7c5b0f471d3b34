"""Record metadata for torch tensors, following docs/conventions.md: op_type, module, training,
layout, role, framework_dtype, device."""
from __future__ import annotations

import functools

import torch
from torch import nn

# Modules whose activations are channels-first: (N, C, spatial...).
_CHANNELS_FIRST = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d,
)
_ACTIVATION_LAYOUT = {3: "NCL", 4: "NCHW", 5: "NCDHW"}
_CONV_WEIGHT_LAYOUT = {3: "OIL", 4: "OIHW", 5: "OIDHW"}
_CONV_TRANSPOSE_WEIGHT_LAYOUT = {3: "IOL", 4: "IOHW", 5: "IODHW"}
_ROLES = {"weight": "weight", "bias": "bias", "running_mean": "running_mean",
          "running_var": "running_var"}


def tensor_meta(t: torch.Tensor) -> dict:
    return {"framework_dtype": _dtype_name(t.dtype), "device": "cpu" if t.is_cpu else str(t.device)}


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype)


def activation_layout(module: nn.Module, t: torch.Tensor):
    """NCL/NCHW/NCDHW for convolution, normalisation and pooling outputs; None otherwise."""
    if isinstance(module, _CHANNELS_FIRST):
        return _ACTIVATION_LAYOUT.get(t.dim())
    return None


def module_meta(module: nn.Module, path: str, t: torch.Tensor) -> dict:
    meta = {"op_type": type(module).__name__, "module": path, "training": bool(module.training)}
    layout = activation_layout(module, t)
    if layout:
        meta["layout"] = layout
    meta.update(config_meta(module))
    meta.update(tensor_meta(t))
    return meta


# Hugging Face's (and timm's) tanh-approximated GELU modules, by class name
_TANH_GELUS = ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation",
               "GELUTanhActivation", "QuickGELUActivation")
_PADDED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
           nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


def config_meta(module: nn.Module) -> dict:
    """The settings a port must copy that the values alone do not name (docs/conventions.md):
    ``eps`` of a normalisation, ``momentum`` of a BatchNorm, ``approximate`` of a GELU
    (``"none"`` or ``"tanh"``), ``pad`` (``[before, after]`` per spatial axis) of a convolution
    or pooling."""
    meta = {}
    eps = getattr(module, "eps", None)
    if eps is None:
        eps = getattr(module, "variance_epsilon", None)   # Hugging Face's RMSNorm / LayerNorm
    if isinstance(eps, float):
        meta["eps"] = eps
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and isinstance(module.momentum, float):
        meta["momentum"] = module.momentum
    if isinstance(module, nn.GELU):
        meta["approximate"] = module.approximate
    elif type(module).__name__ in _TANH_GELUS:
        meta["approximate"] = "tanh"
    elif type(module).__name__ == "GELUActivation":
        meta["approximate"] = "none"
    if isinstance(module, _PADDED):
        pad = _padding(module)
        if pad:
            meta["pad"] = pad
    return meta


def _padding(module):
    kernel = module.kernel_size
    rank = len(kernel) if isinstance(kernel, tuple) else int(type(module).__name__[-2])
    kernel = kernel if isinstance(kernel, tuple) else (kernel,) * rank
    padding = module.padding
    if padding == "valid":
        return [[0, 0]] * rank
    if padding == "same":   # torch pads the odd element after, as TensorFlow does
        dilation = getattr(module, "dilation", (1,) * rank)
        dilation = dilation if isinstance(dilation, tuple) else (dilation,) * rank
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [[t // 2, t - t // 2] for t in totals]
    padding = padding if isinstance(padding, tuple) else (padding,) * rank
    if len(padding) != rank or not all(isinstance(p, int) for p in padding):
        return None
    return [[p, p] for p in padding]


def parameter_meta(module: nn.Module, module_path: str, attribute: str, t: torch.Tensor) -> dict:
    """role (weight, bias, running_mean, running_var, recurrent_weight, embedding) and layout."""
    meta = {"op_type": type(module).__name__, "module": module_path, "training": bool(module.training),
            "role": parameter_role(module, attribute), "requires_grad": bool(t.requires_grad)}
    layout = parameter_layout(module, attribute, t)
    if layout:
        meta["layout"] = layout
    meta.update(tensor_meta(t))
    return meta


def parameter_role(module: nn.Module, attribute: str) -> str:
    """``weight_hh_l0`` -> recurrent_weight; ``weight``, ``weight_ih_l0``, ``in_proj_weight`` ->
    weight (embedding for Embedding); ``bias*`` -> bias; other buffers keep their name."""
    if attribute.startswith("weight_hh"):
        return "recurrent_weight"
    if attribute in _ROLES:
        role = _ROLES[attribute]
        if role == "weight" and isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            return "embedding"
        return role
    if attribute.startswith("weight") or attribute.endswith("weight"):
        return "weight"
    if attribute.startswith("bias") or attribute.endswith("bias"):
        return "bias"
    return attribute


def parameter_layout(module: nn.Module, attribute: str, t: torch.Tensor):
    if attribute != "weight":
        return None
    if isinstance(module, nn.Linear):
        return "OI"
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return _CONV_TRANSPOSE_WEIGHT_LAYOUT.get(t.dim())
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return _CONV_WEIGHT_LAYOUT.get(t.dim())
    if type(module).__name__ == "Conv1D" and t.dim() == 2:
        return "IO"  # Hugging Face's GPT-2 Conv1D stores its weight transposed: (in, out)
    return None


AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_meta(device_type: str) -> dict:
    """``{"autocast": {device type: dtype}}`` for the device types where autocast is on (the
    record's own device type included); ``{}`` when it is off everywhere."""
    on = {}
    for device in dict.fromkeys((*AUTOCAST_DEVICES, device_type)):
        try:
            if torch.is_autocast_enabled(device):
                on[device] = _dtype_name(torch.get_autocast_dtype(device)).replace("torch.", "")
        except (RuntimeError, ValueError):   # a device type this build does not know
            continue
    return {"autocast": on} if on else {}


def matmul_precision_meta() -> dict:
    """The float32 matmul settings in force (run meta): TF32 on CUDA, and
    ``torch.get_float32_matmul_precision()`` (``high``: TF32, ``medium``: bfloat16 allowed)."""
    return {"float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}
