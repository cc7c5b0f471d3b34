"""ONNX adapter (``from tracediff.adapters import onnx as tdo``): every node output of an ONNX
model computed by onnxruntime, in bounded memory, and with ``loss=`` the gradients from the
backward graph in ``grad/``. See docs/onnx.md and docs/onnx_gradients.md."""
from .record import record

__all__ = ["record"]
