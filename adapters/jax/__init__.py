"""JAX / Flax adapter (``from tracediff.adapters import jax as tdj``): every submodule's output
of a Flax NNX or Linen module (or the values a plain JAX function marks with ``tap``), their
gradients dL/d output, parameters and parameter gradients of one run. See docs/jax.md."""
from .capture import tap
from .models import bind
from .record import record

__all__ = ["bind", "record", "tap"]
