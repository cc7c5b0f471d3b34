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


def resnet50_with_weights(seed=0, image=64, batch=1):
    """onnx's ResNet-50 with its ``ConstantOfShape`` weights replaced by random initializers
    (He-scaled kernels, BatchNorm statistics near the identity), taking ``batch`` images of
    ``image`` x ``image`` pixels (the final average pool shrunk to the last map, the flatten's
    fixed batch of 1 set to ``batch``), as ``onnx.ModelProto``."""
    import onnx
    from onnx import numpy_helper

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
    reshaped = {node.input[1] for node in graph.node if node.op_type == "Reshape"}
    for t in graph.initializer:
        if t.name in reshaped:
            shape = numpy_helper.to_array(t).copy()
            shape[0] = batch
            t.CopyFrom(numpy_helper.from_array(shape, t.name))
    used = {t for node in graph.node for t in node.input}
    kept = [t for t in graph.initializer if t.name in used and t.name not in weights]
    del graph.initializer[:]
    graph.initializer.extend(kept + [numpy_helper.from_array(w, name) for name, w in weights.items()])
    inputs = [i for i in graph.input if i.name not in weights and i.name not in shapes]
    data = inputs[0]
    data.type.tensor_type.shape.dim[0].dim_value = batch
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


def resnet18(width=8, classes=10):
    """ResNet-18's structure (torchvision's BasicBlock layout and module names) from torch.nn,
    ``width`` channels in the first stage, BatchNorm statistics and affine set away from the
    identity (a fresh BatchNorm would hide a port that skips it), in eval mode."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += x if self.downsample is None else self.downsample(x)
            return self.relu(out)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = width
            for stage in range(4):
                cout = width * 2 ** stage
                setattr(self, f"layer{stage + 1}", nn.Sequential(
                    BasicBlock(cin, cout, 1 if stage == 0 else 2), BasicBlock(cout, cout, 1)))
                cin = cout
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(0)
    model = ResNet18().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model
