"""Record one small Keras model, in a subprocess so that Keras 2 (tf-keras, selected by
TF_USE_LEGACY_KERAS=1 before TensorFlow is imported) never reaches the test process.

usage: keras_side.py OUT.h5    (the caller sets TF_USE_LEGACY_KERAS or not)
Prints one JSON line: the Keras module that built the model.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(keras):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.Dense(5, name="fc")(x)
    return keras.Model(inputs, x, name="small")


def main(out):
    import numpy as np
    import tensorflow as tf

    from tracediff.adapters import tensorflow as tdtf

    tf.keras.utils.set_random_seed(0)
    model = build(tf.keras)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    tdtf.record(model, x, out)
    print(json.dumps({"keras": type(model).__module__}))


if __name__ == "__main__":
    main(sys.argv[1])
