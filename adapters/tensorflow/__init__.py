"""TensorFlow / Keras adapter (``from tracediff.adapters import tensorflow as tdtf``): every
layer's output, dL/d output, weights and weight gradients of one Keras run. See
docs/tensorflow.md."""
from .record import record

__all__ = ["record"]
