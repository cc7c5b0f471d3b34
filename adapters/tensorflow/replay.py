"""Replay of a Keras model: every layer run on the reference's values of what it consumes.

One eager forward pass with each layer's ``call`` wrapped for the pass (per instance, as the
recording wraps them): a tensor argument that another layer returned in this pass is replaced
by the reference's value of the record it pairs with, so each layer computes its output from
the reference's inputs, its local result. Keras tensors are immutable, so an argument is always
the value its producer returned; a tensor made by an op between layers (a ``tf.`` function in a
subclassed model's ``call``) has no record and is computed from substituted values.
"""
from __future__ import annotations

from collections import defaultdict

import tensorflow as tf

from .capture import LayerCapture, structured


class _Substitution(LayerCapture):
    """The recording's per-instance ``call`` wrappers, substituting instead of capturing."""

    def __init__(self, model, reference, wanted):
        super().__init__(model)
        self.reference, self.wanted = reference, wanted
        self.produced = {}      # id(tensor) -> (kind, record name, call); ``alive`` pins the ids
        self.alive = []
        self.calls = defaultdict(int)
        self.local = {}

    def _substituted(self, t):
        source = self.produced.get(id(t)) if tf.is_tensor(t) else None
        if source is None:
            return t
        value = self.reference(*source)
        if value is None or tuple(value.shape) != tuple(t.shape):
            return t
        return tf.convert_to_tensor(value.astype(t.dtype.as_numpy_dtype))

    def _wrap(self, path, layer, original):
        def call(*args, **kwargs):
            if tf.executing_eagerly():
                args = tf.nest.map_structure(self._substituted, args)
                kwargs = tf.nest.map_structure(self._substituted, kwargs)
            outputs = original(*args, **kwargs)
            if tf.executing_eagerly():
                index = self.calls[path]
                self.calls[path] += 1
                for suffix, tensor in structured(outputs):
                    self.produced[id(tensor)] = ("forward", path + suffix, index)
                    self.alive.append(tensor)
                    if (path + suffix, index) in self.wanted and hasattr(tensor, "numpy"):
                        self.local[(path + suffix, index)] = tensor.numpy()
            return outputs

        call.__wrapped__ = original
        return call


def replay(model, inputs, reference, wanted):
    """``{(record name, call): local output}`` for the forward records in ``wanted``; see
    ``tracediff.adapters.torch.replay.replay`` for ``reference``."""
    with _Substitution(model, reference, wanted) as substitution:
        model(inputs, training=False)
    return substitution.local
