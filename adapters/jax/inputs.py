"""What is being recorded (a Flax Linen module, a Flax NNX module or a plain JAX function) and
its inputs, with one-line errors."""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import TraceDiffError


def kind_of(model) -> str:
    """``linen``, ``nnx`` or ``function``; one clear refusal for anything else."""
    linen = sys.modules.get("flax.linen")
    if linen is not None and isinstance(model, linen.Module):
        return "linen"
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(model, nnx.Module):
        return "nnx"
    if callable(model):
        return "function"
    raise TraceDiffError(
        f"jax.record needs a Flax module or a JAX function, got {type(model).__name__}: pass a "
        "flax.nnx.Module, a flax.linen.Module with params=variables, or fn(params, *inputs) "
        "with params=")


def jitted(fn) -> bool:
    """A ``jax.jit``-compiled function (it can lower and wraps the Python function)."""
    return hasattr(fn, "lower") and hasattr(fn, "__wrapped__")


def split_inputs(inputs):
    """``(args, kwargs)`` of JAX arrays: a tuple/list is positional, a dict keyword arguments,
    anything else the one positional input."""
    if isinstance(inputs, dict):
        return (), {key: _array(value, f"input {key!r}") for key, value in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return tuple(_array(value, f"input {i}") for i, value in enumerate(inputs)), {}
    return (_array(inputs, "the input"),), {}


def named_inputs(args, kwargs) -> list:
    """(record name, value) per input: ``input``; ``input:0``, ``input:1``; ``input:<key>``."""
    if kwargs:
        return [(f"input:{key}", value) for key, value in kwargs.items()]
    if len(args) == 1:
        return [("input", args[0])]
    return [(f"input:{i}", value) for i, value in enumerate(args)]


def _array(value, label):
    if isinstance(value, jax.Array):
        return value
    try:
        array = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is the user's input
        raise TraceDiffError(f"{label} is a {type(value).__name__}, not an array: pass NumPy or "
                             "JAX arrays") from exc
    if array.dtype == object:
        raise TraceDiffError(f"{label} is a {type(value).__name__} that is not a numeric array: "
                             "pass NumPy or JAX arrays")
    return jnp.asarray(array)


def shapes(args, kwargs) -> str:
    return ", ".join(str(tuple(v.shape)) for _, v in named_inputs(args, kwargs))


def run_error(what, args, kwargs, exc) -> TraceDiffError:
    """A one-line error for a forward pass that JAX or Flax refused."""
    line = next((text.strip() for text in str(exc).splitlines() if text.strip()),
                type(exc).__name__)
    line = line if len(line) < 400 else line[:400] + "..."
    return TraceDiffError(f"running {what} on inputs of shape {shapes(args, kwargs)} failed: "
                          f"{line}; pass inputs of the shape and dtype it was built for")
