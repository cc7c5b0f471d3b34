"""ONNX gradients: the vector-Jacobian-product graph of a forward ONNX graph, run by onnxruntime.

``prepare`` readies the forward graph, ``graph`` builds the gradient model from one rule per op
(``vjp``), ``groups`` runs it group by group within a memory budget (``forward`` runs the
forward the same way), and ``record`` writes the records. See docs/onnx_gradients.md.
"""
from .graph import LOSSES, META_KEY, build, gradient_model
from .record import record_backward

__all__ = ["LOSSES", "META_KEY", "build", "gradient_model", "record_backward"]
