"""TensorFlow / Keras adapter: every layer's output, dL/d output and weights of one Keras run.

``record(model, inputs, path, loss_fn=None)`` runs a Keras 3 model (Functional, Sequential,
nested or subclassed) once under a ``tf.GradientTape`` and writes, in this order: the inputs,
each layer's forward output in execution order (named by layer path, ``<root>`` for the model's
own output), the loss, dL/d(each layer output) from the loss towards the input, then each weight
``<layer path>/<weight>`` with its gradient. See docs/tensorflow.md.
"""
from __future__ import annotations

import contextlib
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's C++ start-up messages

import tensorflow as tf  # noqa: E402

from ...errors import TraceDiffError  # noqa: E402
from ...recorder import Recorder  # noqa: E402
from . import meta as tfmeta  # noqa: E402
from .capture import ROOT, LayerCapture, own_variables, selected  # noqa: E402
from .meta import weight_name  # noqa: E402
from .inputs import check_inputs, check_model, forward_error, named_inputs  # noqa: E402

__all__ = ["record"]


def record(model, inputs, path, loss_fn=None, *, values=True, overwrite=False, dims=None,
           seed=None, model_name=None, include=None, exclude=None, training=False):
    """Record one run of ``model`` on ``inputs`` into the trace ``path``; return the output.

    ``loss_fn(output) -> scalar`` (closing over the labels) adds the loss, backward records and
    parameter gradients; without it only inputs, forward records and weights are written.
    ``include``/``exclude`` are glob patterns on record names (``"inner/*"``). ``training`` is
    passed to the model. The output is exactly what ``model(inputs, training=training)`` returns.
    """
    check_model(model)
    check_inputs(model, inputs)
    import keras

    # Records are written in one go after the run: flushing the index every 64 rows, not every
    # row, halves the writing time.
    rec = Recorder(path, framework="tensorflow", dims=dims, model=model_name or model.name,
                   seed=seed, framework_version=f"tf {tf.__version__} / keras {keras.__version__}",
                   overwrite=overwrite, values=values, flush_every=64,
                   meta={"training": bool(training),
                         "image_data_format": keras.config.image_data_format(),
                         "dtype_policy": keras.config.dtype_policy().name})
    capture = LayerCapture(model, training=training, include=include, exclude=exclude)
    capture.model_inputs = [(name, value.numpy() if hasattr(value, "numpy") else value)
                            for name, value in named_inputs(inputs)]
    weights_before = {id(v) for v in model.weights}
    try:
        with _quiet_tensorflow(), _eager_functions(), capture:
            output, loss, grads = _run(model, inputs, loss_fn, capture, training)
    except BaseException:
        _close_after_failure(rec, capture, inputs)
        raise
    created = [name for name, _, _, v in _weights(capture) if id(v) not in weights_before]
    if created:
        _discard(rec)
        raise TraceDiffError(
            f"Keras model '{model.name}' created {len(created)} weight(s) while being recorded "
            f"({created[0]}, ...): it was never fully built, so they hold fresh random "
            "values; run it once on sample inputs, load its weights, then record")
    try:
        _write(rec, capture, inputs, loss, grads, include, exclude)
    except BaseException:
        rec.close(complete=False)
        raise
    rec.close()
    return output


def _run(model, inputs, loss_fn, capture, training):
    """Forward (and loss) under one tape; gradients for every float output and trainable weight."""
    with tf.GradientTape() as tape:
        capture.tape = tape
        try:
            output = model(inputs, training=training)
        except (ValueError, tf.errors.OpError) as exc:
            raise forward_error(model, inputs, exc) from exc
        loss = None if loss_fn is None else _scalar_loss(loss_fn(output))
    capture.tape = None
    if loss is None:
        return output, None, {}
    outputs = [c for c in capture.captures if c.tensor.dtype.is_floating]
    variables = [v for _, layer in capture.paths for v in own_variables(layer) if v.trainable]
    sources = [c.tensor for c in outputs] + variables
    gradients = tape.gradient(loss, sources) if sources else []
    grads = {}
    for source_id, grad in zip([id(c) for c in outputs] + [id(v) for v in variables], gradients):
        if grad is not None:
            grads[source_id] = tf.convert_to_tensor(grad).numpy()
    return output, loss, grads


def _scalar_loss(loss):
    if not tf.is_tensor(loss):
        raise TraceDiffError(
            f"loss_fn returned {type(loss).__name__}, not a tensor: return a scalar TensorFlow "
            "tensor computed from the model output so that gradients can flow")
    if loss.shape.num_elements() != 1:
        raise TraceDiffError(
            f"loss_fn returned a tensor of shape {tuple(loss.shape)}, not a scalar: reduce it "
            "(e.g. tf.reduce_mean) before returning")
    return tf.reshape(loss, ())


def _write(rec, capture, inputs, loss, grads, include, exclude):
    _write_inputs(rec, capture, inputs)
    kept = [c for c in capture.captures if c.keep]
    for c in kept:
        rec.record("forward", c.name, c.value, call=c.call, **c.meta)  # no default inputs
    if loss is None:
        _write_params(rec, capture, grads, include, exclude)
        return
    rec.loss(loss.numpy())
    for c in reversed(kept):
        if id(c) in grads:
            rec.backward(c.name, grads[id(c)], call=c.call, **c.meta)
    _write_params(rec, capture, grads, include, exclude)


def _write_inputs(rec, capture, inputs):
    for name, value in named_inputs(inputs):
        array = value.numpy() if hasattr(value, "numpy") else value
        layout = capture.model_input_layout(value)
        rec.input(name, array, **({"layout": layout} if layout else {}))


def _weights(capture):
    """(record name, layer path, layer, variable) for every weight, each once."""
    seen = set()
    for path, layer in capture.paths:
        for variable in own_variables(layer):
            if id(variable) not in seen:
                seen.add(id(variable))
                name = weight_name(variable) if path == ROOT else f"{path}/{weight_name(variable)}"
                yield name, path, layer, variable


def _write_params(rec, capture, grads, include, exclude):
    for name, path, layer, variable in _weights(capture):
        if selected((name, path), include, exclude):
            meta = tfmeta.param_meta(layer, "" if path == ROOT else path, variable)
            rec.param(name, variable.numpy(), grad=grads.get(id(variable)), **meta)


def _close_after_failure(rec, capture, inputs):
    """Keep a partial trace when some layers ran (it shows how far the run got); else none."""
    if not capture.captures:
        _discard(rec)
        return
    try:
        _write_inputs(rec, capture, inputs)
        for c in capture.captures:
            if c.keep:
                rec.record("forward", c.name, c.value, call=c.call, **c.meta)  # no default inputs
    finally:
        rec.close(complete=False)


def _discard(rec):
    rec.close(complete=False)
    with contextlib.suppress(OSError):
        os.remove(rec.path)


@contextlib.contextmanager
def _quiet_tensorflow():
    """TensorFlow's and absl's informational chatter off while recording, restored after."""
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def _eager_functions():
    """Run ``tf.function`` bodies eagerly so that layers called inside one are captured too.

    The values recorded are eager execution's (a graph's fused kernels can differ in the last
    bits); the setting is put back to what it was as soon as the recording ends.
    """
    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(before)
