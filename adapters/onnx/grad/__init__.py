"""ONNX gradients: the vector-Jacobian-product graph of a forward ONNX graph (``graph``), one
rule per op (``vjp``), run whole or group by group in bounded memory (``groups``). See
docs/onnx_gradients.md."""
