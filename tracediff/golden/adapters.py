"""Which adapter records a model handed to ``golden_trace.check``, and the recording itself.

The model's type decides (``tracediff.adapters.base.framework_of``, which imports no framework).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from ..adapters.base import ONNX_LOSSES, framework_of as adapter_for
from ..errors import TraceDiffError


def framework_of(model) -> str:
    """``torch``, ``tensorflow``, ``jax``, ``onnx``, ``litert`` or ``numpy``; one clear refusal
    otherwise."""
    framework = adapter_for(model)
    if framework is not None:
        return framework
    if isinstance(model, (str, os.PathLike)):
        raise TraceDiffError(
            f"golden_trace.check: model path {os.fspath(model)!r} is not an .onnx file; give an "
            ".onnx path, an onnx.ModelProto, a torch.nn.Module, a Keras model or a NumPy function")
    raise TraceDiffError(
        f"golden_trace.check: cannot record a {type(model).__name__}; give a torch.nn.Module, a "
        "Keras model, an .onnx path or onnx.ModelProto, or a function fn(rec, inputs)")


def record(model, inputs, path, *, loss_fn=None, values=True, options=None) -> str:
    """Record one run of ``model`` on ``inputs`` into ``path``; returns the framework used.

    ``options`` go to the adapter's ``record`` as they are (``level=`` for torch, ...).
    """
    framework = framework_of(model)
    options = dict(options or {})
    if framework == "torch":
        from ..adapters import torch as adapter
        with _gradients_set_aside(model):
            adapter.record(model, inputs, path, loss_fn=loss_fn, values=values, **options)
    elif framework == "tensorflow":
        from ..adapters import tensorflow as adapter
        adapter.record(model, inputs, path, loss_fn=loss_fn, values=values, **options)
    elif framework == "jax":
        from ..adapters import jax as adapter
        adapter.record(model, inputs, path, loss_fn=loss_fn, values=values, **options)
    elif framework == "onnx":
        loss, target = _onnx_loss(loss_fn)
        from ..adapters import onnx as adapter
        if loss is not None:
            options.setdefault("loss", loss)
            options.setdefault("target", target)
        adapter.record(model, inputs, path, values=values, **options)
    elif framework == "litert":
        if loss_fn is not None:
            raise TraceDiffError("golden_trace.check: a .tflite model records forward only: "
                                 "drop loss_fn")
        from ..adapters import litert as adapter
        adapter.record(model, inputs, path, values=values, **options)
    else:
        if loss_fn is not None:
            raise TraceDiffError(
                "golden_trace.check: loss_fn does not apply to a NumPy function; record the loss "
                "and gradients inside fn(rec, inputs) with rec.loss and rec.backward")
        from ..adapters import numpy as adapter
        adapter.record(model, inputs, path, values=values, **options)
    return framework


@contextmanager
def _gradients_set_aside(model):
    """A check leaves the model's ``.grad`` as it found them (the adapter itself, like a plain
    backward, would add this run's gradients into them)."""
    params = list(model.parameters())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad


def _onnx_loss(loss_fn):
    """An ONNX model names its loss: ``"sum"``, or ``("cross_entropy" | "mse", target)``."""
    if loss_fn is None:
        return None, None
    if isinstance(loss_fn, str):
        return loss_fn, None
    if isinstance(loss_fn, tuple) and len(loss_fn) == 2 and isinstance(loss_fn[0], str):
        return loss_fn
    raise TraceDiffError(
        "golden_trace.check: an ONNX model takes loss_fn as a loss name ('sum') or a pair "
        f"(name, target) with name one of {', '.join(ONNX_LOSSES)}, not a "
        f"{type(loss_fn).__name__}")
