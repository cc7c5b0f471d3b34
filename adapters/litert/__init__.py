"""LiteRT (TFLite) adapter (``from tracediff.adapters import litert as tdl``): every tensor of a
``.tflite`` model's interpreter run, quantized ones as stored with their scale and zero point.
See docs/litert.md."""
from .record import record

__all__ = ["record"]
