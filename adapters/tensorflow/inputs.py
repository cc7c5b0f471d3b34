"""Checking a Keras model and its inputs before recording, with one-line errors."""
from __future__ import annotations

import re

import numpy as np

from ...errors import TraceDiffError


def check_model(model):
    if not _is_keras_layer(model):
        raise TraceDiffError(
            f"tensorflow.record needs a Keras model or layer, got {type(model).__name__}: "
            "pass a keras.Model (Functional, Sequential or subclassed)")
    if not model.built:
        raise TraceDiffError(
            f"Keras model '{model.name}' has never been built, so its weights do not exist yet: "
            "call model.build(input_shape) or run it once on sample inputs, load its weights, "
            "then record")


def _is_keras_layer(model) -> bool:
    return any(cls.__name__ == "Layer" and cls.__module__.startswith(("keras", "tf_keras"))
               for cls in type(model).__mro__)


def named_inputs(inputs) -> list:
    """(record name, value) per input: ``input``; ``input:0``, ``input:1``; ``input:<key>``."""
    if isinstance(inputs, dict):
        return [(f"input:{key}", value) for key, value in inputs.items()]
    if isinstance(inputs, (list, tuple)):
        return [(f"input:{i}", value) for i, value in enumerate(inputs)]
    return [("input", inputs)]


def shape_of(value) -> tuple:
    shape = getattr(value, "shape", None)
    if shape is None:
        shape = np.shape(value)
    return tuple(None if d is None else int(d) for d in shape)


def check_inputs(model, inputs):
    """Compare the inputs with the model's declared input shapes, where it declares them."""
    specs = _input_specs(model)
    if specs is None:
        return
    given = named_inputs(inputs)
    if isinstance(inputs, dict):
        by_name = dict(specs)
        unknown = [key for key in inputs if key not in by_name]
        if unknown:
            raise TraceDiffError(
                f"input {unknown[0]!r} is not an input of Keras model '{model.name}': "
                f"its inputs are {', '.join(repr(n) for n, _ in specs)}")
        pairs = [(f"input {key!r}", inputs[key], by_name[key]) for key in inputs]
    else:
        if len(given) != len(specs):
            raise TraceDiffError(
                f"Keras model '{model.name}' takes {len(specs)} input(s), got {len(given)}: "
                f"pass {'one array' if len(specs) == 1 else f'a list of {len(specs)} arrays'}")
        pairs = [(f"input {name!r}", value, spec) for (name, value), (_, spec) in zip(given, specs)]
    for label, value, expected in pairs:
        shape = shape_of(value)
        if len(shape) != len(expected) or any(
                e is not None and s != e for s, e in zip(shape, expected)):
            raise TraceDiffError(
                f"{label} has shape {_fmt(shape)} but Keras model '{model.name}' expects "
                f"{_fmt(expected)} (None: any size): pass inputs of that shape")


def _input_specs(model):
    """[(name, shape)] of a Functional/Sequential model's inputs; None when it declares none."""
    try:
        tensors = model.inputs
    except (AttributeError, ValueError):
        return None
    if not tensors:
        return None
    return [(getattr(t, "name", f"{i}"), tuple(t.shape)) for i, t in enumerate(tensors)]


def _fmt(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def forward_error(model, inputs, exc) -> TraceDiffError:
    """A one-line error for a forward pass that Keras or TensorFlow refused."""
    shapes = ", ".join(_fmt(shape_of(v)) for _, v in named_inputs(inputs))
    return TraceDiffError(
        f"running Keras model '{model.name}' on inputs of shape {shapes} failed: "
        f"{first_line(exc)}; pass inputs of the shape and dtype the model was built for")


def first_line(exc) -> str:
    """The informative line of a Keras/TensorFlow error message."""
    text = getattr(exc, "message", None) or str(exc)
    for line in text.splitlines():
        line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line).strip()
        if line and not line.startswith(("Exception encountered when calling", "Arguments received")):
            return line.rstrip(".") if len(line) < 400 else line[:400] + "..."
    return type(exc).__name__
