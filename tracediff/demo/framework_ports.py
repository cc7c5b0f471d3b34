"""The demo's ports in other runtimes, each recorded through its own adapter against the same
references as the NumPy ports: a Flax (Linen) port of the CNN, channels-last as Flax is, and a
Keras MLP converted to LiteRT (TFLite) by TFLiteConverter. Each plants the mistake typical of
its runtime. Imported only when the demo runs them (``--ports jax,litert``): JAX and TensorFlow
take seconds to import."""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np

from .numpy_nets import DIMS

# port -> (net, planted bug id, what it does, the record the diff names)
BUGS = {
    "jax": ("cnn", "flatten_kernel_not_reordered",
            "fc kernel copied as W.T, not reordered for Flax's channels-last (H, W, C) flatten",
            "fc"),
    "litert": ("mlp", "converted_without_bias",
               "fc2 converted without its bias (Dense use_bias=False)", "act2"),
}


def available(port: str) -> bool:
    import importlib.util
    needs = {"jax": ("jax", "flax"), "litert": ("tensorflow", "ai_edge_litert")}[port]
    return all(importlib.util.find_spec(name) is not None for name in needs)


def record_reference(model, net: str, x, y, path: str) -> None:
    """The torch reference through the torch adapter, which declares the activations' and
    weights' layouts (NCHW, OIHW) that a channels-last port is compared through."""
    import torch

    from ..adapters import torch as tdt

    def loss(logits):
        return torch.nn.functional.cross_entropy(logits, torch.as_tensor(y))

    tdt.record(model.train(), torch.as_tensor(x), path, loss_fn=loss, dims=DIMS[net],
               model_name=f"{net} reference", overwrite=True)


def record(port: str, state: dict, x, y, path: str, planted: bool) -> None:
    """Record the ``port`` (``jax`` or ``litert``) built from the reference's float64 ``state``
    (torch names and layouts) on ``x`` into ``path``, with its bug when ``planted``."""
    {"jax": _record_flax_cnn, "litert": _record_litert_mlp}[port](state, x, y, path, planted)


def _record_flax_cnn(state, x, y, path, planted):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from ..adapters import jax as tdj

    d = DIMS["cnn"]

    class Act(nn.Module):
        def __call__(self, h):
            return jax.nn.relu(h)

    class Pool(nn.Module):
        def __call__(self, h):
            return nn.max_pool(h, (2, 2), strides=(2, 2))

    class Flatten(nn.Module):
        def __call__(self, h):
            return h.reshape(h.shape[0], -1)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, h):
            h = Pool(name="pool1")(Act(name="act1")(nn.Conv(d["filters"], (3, 3), padding=1,
                                                            name="conv1")(h)))
            h = Act(name="act2")(nn.Conv(d["filters2"], (3, 3), padding=1, name="conv2")(h))
            return nn.Dense(d["classes"], name="fc")(Flatten(name="flatten")(h))

    def conv(name):      # torch OIHW -> Flax HWIO
        return {"kernel": state[f"{name}.weight"].transpose(2, 3, 1, 0).astype(np.float32),
                "bias": state[f"{name}.bias"].astype(np.float32)}

    weight = state["fc.weight"].astype(np.float32)
    kernel = weight.T if planted else weight.reshape(
        d["classes"], d["filters2"], d["pooled_h"], d["pooled_w"]).transpose(2, 3, 1, 0).reshape(
        -1, d["classes"])
    params = {"conv1": conv("conv1"), "conv2": conv("conv2"),
              "fc": {"kernel": kernel, "bias": state["fc.bias"].astype(np.float32)}}

    def loss(logits):
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(log_probs, jnp.asarray(y)[:, None], axis=-1).mean()

    tdj.record(CNN(), np.ascontiguousarray(x.transpose(0, 2, 3, 1)), path, params=params,
               loss_fn=loss, dims=DIMS["cnn"], model_name="cnn flax port", overwrite=True)


def _record_litert_mlp(state, x, y, path, planted):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from ..adapters import litert as tdl

    d = DIMS["mlp"]
    inp = keras.Input((d["features"],), name="x")
    h = keras.layers.ReLU(name="act1")(keras.layers.Dense(d["hidden"], name="fc1")(inp))
    h = keras.layers.ReLU(name="act2")(
        keras.layers.Dense(d["hidden2"], use_bias=not planted, name="fc2")(h))
    model = keras.Model(inp, keras.layers.Dense(d["classes"], name="fc3")(h), name="mlp")
    for name in ("fc1", "fc2", "fc3"):     # torch [out, in] -> Keras [in, out]
        weights = [state[f"{name}.weight"].T.astype(np.float32)]
        if model.get_layer(name).use_bias:
            weights.append(state[f"{name}.bias"].astype(np.float32))
        model.get_layer(name).set_weights(weights)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    tflite = path[:-len(".h5")] + ".tflite" if path.endswith(".h5") else path + ".tflite"
    with contextlib.redirect_stdout(io.StringIO()):       # the export's "Saved artifact at"
        converted = converter.convert()
    with open(tflite, "wb") as handle:
        handle.write(converted)
    tdl.record(tflite, {"x": x}, path, overwrite=True)
