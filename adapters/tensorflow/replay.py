"""Replay of a Keras model: every layer run on the reference's values of what it consumes.

One eager forward pass with each layer's ``call`` wrapped for the pass (per instance, as the
recording wraps them): a tensor argument that another layer returned in this pass is replaced
by the reference's value of the record it pairs with, so each layer computes its output from
the reference's inputs, its local result; and the layer hands on the reference's value of its
output, not its local result. Keras tensors are immutable, so an argument is always the value
its producer returned; a tensor made by an op between layers (a ``tf.`` function in a
subclassed model's ``call``) has no record and is computed from the reference's values.

Backward (``backward``, a ``tracediff.replays.backward.LocalBackward``): the pass runs under one
persistent ``tf.GradientTape`` watching every substituted tensor, and each layer call's
outputs are differentiated, with the reference's dL/d(output) as output gradients, with
respect to its substituted arguments and its own trainable weights.
"""
from __future__ import annotations

from collections import defaultdict

import tensorflow as tf

from .capture import LayerCapture, own_variables, structured
from .record import _weights


class _Substitution(LayerCapture):
    """The recording's per-instance ``call`` wrappers, substituting instead of capturing."""

    def __init__(self, model, reference, wanted, tape=None):
        super().__init__(model)
        self.reference, self.wanted = reference, wanted
        self.produced = {}      # id(tensor) -> (kind, record name, call); ``alive`` pins the ids
        self.given = {}         # id(substituted tensor) -> the record it holds the value of
        self.alive = []
        self.calls = defaultdict(int)
        self.local = {}
        self.tape = tape
        self.layer_calls = []   # (path, layer, call, [(argument, record or None)], outputs)

    def _substituted(self, t):
        source = self.produced.get(id(t)) if tf.is_tensor(t) else None
        if source is None:
            return t
        value = self.reference(*source)
        if value is None or tuple(value.shape) != tuple(t.shape):
            return t
        value = tf.convert_to_tensor(value.astype(t.dtype.as_numpy_dtype))
        if self.tape is not None and value.dtype.is_floating:
            self.tape.watch(value)
            self.given[id(value)] = source
            self.alive.append(value)
        return value

    def _handed_on(self, t):
        """What the layer's caller gets instead of its output ``t``: the reference's value of
        the record ``t`` holds, so that ops between layers (a ``tf.`` function in a subclassed
        model's ``call``) compute from the reference's values too, and a wrong layer's output
        reaches no other layer's inputs."""
        value = self._substituted(t)
        if value is not t:
            self.produced[id(value)] = self.produced[id(t)]
            self.alive.append(value)
        return value

    def _wrap(self, path, layer, original):
        def call(*args, **kwargs):
            if tf.executing_eagerly():
                args = tf.nest.map_structure(self._substituted, args)
                kwargs = tf.nest.map_structure(self._substituted, kwargs)
            outputs = original(*args, **kwargs)
            if tf.executing_eagerly():
                index = self.calls[path]
                self.calls[path] += 1
                named = []
                for suffix, tensor in structured(outputs):
                    self.produced[id(tensor)] = ("forward", path + suffix, index)
                    self.alive.append(tensor)
                    named.append((path + suffix, tensor))
                    if (path + suffix, index) in self.wanted and hasattr(tensor, "numpy"):
                        self.local[(path + suffix, index)] = tensor.numpy()
                if self.tape is not None:
                    arguments = [(t, self.given.get(id(t))) for t in tf.nest.flatten((args, kwargs))
                                 if tf.is_tensor(t) and t.dtype.is_floating]
                    self.layer_calls.append((path, layer, index, arguments, named))
                outputs = tf.nest.map_structure(self._handed_on, outputs)
            return outputs

        call.__wrapped__ = original
        return call


def replay(model, inputs, reference, wanted, backward=None):
    """``{(record name, call): local output}`` for the forward records in ``wanted``; see
    ``tracediff.adapters.torch.replay.replay`` for ``reference``. With ``backward`` (a
    ``LocalBackward``), it receives each layer call's parameter gradients and its contributions
    to dL/d of the records it consumed."""
    if backward is None:
        with _Substitution(model, reference, wanted) as substitution:
            model(inputs, training=False)
        return substitution.local
    with tf.GradientTape(persistent=True) as tape:
        with _Substitution(model, reference, wanted, tape) as substitution:
            model(inputs, training=False)
    names = {id(variable): name for name, _, _, variable in _weights(substitution)}
    for path, layer, call, arguments, named in substitution.layer_calls:
        _differentiate(tape, path, layer, call, arguments, named, reference, names, backward)
    return substitution.local


def _differentiate(tape, path, layer, call, arguments, named, reference, names, backward):
    """One layer call's VJP with the reference's dL/d(its outputs): its weights' gradients and
    its contributions to the records it was given."""
    outputs = [(name, t) for name, t in named if t.dtype.is_floating]
    seeds = [reference("backward", name, call) for name, _ in outputs]
    if not outputs or any(s is None or tuple(s.shape) != tuple(t.shape)
                          for s, (_, t) in zip(seeds, outputs)):
        return
    variables = [v for v in own_variables(layer) if v.trainable and id(v) in names]
    sources = variables + [t for t, _ in arguments]
    found = tape.gradient([t for _, t in outputs], sources,
                          output_gradients=[tf.convert_to_tensor(s.astype(t.dtype.as_numpy_dtype))
                                            for s, (_, t) in zip(seeds, outputs)],
                          unconnected_gradients=tf.UnconnectedGradients.NONE)
    for variable, grad in zip(variables, found):
        if grad is not None:
            backward.param(names[id(variable)], tf.convert_to_tensor(grad).numpy())
    for (_, source), grad in zip(arguments, found[len(variables):]):
        if source is not None and grad is not None:
            backward.contribute(path, call, source, tf.convert_to_tensor(grad).numpy())
    if all(source is not None for _, source in arguments):
        backward.complete.add((path, call))
