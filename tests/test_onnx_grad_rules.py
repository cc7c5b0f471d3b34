"""Every VJP rule against central finite differences in float64, on prime-sized shapes."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from tracediff.adapters.onnx import grad as onnx_grad
from tracediff.adapters.onnx.grad.vjp import RULES

from test_onnx_grad_cases import CASES, NO_FLOAT64_IN_ORT, REFERENCE_LACKS

class ExactErf(OpRun):
    """onnx.reference's Erf rounds through float32; finite differences need float64."""
    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


ExactErf.__name__ = "Erf"


class ExactGelu(OpRun):
    """onnx.reference expands Gelu with its float32 Erf; this is the float64 definition."""
    op_domain = ""

    def _run(self, x, approximate="none"):
        if approximate == "tanh":
            inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
            return (0.5 * x * (1 + np.tanh(inner)),)
        erf = np.vectorize(math.erf, otypes=[x.dtype])
        return (0.5 * x * (1 + erf(x / math.sqrt(2))),)


ExactGelu.__name__ = "Gelu"


def _runner(model, engine):
    if engine == "reference":
        evaluator = ReferenceEvaluator(model, new_ops=[ExactErf, ExactGelu])
        return lambda feeds: evaluator.run(None, feeds)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def _finite_differences(case, engine):
    run = _runner(case.model(np.float64, as_inputs=True), engine)
    values = {n: v.copy() for n, v in case.operands if n in case.float_names}
    grads = {}
    for name, value in values.items():
        grad = np.zeros_like(value)
        flat, out = value.reshape(-1), grad.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + case.eps
            up = run(values)[0]
            flat[i] = keep - case.eps
            down = run(values)[0]
            flat[i] = keep
            out[i] = (up - down) / (2 * case.eps)
        grads[name] = grad
    return grads


def _analytic(case, dtype, engine):
    plan = onnx_grad.build(case.model(dtype, as_inputs=False), "sum")
    onnx.checker.check_model(plan.model, full_check=True)
    outputs = [o.name for o in plan.model.graph.output]
    values = dict(zip(outputs, _runner(plan.model, engine)({})))
    return {init: values[out] for init, out in plan.param_grads}, plan


@pytest.mark.parametrize("case", [c for c in CASES if c.id not in REFERENCE_LACKS], ids=repr)
def test_rule_matches_finite_differences_in_float64(case):
    engine = "reference" if case.op in NO_FLOAT64_IN_ORT else "ort"
    numeric = _finite_differences(case, engine)
    analytic, plan = _analytic(case, np.float64, engine)
    differentiated = [n for n in case.float_names if n not in case.buffers]
    assert set(differentiated) <= set(analytic)
    assert not set(case.buffers) & set(analytic)
    for name in differentiated:
        np.testing.assert_allclose(analytic[name], numeric[name], rtol=case.rtol, atol=1e-7,
                                   err_msg=f"{case.id}: dL/d{name}")
    # the node output's own backward record is the probe that multiplies it
    recorded = dict(plan.grads)
    assert "y0" in recorded or 0 not in case.used


@pytest.mark.parametrize("case", [c for c in CASES if c.op in NO_FLOAT64_IN_ORT], ids=repr)
def test_float32_only_rule_runs_in_onnxruntime(case):
    """Where onnxruntime has no float64 kernel, its float32 gradient graph still matches."""
    numeric = _finite_differences(case, "reference")
    analytic, _ = _analytic(case, np.float32, "ort")
    for name in case.float_names:
        np.testing.assert_allclose(analytic[name], numeric[name], rtol=2e-4, atol=2e-5,
                                   err_msg=f"{case.id}: dL/d{name}")


def test_every_required_op_has_a_rule_and_a_case():
    required = {"Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Relu", "LeakyRelu",
                "Sigmoid", "Tanh", "Erf", "Gelu", "Softmax", "LogSoftmax", "LayerNormalization",
                "BatchNormalization", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
                "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split",
                "Slice", "Gather", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Exp", "Log",
                "Identity", "Cast", "Dropout", "Where", "Expand", "Elu", "Einsum", "Resize",
                "LSTM", "GRU"}
    assert required <= set(RULES)
    assert required <= {c.op for c in CASES}
