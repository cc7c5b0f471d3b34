"""Tiny one-op ONNX models for the gradient-rule tests (test_onnx_grad_rules.py): operands,
attributes, prime-sized shapes so that a transposed or mis-broadcast gradient cannot fit."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(7)
# Ops onnxruntime's CPU provider runs in float32 only: their float64 check uses onnx.reference.
NO_FLOAT64_IN_ORT = {"Conv", "AveragePool", "GlobalAveragePool", "Erf", "Gelu", "Resize", "LSTM",
                     "GRU"}
# onnx.reference's ConvTranspose ignores `group`: these run in onnxruntime float32 only.
REFERENCE_LACKS = {"Conv-strided-dilated-grouped"}
# Grouped convolution splits channels into groups, recurrent weights stack 3 or 4 gates:
# their sizes cannot be prime.
COMPOSITE_OK = {"Conv-strided-dilated-grouped", "LSTM", "LSTM-bidirectional", "GRU",
                "GRU-reverse-reset-after"}


def normal(*shape):
    return RNG.standard_normal(shape)


def positive(*shape):
    return RNG.uniform(0.5, 2.0, shape)


def f32(values):
    return np.asarray(values, dtype=np.float32)


def i64(values):
    return np.asarray(values, dtype=np.int64)


class Case:
    """One node (or a few) under test. Float64 operands are differentiated; others are constants."""

    def __init__(self, id, op, operands, attrs=None, outputs=1, used=None, opset=18, nodes=None,
                 eps=1e-6, rtol=1e-6, buffers=0):
        self.id, self.op, self.operands = id, op, operands
        # the last `buffers` operands are BatchNorm statistics: not parameters, no gradient
        self.buffers = [n for n, _ in operands[len(operands) - buffers:]] if buffers else []
        self.eps, self.rtol = eps, rtol
        self.attrs, self.outputs, self.opset = attrs or {}, outputs, opset
        self.used = list(range(outputs)) if used is None else used
        self.nodes = nodes

    def __repr__(self):
        return self.id

    @property
    def float_names(self):
        return [n for n, v in self.operands if isinstance(v, np.ndarray) and v.dtype == np.float64]

    def model(self, dtype=np.float64, as_inputs=True):
        """``sum_i sum(probe_i * out_i)`` over the used outputs, as one scalar output.

        ``as_inputs``: float operands are graph inputs (finite differences) or initializers
        (whose gradients the gradient model returns)."""
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        inputs, inits = [], []
        for name, value in self.operands:
            if name in self.float_names:
                value = value.astype(dtype)
                if as_inputs:
                    inputs.append(helper.make_tensor_value_info(name, elem, value.shape))
                    continue
            if isinstance(value, np.ndarray):
                inits.append(numpy_helper.from_array(value, name))
        outs = [f"y{i}" for i in range(self.outputs)]
        nodes = self.nodes(outs) if self.nodes else [
            helper.make_node(self.op, [n for n, _ in self.operands], outs, name=f"/{self.op}",
                             **self.attrs)]
        terms = []
        for i in self.used:
            probe = f"probe{i}"
            inits.append(numpy_helper.from_array(
                np.random.default_rng(100 + i).standard_normal(self.out_shapes[i]).astype(dtype),
                probe))
            nodes.append(helper.make_node("Mul", [outs[i], probe], [f"p{i}"], name=f"/probe{i}"))
            nodes.append(helper.make_node("ReduceSum", [f"p{i}"], [f"s{i}"], keepdims=0,
                                          name=f"/reduce{i}"))
            terms.append(f"s{i}")
        nodes.append(helper.make_node("Sum", terms, ["total"], name="/total"))
        graph = helper.make_graph(nodes, self.id, inputs,
                                  [helper.make_tensor_value_info("total", elem, [])],
                                  initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 10
        return model

    def forward_shapes(self):
        from onnx.reference import ReferenceEvaluator
        outs = [f"y{i}" for i in range(self.outputs)]
        nodes = self.nodes(outs) if self.nodes else [
            helper.make_node(self.op, [n for n, _ in self.operands], outs, **self.attrs)]
        inits = [numpy_helper.from_array(v, n) for n, v in self.operands
                 if isinstance(v, np.ndarray)]
        graph = helper.make_graph(nodes, "shapes", [], [
            helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs],
            initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        return [np.shape(v) for v in ReferenceEvaluator(model).run(None, {})]


def _batch_norm_with_computed_statistics(outs):
    """The legacy exporter feeds a BatchNorm statistic through Identity when it equals another
    initializer; then the statistic is a node output on the loss path and has a gradient."""
    return [helper.make_node("Identity", ["mean0"], ["mean"], name="/mean"),
            helper.make_node("Identity", ["var0"], ["var"], name="/var"),
            helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], outs,
                             epsilon=1e-3, name="/BatchNormalization")]


def _split_to_sequence(outs):
    """torch.split as the dynamo exporter writes it before optimizing: a sequence read back."""
    return [helper.make_node("SplitToSequence", ["x", "sizes"], ["seq"], axis=1, name="/split"),
            helper.make_node("SequenceAt", ["seq", "last"], [outs[0]], name="/at_last"),
            helper.make_node("SequenceAt", ["seq", "first"], [outs[1]], name="/at_first")]


def _cast_round_trip(outs):
    return [helper.make_node("Cast", ["x"], ["mid"], to=TensorProto.FLOAT, name="/down"),
            helper.make_node("Cast", ["mid"], outs, to=TensorProto.DOUBLE, name="/up")]


CASES = [
    Case("Gemm", "Gemm", [("a", normal(3, 5)), ("b", normal(5, 7)), ("c", normal(7))]),
    Case("Gemm-trans", "Gemm", [("a", normal(5, 3)), ("b", normal(7, 5)), ("c", normal(1, 7))],
         attrs=dict(transA=1, transB=1, alpha=0.7, beta=1.3)),
    Case("Gemm-transB", "Gemm", [("a", normal(3, 5)), ("b", normal(7, 5)), ("c", normal(3, 1))],
         attrs=dict(transB=1, alpha=0.7, beta=0.5)),
    Case("Gemm-transA", "Gemm", [("a", normal(5, 3)), ("b", normal(5, 7)), ("c", normal())],
         attrs=dict(transA=1, alpha=1.3)),
    Case("MatMul-batched", "MatMul", [("a", normal(2, 3, 5)), ("b", normal(5, 7))]),
    Case("MatMul-broadcast", "MatMul", [("a", normal(2, 1, 3, 5)), ("b", normal(3, 5, 7))]),
    Case("MatMul-vector", "MatMul", [("a", normal(5)), ("b", normal(2, 5, 3))]),
    Case("MatMul-matvec", "MatMul", [("a", normal(3, 5)), ("b", normal(5))]),
    Case("Add-broadcast", "Add", [("a", normal(2, 3, 1)), ("b", normal(1, 5))]),
    Case("Sub-broadcast", "Sub", [("a", normal(3, 5)), ("b", normal(3, 1))]),
    Case("Mul-broadcast", "Mul", [("a", normal(2, 3, 5)), ("b", normal(3, 1))]),
    Case("Div-broadcast", "Div", [("a", normal(3, 5)), ("b", positive(5))]),
    Case("Sum", "Sum", [("a", normal(3, 5)), ("b", normal(5)), ("c", normal(3, 1))]),
    Case("Neg", "Neg", [("x", normal(3, 5))]),
    Case("Pow", "Pow", [("a", positive(3, 5)), ("b", normal(5))]),
    Case("Pow-int-exponent", "Pow", [("a", normal(3, 5)), ("b", i64(3))]),
    Case("Abs", "Abs", [("x", normal(3, 5))]),
    Case("Reciprocal", "Reciprocal", [("x", positive(3, 5))]),
    Case("Softplus", "Softplus", [("x", normal(3, 5))]),
    Case("HardSigmoid", "HardSigmoid", [("x", 3 * normal(3, 7))], attrs=dict(alpha=0.3)),
    Case("HardSwish", "HardSwish", [("x", 4 * normal(3, 7))]),
    Case("Clip", "Clip",
         [("x", 2 * normal(3, 7)), ("low", np.array(-0.5)), ("high", np.array(1.0))]),
    Case("Clip-upper-only", "Clip",
         [("x", 2 * normal(3, 7)), ("", None), ("high", np.array(0.3))]),
    Case("Max-broadcast", "Max", [("a", normal(3, 5)), ("b", normal(5)), ("c", normal(3, 1))]),
    Case("Min", "Min", [("a", normal(3, 5)), ("b", normal(3, 5))]),
    Case("Sqrt", "Sqrt", [("x", positive(3, 5))]),
    Case("Exp", "Exp", [("x", normal(3, 5))]),
    Case("Log", "Log", [("x", positive(3, 5))]),
    Case("Relu", "Relu", [("x", normal(3, 7))]),
    Case("LeakyRelu", "LeakyRelu", [("x", normal(3, 7))], attrs=dict(alpha=0.2)),
    Case("Sigmoid", "Sigmoid", [("x", normal(3, 7))]),
    Case("Tanh", "Tanh", [("x", normal(3, 7))]),
    Case("Erf", "Erf", [("x", normal(3, 7))]),
    Case("Gelu", "Gelu", [("x", normal(3, 7))], opset=20),
    Case("Gelu-tanh", "Gelu", [("x", normal(3, 7))], attrs=dict(approximate="tanh"), opset=20),
    Case("Softmax", "Softmax", [("x", normal(2, 3, 5))], attrs=dict(axis=1)),
    Case("LogSoftmax", "LogSoftmax", [("x", normal(3, 7))]),
    Case("LayerNormalization", "LayerNormalization",
         [("x", normal(2, 3, 5)), ("scale", normal(5)), ("bias", normal(5))]),
    Case("LayerNormalization-axis1", "LayerNormalization",
         [("x", normal(2, 3, 5)), ("scale", normal(3, 5)), ("bias", normal(3, 5))],
         attrs=dict(axis=1, epsilon=1e-3)),
    Case("BatchNormalization", "BatchNormalization",
         [("x", normal(2, 3, 5, 7)), ("scale", normal(3)), ("bias", normal(3)),
          ("mean", normal(3)), ("var", positive(3))], attrs=dict(epsilon=1e-3), buffers=2),
    Case("BatchNormalization-computed-statistics", "BatchNormalization",
         [("x", normal(2, 3, 5, 7)), ("scale", normal(3)), ("bias", normal(3)),
          ("mean0", normal(3)), ("var0", positive(3))],
         nodes=_batch_norm_with_computed_statistics),
    Case("Conv", "Conv", [("x", normal(2, 3, 7, 5)), ("w", normal(5, 3, 3, 3)), ("b", normal(5))],
         attrs=dict(pads=[1, 1, 1, 1])),
    Case("Conv-strided-dilated-grouped", "Conv",
         [("x", normal(1, 4, 7, 5)), ("w", normal(6, 2, 3, 2))],
         attrs=dict(group=2, strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1])),
    Case("Conv-same-1d", "Conv", [("x", normal(2, 3, 11)), ("w", normal(5, 3, 3))],
         attrs=dict(auto_pad="SAME_UPPER", strides=[2])),
    Case("Conv-3d", "Conv", [("x", normal(1, 2, 3, 5, 3)), ("w", normal(3, 2, 2, 3, 2))],
         attrs=dict(pads=[1, 0, 1, 0, 1, 0], strides=[1, 2, 1])),
    Case("MaxPool", "MaxPool", [("x", normal(2, 3, 7, 5))],
         attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    Case("MaxPool-overlap-indices", "MaxPool", [("x", normal(1, 3, 5, 7))],
         attrs=dict(kernel_shape=[2, 3], strides=[1, 2]), outputs=2, used=[0]),
    Case("AveragePool", "AveragePool", [("x", normal(2, 3, 7, 5))],
         attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    Case("AveragePool-include-pad", "AveragePool", [("x", normal(2, 3, 7, 5))],
         attrs=dict(kernel_shape=[2, 3], strides=[2, 1], pads=[1, 1, 0, 1], count_include_pad=1)),
    Case("GlobalAveragePool", "GlobalAveragePool", [("x", normal(2, 3, 7, 5))]),
    Case("Flatten", "Flatten", [("x", normal(2, 3, 5))], attrs=dict(axis=2)),
    Case("Reshape", "Reshape", [("x", normal(2, 3, 5)), ("shape", i64([5, -1]))]),
    Case("Transpose", "Transpose", [("x", normal(2, 3, 5))], attrs=dict(perm=[1, 2, 0])),
    Case("Squeeze", "Squeeze", [("x", normal(3, 1, 5)), ("axes", i64([1]))]),
    Case("Unsqueeze", "Unsqueeze", [("x", normal(3, 5)), ("axes", i64([0, 2]))]),
    Case("Concat", "Concat", [("a", normal(3, 2)), ("b", normal(3, 5)), ("c", normal(3, 1))],
         attrs=dict(axis=-1)),
    Case("Concat-single", "Concat", [("a", normal(3, 5))], attrs=dict(axis=0)),
    Case("Split", "Split", [("x", normal(3, 7)), ("split", i64([2, 5]))], attrs=dict(axis=1),
         outputs=2),
    Case("Split-one-output-used", "Split", [("x", normal(7, 3))], attrs=dict(num_outputs=3),
         outputs=3, used=[1]),
    Case("SplitToSequence", "SplitToSequence",
         [("x", normal(3, 7)), ("sizes", i64([2, 5])), ("last", i64(-1)), ("first", i64(0))],
         nodes=_split_to_sequence, outputs=2),
    Case("Slice-negative-step", "Slice",
         [("x", normal(5, 7)), ("starts", i64([4, 1])), ("ends", i64([-7, 7])),
          ("axes", i64([0, 1])), ("steps", i64([-2, 3]))]),
    Case("Gather-repeated", "Gather", [("x", normal(3, 5)), ("idx", i64([[0, 2], [2, -1]]))]),
    Case("Gather-axis1", "Gather", [("x", normal(3, 5)), ("idx", i64([4, 0, 4]))],
         attrs=dict(axis=1)),
    Case("GatherElements", "GatherElements",
         [("x", normal(3, 5)), ("idx", i64([[0, 4], [1, 1], [3, 2]]))], attrs=dict(axis=1)),
    Case("ReduceMean", "ReduceMean", [("x", normal(2, 3, 5)), ("axes", i64([1]))],
         attrs=dict(keepdims=0)),
    Case("ReduceSum-keepdims", "ReduceSum", [("x", normal(2, 3, 5)), ("axes", i64([0, 2]))]),
    Case("ReduceSum-all", "ReduceSum", [("x", normal(2, 3, 5))], attrs=dict(keepdims=0)),
    Case("ReduceMean-opset13", "ReduceMean", [("x", normal(2, 3, 5))],
         attrs=dict(axes=[-1], keepdims=1), opset=13),
    Case("ReduceMax", "ReduceMax", [("x", normal(2, 3, 5)), ("axes", i64([0, 2]))],
         attrs=dict(keepdims=0)),
    Case("ReduceMin-all", "ReduceMin", [("x", normal(2, 3, 5))]),
    # every row has a tie: central differences split the gradient evenly, as torch.amax does
    Case("ReduceMax-ties-share", "ReduceMax",
         [("x", np.array([[1.0, 3.0, 3.0], [2.0, 0.5, 2.0]])), ("axes", i64([1]))], eps=1e-3),
    Case("Identity", "Identity", [("x", normal(3, 5))]),
    # float32 rounding in the middle: a wide step keeps the rounding out of the difference
    Case("Cast", "Cast", [("x", normal(3, 5))], nodes=_cast_round_trip, eps=1e-2, rtol=1e-5),
    Case("Dropout", "Dropout", [("x", normal(3, 5))]),
    Case("Where", "Where", [("cond", RNG.random((3, 5)) > 0.5), ("a", normal(3, 5)),
                            ("b", normal(5))]),
    Case("Expand", "Expand", [("x", normal(3, 1)), ("shape", i64([2, 3, 5]))]),
    Case("Elu", "Elu", [("x", normal(3, 7))], attrs=dict(alpha=0.7)),
    Case("Einsum-batched-matmul", "Einsum", [("a", normal(2, 3, 5)), ("b", normal(2, 5, 7))],
         attrs=dict(equation="bij,bjk->bik")),
    Case("Einsum-attention", "Einsum", [("q", normal(2, 3, 5, 7)), ("k", normal(2, 3, 11, 7))],
         attrs=dict(equation="bhqd,bhkd->bhqk")),
    # i is summed away in a alone: its gradient is broadcast back along i
    Case("Einsum-summed-alone", "Einsum", [("a", normal(3, 5)), ("b", normal(5, 7))],
         attrs=dict(equation="ij,jk->k")),
    Case("Einsum-ellipsis-implicit", "Einsum", [("a", normal(2, 3, 5)), ("b", normal(2, 5, 7))],
         attrs=dict(equation="...ij,...jk")),
    Case("Einsum-outer-one-operand-kept", "Einsum", [("a", normal(3)), ("b", normal(5))],
         attrs=dict(equation="i,j->ij")),
    # F.interpolate(scale_factor=2, mode="nearest") as both exporters write it
    Case("Resize-nearest", "Resize",
         [("x", normal(2, 3, 5, 7)), ("", None), ("scales", f32([1, 1, 2, 2]))],
         attrs=dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")),
    # F.interpolate(scale_factor=2, mode="bilinear", align_corners=False)
    Case("Resize-linear-half-pixel", "Resize",
         [("x", normal(2, 3, 5, 7)), ("", None), ("scales", f32([1, 1, 2, 2]))],
         attrs=dict(mode="linear", coordinate_transformation_mode="half_pixel")),
    # F.interpolate(size=(7, 11), mode="bilinear", align_corners=True): sizes, not scales
    Case("Resize-linear-align-corners-sizes", "Resize",
         [("x", normal(2, 3, 5, 7)), ("", None), ("", None), ("sizes", i64([2, 3, 7, 11]))],
         attrs=dict(mode="linear", coordinate_transformation_mode="align_corners")),
    Case("Resize-cubic-pytorch-half-pixel", "Resize",
         [("x", normal(1, 2, 5, 7)), ("", None), ("scales", f32([1, 1, 1.5, 2]))],
         attrs=dict(mode="cubic", coordinate_transformation_mode="pytorch_half_pixel")),
    # gates i, o, f, c; biases and initial states; every output used
    Case("LSTM", "LSTM",
         [("x", normal(3, 2, 5)), ("w", 0.5 * normal(1, 12, 5)), ("r", 0.5 * normal(1, 12, 3)),
          ("b", normal(1, 24)), ("", None), ("h0", normal(1, 2, 3)), ("c0", normal(1, 2, 3))],
         attrs=dict(hidden_size=3), outputs=3),
    Case("LSTM-bidirectional", "LSTM",
         [("x", normal(3, 2, 5)), ("w", 0.5 * normal(2, 12, 5)), ("r", 0.5 * normal(2, 12, 3))],
         attrs=dict(hidden_size=3, direction="bidirectional"), outputs=3),
    # torch's GRU: linear_before_reset=1
    Case("GRU", "GRU",
         [("x", normal(3, 2, 5)), ("w", 0.5 * normal(1, 9, 5)), ("r", 0.5 * normal(1, 9, 3)),
          ("b", normal(1, 18)), ("", None), ("h0", normal(1, 2, 3))],
         attrs=dict(hidden_size=3, linear_before_reset=1), outputs=2),
    Case("GRU-reverse-reset-after", "GRU",
         [("x", normal(3, 2, 5)), ("w", 0.5 * normal(1, 9, 5)), ("r", 0.5 * normal(1, 9, 3)),
          ("b", normal(1, 18))],
         attrs=dict(hidden_size=3, direction="reverse"), outputs=2, used=[1]),
    # downsampling by a non-integer factor, rounding to the nearest pixel
    Case("Resize-nearest-down", "Resize",
         [("x", normal(1, 2, 7, 11)), ("", None), ("scales", f32([1, 1, 0.6, 0.5]))],
         attrs=dict(mode="nearest", coordinate_transformation_mode="half_pixel")),
]

for _case in CASES:
    _case.out_shapes = _case.forward_shapes()


def _prime_or_one(n):
    return n == 1 or (n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1)))


def test_cases_use_prime_sized_operands():
    for case in CASES:
        if case.id in COMPOSITE_OK:
            continue
        for name in case.float_names:
            shape = dict(case.operands)[name].shape
            assert all(_prime_or_one(d) for d in shape), f"{case.id}: {name} has shape {shape}"
