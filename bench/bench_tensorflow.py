"""Recording overhead of the Keras adapter relative to a plain eager forward+backward under a
GradientTape, measured side by side (interleaved repeats, medians) on a small ResNet-style
Functional CNN on CPU.

    .venv/bin/python bench/bench_tensorflow.py [--repeats 7] [--batch 8]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from tracediff.adapters import tensorflow as tdtf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)  # the VM is shared: stable medians
tf.config.threading.set_inter_op_parallelism_threads(1)


def block(x, channels, stride, name):
    y = keras.layers.Conv2D(channels, 3, stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(channels, 3, 1, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != channels:
        x = keras.layers.Conv2D(channels, 1, stride, use_bias=False, name=f"{name}_down")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_down_bn")(x)
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([y, x]))


def small_resnet(classes=10):
    """ResNet-18 shape, narrow: stem + 3 stages x 2 blocks, 16/32/64 channels."""
    x = inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = keras.layers.ReLU(name="stem_relu")(keras.layers.BatchNormalization(name="stem_bn")(x))
    for stage, (channels, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
        x = block(x, channels, stride, f"s{stage}b0")
        x = block(x, channels, 1, f"s{stage}b1")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="fc")(x), name="small_resnet")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    model = small_resnet()
    x = np.random.default_rng(0).standard_normal((args.batch, 32, 32, 3)).astype(np.float32)
    labels = np.arange(args.batch) % 10

    def loss_fn(out):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, out, from_logits=True))

    def plain():
        with tf.GradientTape() as tape:
            loss = loss_fn(model(x, training=False))
        tape.gradient(loss, model.trainable_variables)

    folder = tempfile.mkdtemp()

    def recorded(values):
        def run():
            path = os.path.join(folder, f"trace_{values}.h5")
            tdtf.record(model, x, path, loss_fn=loss_fn, values=values, overwrite=True)
            return os.path.getsize(path)
        return run

    runs = {"plain forward+backward": plain, "record values=True": recorded(True),
            "record values=False": recorded(False)}
    for run in runs.values():   # warm-up: tracing, allocations
        run()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain forward+backward"])
    n_layers = len([layer for layer in model._flatten_layers()]) - 1
    print(f"small ResNet (Keras Functional, {n_layers} layers, "
          f"{model.count_params()} params), batch {args.batch}, 32x32x3, 1 thread, "
          f"median of {args.repeats}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:24s} {median * 1000:8.1f} ms   x{median / base:5.2f}")
    for values in (True, False):
        size = os.path.getsize(os.path.join(folder, f"trace_{values}.h5"))
        print(f"  trace size values={values}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
