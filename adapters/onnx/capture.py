"""Run planned groups through onnxruntime, one session a group, carrying only what later groups
read. Graph optimizations are off: every node runs as written, so each recorded tensor is the
output of exactly the node it is named after."""
from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from ...errors import TraceDiffError, first_line
from .plan import group_model, initializer_arrays_nbytes, last_reads

# protobuf cannot serialize 2 GiB; larger groups go to onnxruntime through a file with
# external data
INLINE_LIMIT = 1_800_000_000
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider", "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider", "openvino": "OpenVINOExecutionProvider",
}


def resolve_providers(providers):
    """onnxruntime provider names for ``None`` (CPU), a name, or a list (``cuda`` works)."""
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    available = ort.get_available_providers()
    resolved = []
    for name in providers:
        full = PROVIDER_ALIASES.get(str(name).lower(), str(name))
        if full not in available:
            raise TraceDiffError(
                f"onnxruntime provider {name!r} is not available in this installation "
                f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA "
                "or leave --provider out to run on the CPU")
        resolved.append(full)
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")  # fallback for ops the device lacks
    return resolved


def session_options():
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    return options


def make_session(model, providers, initializer_nbytes=0):
    """An InferenceSession for ``model``; models too large for protobuf go through a file."""
    try:
        if initializer_nbytes <= INLINE_LIMIT:
            return ort.InferenceSession(model.SerializeToString(), session_options(),
                                        providers=providers)
        with tempfile.TemporaryDirectory(prefix="tracediff-onnx-") as folder:
            path = os.path.join(folder, "group.onnx")
            onnx.save_model(model, path, save_as_external_data=True,
                            all_tensors_to_one_file=True, location="group.data",
                            size_threshold=1024)
            return ort.InferenceSession(path, session_options(), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise TraceDiffError(f"onnxruntime cannot load the model: {first_line(exc)}") from None


def run_groups(model, nodes, groups, feeds, initializers, providers):
    """Yield ``(group, {tensor: value})`` for each group in order, freeing carried tensors
    after the last group that reads them."""
    carried = dict(feeds)
    last = last_reads(groups)
    for position, group in enumerate(groups):
        missing = [t for t in group.inputs if t not in carried]
        if missing:
            raise TraceDiffError(
                f"the graph reads {missing[0]!r}, which no node, initializer or input "
                "provides: check the model with onnx.checker.check_model")
        proto = group_model(model, nodes, group, initializers, carried)
        session = make_session(proto, providers,
                               initializer_arrays_nbytes(initializers, group.initializers))
        del proto
        try:
            values = session.run(group.outputs, {t: carried[t] for t in group.inputs})
        except Exception as exc:
            raise TraceDiffError(f"onnxruntime failed while running the model: {first_line(exc)}") from None
        del session
        results = dict(zip(group.outputs, values))
        del values
        for tensor in group.inputs:
            if last.get(tensor, -1) <= position:
                carried.pop(tensor, None)
        for tensor, value in results.items():
            if last.get(tensor, -1) > position:
                carried[tensor] = value
        yield group, results
        del results
