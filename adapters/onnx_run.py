"""Run planned groups through onnxruntime, one session a group, carrying only what later groups
read. Graph optimizations are off: every node runs as written, so each recorded tensor is the
output of exactly the node it is named after."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import TraceDiffError, first_line
from .onnx_plan import group_model, inferred_types, initializer_arrays_nbytes, last_reads

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


def run_groups(model, nodes, groups, feeds, initializers, providers, *, types=None,
               reuse_buffer=True):
    """Yield ``(group, {tensor: value})`` for each group in order, freeing carried tensors
    after the last group that reads them.

    On the CPU provider, onnxruntime writes every output whose shape and dtype ``types``
    (``{tensor: TypeProto}`` from ``onnx_plan.inferred_types``, computed here when None) fully
    know straight into one buffer sized for the largest group and reused by every group, so a
    group's values are valid only until the next group runs (tensors carried to later groups
    are copied out). A consumer that keeps values longer passes ``reuse_buffer=False``: each
    value then gets its own array, as ``session.run`` returns them. A group whose outputs
    onnxruntime will not write where inference said (a wrong inferred shape or dtype) runs
    again without the buffer."""
    carried = dict(feeds)
    last = last_reads(groups)
    layouts, buffer = [None] * len(groups), None
    if reuse_buffer and _cpu_only(providers) and groups:
        types = inferred_types(model, feeds) if types is None else types
        layouts = [output_layout(group.outputs, types) for group in groups]
        buffer = OutputBuffer(max((layout.nbytes for layout in layouts if layout), default=0))
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
        inputs = {t: carried[t] for t in group.inputs}
        results = run_group(session, group.outputs, inputs, layouts[position], buffer)
        del session, inputs
        for tensor in group.inputs:
            if last.get(tensor, -1) <= position:
                carried.pop(tensor, None)
        for tensor, value in results.items():
            if last.get(tensor, -1) > position:
                carried[tensor] = buffer.detached(value) if buffer else value
        yield group, results
        del results


# element types numpy and onnxruntime's output binding both take (no bfloat16, float8, string)
BOUND_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
               onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
               onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}
BOUND_DTYPES = {onnx.helper.tensor_dtype_to_np_dtype(t) for t in BOUND_TYPES}
BOUND_ORT_TYPES = {"tensor(float)", "tensor(double)", "tensor(float16)", "tensor(int8)",
                   "tensor(int16)", "tensor(int32)", "tensor(int64)", "tensor(uint8)",
                   "tensor(uint16)", "tensor(uint32)", "tensor(uint64)", "tensor(bool)"}
ALIGNMENT = 64
# a refused binding is retried plainly: onnxruntime's error log would only alarm
QUIET_RUN = ort.RunOptions()
QUIET_RUN.log_severity_level = 4


@dataclass
class Slot:
    offset: int
    dtype: np.dtype
    shape: tuple
    nbytes: int


@dataclass
class OutputLayout:
    slots: dict     # tensor -> its Slot in the shared buffer
    nbytes: int     # the buffer bytes the group needs


def output_layout(outputs, types):
    """Where each output of a fully known shape lies in the shared buffer (onnxruntime
    allocates the others); None when an output may not be a numeric tensor: a string, a
    sequence, a map, an optional or an untyped output, which the binding cannot hand back
    safely (onnxruntime 1.32's ``copy_outputs_to_cpu`` crashes on a string tensor)."""
    slots, offset = {}, 0
    for tensor in outputs:
        type_proto = types.get(tensor)
        if type_proto is None or type_proto.tensor_type.elem_type not in BOUND_TYPES:
            return None
        slot = _slot(type_proto.tensor_type, offset)
        if slot is not None:
            slots[tensor] = slot
            offset += -(-slot.nbytes // ALIGNMENT) * ALIGNMENT
    return OutputLayout(slots, offset)


def _slot(tensor_type, offset):
    """The tensor's place at ``offset``, or None if a dimension is unknown or it is empty."""
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if not all(dim.HasField("dim_value") and dim.dim_value > 0 for dim in dims):
        return None
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    shape = tuple(dim.dim_value for dim in dims)
    return Slot(offset, dtype, shape, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)


class OutputBuffer:
    """One 64-byte aligned byte buffer. Its pages are faulted in once, by the first group's run
    (onnxruntime's threads fault them in parallel, behind the computation: touching them here
    first, in one thread, measured slower)."""

    def __init__(self, nbytes):
        raw = np.empty(nbytes + ALIGNMENT, np.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        self.array = raw[start:start + nbytes]
        self.address = self.array.ctypes.data

    def view(self, slot):
        return self.array[slot.offset:slot.offset + slot.nbytes].view(slot.dtype).reshape(
            slot.shape)

    def detached(self, value):
        """``value``, copied out if it lies in the buffer (which the next group overwrites)."""
        if isinstance(value, np.ndarray) and np.may_share_memory(value, self.array):
            return value.copy()
        return value


class BindingRefused(Exception):
    """onnxruntime's outputs do not match what shape inference said they would be."""


def run_group(session, outputs, inputs, layout, buffer):
    """``{output: value}`` of one group: bound into ``buffer`` where ``layout`` places them,
    else (or when onnxruntime refuses the binding) as ``session.run`` returns them."""
    if layout is not None and all(_bindable_input(v) for v in inputs.values()):
        try:
            return _run_bound(session, outputs, inputs, layout, buffer)
        except Exception:  # onnxruntime raises plain RuntimeErrors
            pass  # an inferred shape or dtype was wrong: the plain run below is always right
    try:
        return dict(zip(outputs, session.run(outputs, inputs)))
    except Exception as exc:
        raise TraceDiffError(
            f"onnxruntime failed while running the model: {first_line(exc)}") from None


def _bindable_input(value):
    return isinstance(value, np.ndarray) and value.dtype in BOUND_DTYPES


def _run_bound(session, outputs, inputs, layout, buffer):
    binding = session.io_binding()
    for name, value in inputs.items():
        binding.bind_cpu_input(name, value)  # a strided one is copied by onnxruntime
    results = {}
    for tensor in outputs:
        slot = layout.slots.get(tensor)
        if slot is None:
            binding.bind_output(tensor, "cpu")
        else:
            binding.bind_output(tensor, "cpu", 0, slot.dtype, list(slot.shape),
                                buffer.address + slot.offset)
            results[tensor] = buffer.view(slot)
    session.run_with_iobinding(binding, QUIET_RUN)
    allocated = [t for t in outputs if t not in layout.slots]
    if allocated:
        results.update(_allocated_outputs(binding, outputs, allocated))
    return {tensor: results[tensor] for tensor in outputs}


def _allocated_outputs(binding, outputs, allocated):
    """The outputs onnxruntime allocated itself, as arrays over its memory (no copy)."""
    values = dict(zip(outputs, binding.get_outputs()))
    for tensor in allocated:
        if values[tensor].data_type() not in BOUND_ORT_TYPES:
            raise BindingRefused(f"{tensor!r} is a {values[tensor].data_type()}")
    return {tensor: values[tensor].numpy() for tensor in allocated}


def _cpu_only(providers):
    return list(providers) == ["CPUExecutionProvider"]
