"""What every adapter provides, and which adapter records a given model.

An adapter is ``tracediff.adapters.<name>``: a module (``numpy``) or a package whose
``__init__`` is its public surface. Each provides ``record(model, inputs, path, **options)``,
one run of the model written as a trace (docs/format.md) with the names and metadata of
docs/conventions.md. Inside a package the same module roles recur (docs/architecture.md):

- ``record.py``  the public ``record``: check the arguments, open the Recorder, run, close;
- ``capture.py`` the capture of forward values (and their gradients, where the runtime hands
  them over in the same run);
- ``meta.py``    record names and metadata: op types, module paths, layouts, parameter roles;
- ``inputs.py``  checking and naming the model's inputs, with one-line errors;
- ``replay.py``  the model's layers run on a reference trace's values (``td.replay``).

A runtime adds modules of its own beside these (torch's op mode, ONNX's memory plan and its
gradient graph in ``onnx/grad/``). Nothing here imports a framework.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Protocol

# model files, by suffix, and the adapter that records them
MODEL_SUFFIXES = {".onnx": "onnx", ".tflite": "litert"}
ADAPTERS = ("numpy", "torch", "tensorflow", "onnx", "litert", "jax")
# the losses the ONNX adapter appends to a graph to record its gradients (onnx/grad/graph.py)
ONNX_LOSSES = ("cross_entropy", "mse", "sum")


class Adapter(Protocol):
    """The surface every adapter module offers."""

    def record(self, model, inputs, path, **options):
        """Record one run of ``model`` on ``inputs`` into the trace file ``path``."""


def load(name: str) -> Adapter:
    """The adapter module ``tracediff.adapters.<name>`` (this imports its framework)."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}: one of {', '.join(ADAPTERS)}")
    return importlib.import_module(f"{__package__}.{name}")


def framework_of(model) -> str | None:
    """The adapter that records ``model`` (``torch``, ``tensorflow``, ``onnx``, ``litert``,
    ``jax`` for a Flax module or a ``jax.jit`` function, or ``numpy`` for a plain function),
    decided without importing a framework: a torch module can only exist once torch is imported,
    so ``sys.modules`` is asked. None for anything else, and for a path that is not an ``.onnx``
    or ``.tflite`` file."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    if is_keras_layer(model):
        return "tensorflow"
    if is_jax_model(model):
        return "jax"
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(model, onnx.ModelProto):
        return "onnx"
    if isinstance(model, (str, os.PathLike)):
        return MODEL_SUFFIXES.get(os.path.splitext(os.fspath(model))[1])
    if callable(model):
        return "numpy"
    return None


def is_keras_layer(model) -> bool:
    return any(cls.__name__ == "Layer" and cls.__module__.startswith(("keras", "tf_keras"))
               for cls in type(model).__mro__)


def is_jax_model(model) -> bool:
    """A Flax Linen or NNX module, or a ``jax.jit``-compiled function (a plain Python function
    over JAX arrays looks like any other function: pass it to the jax adapter yourself)."""
    for name in ("flax.linen", "flax.nnx"):
        flax = sys.modules.get(name)
        if flax is not None and isinstance(model, flax.Module):
            return True
    if type(model).__module__ == "tracediff.adapters.jax.models":     # jax.bind(fn, params)
        return True
    return "jax" in sys.modules and type(model).__module__.startswith(("jax", "jaxlib")) \
        and callable(model) and hasattr(model, "lower")
