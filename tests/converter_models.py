"""Real models for the converter tests: the ResNet-50 that onnx's backend test data ships (a
Caffe2 export whose weights are ``ConstantOfShape`` placeholders), given random weights."""
from __future__ import annotations

import os

import numpy as np

RESNET50 = os.path.join("backend", "test", "data", "light", "light_resnet50.onnx")


def resnet50_path():
    """The path of onnx's light ResNet-50, or None when the installed onnx does not ship it."""
    import onnx

    path = os.path.join(os.path.dirname(onnx.__file__), RESNET50)
    return path if os.path.exists(path) else None


def resnet50_with_weights(seed=0, image=64):
    """onnx's ResNet-50 with its ``ConstantOfShape`` weights replaced by random initializers
    (He-scaled kernels, BatchNorm statistics near the identity), taking ``image`` x ``image``
    inputs (the final average pool shrunk to the last map), as ``onnx.ModelProto``."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(resnet50_path())
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(seed)
    weights, keep = {}, []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            name = node.output[0]
            weights[name] = _random_weight(name, tuple(int(d) for d in shapes[node.input[0]]), rng)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    for node in graph.node:
        if node.op_type == "AveragePool":
            side = image // 32
            for attr in node.attribute:
                if attr.name == "kernel_shape":
                    attr.ints[:] = [side, side]
    used = {t for node in graph.node for t in node.input}
    kept = [t for t in graph.initializer if t.name in used and t.name not in weights]
    del graph.initializer[:]
    graph.initializer.extend(kept + [numpy_helper.from_array(w, name) for name, w in weights.items()])
    inputs = [i for i in graph.input if i.name not in weights and i.name not in shapes]
    data = inputs[0]
    data.type.tensor_type.shape.dim[2].dim_value = image
    data.type.tensor_type.shape.dim[3].dim_value = image
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]
    model.ir_version = max(model.ir_version, 4)   # initializers need not be graph inputs
    onnx.checker.check_model(model)
    return model


def _random_weight(name, shape, rng):
    leaf = name.rsplit("_", 2)[-2]      # gpu_0/res2_0_branch2a_bn_riv_0 -> riv
    if leaf == "w":
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if leaf in ("s",):
        return rng.uniform(0.5, 1.0, shape).astype(np.float32)
    if leaf == "riv":
        return rng.uniform(0.8, 1.5, shape).astype(np.float32)
    return (0.05 * rng.standard_normal(shape)).astype(np.float32)   # biases, running means
