"""Op families: the same operation under each framework's name (Linear, Dense, Gemm -> linear)."""
from __future__ import annotations

import functools
import re

FAMILIES = {
    # FullyConnected: hand-written NumPy libraries (numpy-ml), MXNet, Caffe's InnerProduct
    "linear": ("linear", "dense", "gemm", "matmul", "einsumdense", "lazylinear", "addmm", "mm", "bmm",
               "fullyconnected", "fc", "innerproduct", "affine", "linearlayer", "denselayer"),
    "conv": ("conv1d", "conv2d", "conv3d", "conv", "convolution", "conv1dtranspose", "conv2dtranspose",
             "convtranspose", "convtranspose1d", "convtranspose2d", "depthwiseconv2d", "separableconv2d",
             "convnd", "conv2dlayer", "deconvolution", "deconv2d", "convolution2d"),
    "relu": ("relu", "relu6", "leakyrelu", "prelu", "rectifiedlinear"),
    "gelu": ("gelu",),
    "sigmoid": ("sigmoid", "hardsigmoid"),
    "tanh": ("tanh",),
    "silu": ("silu", "swish"),
    "softmax": ("softmax", "logsoftmax"),
    "activation": ("activation",),
    "layernorm": ("layernorm", "layernormalization", "rmsnorm", "groupnorm", "groupnormalization",
                  "simplifiedlayernormalization"),
    "batchnorm": ("batchnorm1d", "batchnorm2d", "batchnorm3d", "batchnormalization", "batchnorm",
                  "syncbatchnorm", "frozenbatchnorm2d", "batchnormalizationv1", "fusedbatchnorm",
                  "fusedbatchnormv3", "batchnorm2dlayer"),
    "pool": ("maxpool1d", "maxpool2d", "maxpool", "maxpooling1d", "maxpooling2d", "avgpool1d", "avgpool2d",
             "averagepool", "averagepooling2d", "globalaveragepool", "globalaveragepooling2d",
             "adaptiveavgpool2d", "globalmaxpool", "globalmaxpooling2d"),
    "flatten": ("flatten", "reshape", "view"),
    "dropout": ("dropout", "identity"),
    "embedding": ("embedding", "gather"),
    "attention": ("multiheadattention", "attention", "scaleddotproductattention"),
    "add": ("add", "sum"),
    "mul": ("mul", "multiply"),
    "transpose": ("transpose", "permute"),
    "concat": ("concat", "concatenate", "cat"),
    "rnn": ("lstm", "gru", "rnn", "simplernn"),
}
_LOOKUP = {alias: family for family, aliases in FAMILIES.items() for alias in aliases}


# Families that say nothing about the operation (a Keras ``Activation`` may be any of them).
WILDCARDS = {"activation"}


def family(op_type) -> str:
    """The family of an op type, or the normalised op type itself; "" when unknown."""
    if not isinstance(op_type, str) or not op_type:
        return ""
    return _family(op_type)


@functools.lru_cache(maxsize=4096)
def _family(op_type: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", op_type.rsplit(".", 1)[-1].lower())
    key = re.sub(r"\d+$", "", key) if key not in _LOOKUP else key
    if key not in _LOOKUP and key.startswith("onnx") and key[4:] in _LOOKUP:
        key = key[4:]   # onnx2torch's modules: OnnxGemm, OnnxMatMul, OnnxBatchNorm...
    return _LOOKUP.get(key, key)
