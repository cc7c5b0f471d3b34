"""A torch CNN with the sizes real models have (square images, 3x3 kernels, as many channels in
as out) and its channels-last Keras 3 port, weights copied; shared by the real-port tests."""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from tracediff.adapters import tensorflow as tdtf  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

N, C_IN, SIDE, C, HIDDEN, K = 2, 3, 6, 8, 16, 5
LABELS = np.array([1, 4])
CONVS = ("conv1", "conv2", "conv3")


def torch_loss(output):
    return torch.nn.functional.cross_entropy(output, torch.from_numpy(LABELS))


def keras_loss(output):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(LABELS, output, from_logits=True))


def torch_cnn(stride2=1):
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict(
        conv1=torch.nn.Conv2d(C_IN, C, 3, padding=1), relu1=torch.nn.ReLU(),
        conv2=torch.nn.Conv2d(C, C, 3, padding=1, stride=stride2), relu2=torch.nn.ReLU(),
        conv3=torch.nn.Conv2d(C, C, 3, padding=1), relu3=torch.nn.ReLU(),
        pool=torch.nn.MaxPool2d(2), flat=torch.nn.Flatten(),
        fc1=torch.nn.Linear(C * 9, HIDDEN), relu4=torch.nn.ReLU(),
        fc2=torch.nn.Linear(HIDDEN, K))).eval()


def numpy_of(t):
    return t.detach().numpy()


def keras_cnn(reference, *, perturb=None, names=True, residual=False, stride2=1, seed=0):
    """The channels-last port. ``perturb``: the layer whose weight is multiplied by
    (1 + 0.01 N(0, 1)); ``names=False`` keeps Keras' own layer names; ``residual`` adds
    relu1's output to conv2's through a Keras ``Add`` layer (the torch model has none: its
    conv2 then gets relu1's output added by the test's reference instead)."""
    def name(n):
        return n if names else None

    x = keras.Input((SIDE, SIDE, C_IN))
    h = keras.layers.ReLU(name=name("relu1"))(keras.layers.Conv2D(C, 3, padding="same", name=name("conv1"))(x))
    skip = h
    h = keras.layers.Conv2D(C, 3, padding="same", strides=stride2, name=name("conv2"))(h)
    if residual:
        h = keras.layers.Add()([h, skip])
    h = keras.layers.ReLU(name=name("relu2"))(h)
    h = keras.layers.ReLU(name=name("relu3"))(keras.layers.Conv2D(C, 3, padding="same", name=name("conv3"))(h))
    h = keras.layers.Flatten(name=name("flat"))(keras.layers.MaxPooling2D(2, name=name("pool"))(h))
    h = keras.layers.ReLU(name=name("relu4"))(keras.layers.Dense(HIDDEN, name=name("fc1"))(h))
    model = keras.Model(x, keras.layers.Dense(K, name=name("fc2"))(h))
    layers = [layer for layer in model.layers if layer.weights]
    noise = np.random.default_rng(seed)
    for layer, torch_name in zip(layers, (*CONVS, "fc1", "fc2")):
        module = getattr(reference, torch_name)
        weight = numpy_of(module.weight)
        if torch_name == perturb:
            weight = weight * (1 + 0.01 * noise.standard_normal(weight.shape)).astype(np.float32)
        if torch_name in CONVS:
            kernel = weight.transpose(2, 3, 1, 0)                        # OIHW -> HWIO
        elif torch_name == "fc1":   # rows in Keras' H, W, C flatten order
            kernel = weight.reshape(HIDDEN, C, 3, 3).transpose(2, 3, 1, 0).reshape(-1, HIDDEN)
        else:
            kernel = weight.T
        layer.set_weights([kernel, numpy_of(module.bias)])
    return model


class ResidualCNN(torch.nn.Module):
    """``torch_cnn`` with relu1's output added to conv2's in place (no module for the add), the
    skip passing through an Identity ``shortcut`` module (as a ResNet's downsample would)."""

    def __init__(self):
        super().__init__()
        for name, module in torch_cnn().named_children():
            self.add_module(name, module)
        self.shortcut = torch.nn.Identity()

    def forward(self, x):
        skip = self.relu1(self.conv1(x))
        h = self.conv2(skip)
        h += self.shortcut(skip)
        h = self.relu3(self.conv3(self.relu2(h)))
        return self.fc2(self.relu4(self.fc1(self.flat(self.pool(h)))))


def images():
    return np.random.default_rng(0).standard_normal((N, C_IN, SIDE, SIDE)).astype(np.float32)


def record_torch(model, path, x=None):
    x = images() if x is None else x
    tdt.record(model, torch.from_numpy(x), path, loss_fn=torch_loss, overwrite=True)
    return path


def record_keras(model, path, x_nhwc=None):
    x_nhwc = images().transpose(0, 2, 3, 1) if x_nhwc is None else x_nhwc
    tdtf.record(model, np.ascontiguousarray(x_nhwc), path, loss_fn=keras_loss, overwrite=True)
    return path
