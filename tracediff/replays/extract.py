"""``tracediff extract``: a one-layer repro. The candidate's layer is run on the reference's
values of its inputs (as replay runs it); its inputs, its parameters, the reference's output and
the tolerance are written to an HDF5 case, beside a pytest file that runs the layer on them and
fails, naming the local error, while the layer is wrong. Candidates: a torch module, a Keras
model, an ONNX model (whose node, or module, is also written as a one-layer ``.onnx``) and a
NumPy port's ``layers`` (``{record name: fn(*inputs)}`` or objects with ``forward``, as
``td.replay``'s ``layers=``)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import TraceDiffError
from ..recorder import Recorder
from ..trace import open_trace

TEST_FILE = '''"""One-layer repro of {layer!r}, written by `tracediff extract`: the candidate's layer
({candidate}) run on the reference's inputs, stored in {case_name}. It fails while the
layer's output differs from the reference's beyond the tolerance stored there."""
import pathlib

from tracediff.replays.case import check_case

CASE = pathlib.Path(__file__).with_name({case_name!r})


def test_{function}_matches_the_reference_on_its_inputs():
    check_case(CASE)
'''


@dataclass
class LayerCase:
    """What one framework's extract found: the layer's substituted arguments, its parameters
    ``[(name, array, meta)]``, the candidate record its output is, meta for the expected record
    and files to write beside the case (``{file name: bytes}``)."""
    record: str
    args: list
    kwargs: dict = field(default_factory=dict)
    params: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)


def numpy_layers(candidate):
    """A NumPy port's ``layers`` dict: the object itself, or its ``layers`` attribute; None for
    anything else."""
    found = candidate if isinstance(candidate, dict) else getattr(candidate, "layers", None)
    return found if isinstance(found, dict) else None


def framework_of_candidate(candidate):
    from ..adapters.base import framework_of
    if numpy_layers(candidate) is not None:
        return "numpy"
    framework = framework_of(candidate)
    if framework not in ("torch", "tensorflow", "onnx"):
        raise TraceDiffError(
            "extract: the candidate must be a torch module, a Keras model, a .onnx file, or a "
            "NumPy port's layers ({record name: fn(*inputs)}, as td.replay's layers=); got a "
            f"{type(candidate).__name__}")
    return framework


def extract(candidate_trace, ref, layer, candidate, out_dir, *, spec, call=0, rtol=None,
            atol=None, align="auto", rename=None, tolerances=None):
    """Write ``<out_dir>/<layer>.h5`` and ``<out_dir>/test_<layer>.py`` (and, for ONNX,
    ``<out_dir>/<layer>.onnx``); return the case's and the test's paths.

    ``candidate_trace`` and ``ref`` are the traces (the diff pairs ``layer`` of the candidate,
    call ``call``, with its reference record; for ONNX ``layer`` may also name the torch module
    whose nodes to cut out); ``candidate`` is the model (or a NumPy port's layers) and ``spec``
    what the test file loads it by (``package.module:object``, or the ``.onnx`` path)."""
    from ..compare import diff
    from .run import _policy, _ReferenceValues

    framework = framework_of_candidate(candidate)
    report = diff(candidate_trace, ref, rtol=rtol, atol=atol, align=align, rename=rename,
                  tolerances=tolerances)
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", layer).strip("_") or "root"

    def paired(record):
        found = next((p for p in report.pairs if p.kind == "forward" and p.a_name == record
                      and p.a_call == call), None)
        if found is None:
            names = sorted({p.a_name for p in report.pairs if p.kind == "forward"})
            raise TraceDiffError(f"extract: no forward record {layer!r} (call {call}) of "
                                 f"{candidate_trace} is paired with {ref}: give one of "
                                 f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
        return found

    if framework != "onnx":      # an ONNX layer may name a module: its record is found below
        paired(layer)
    with open_trace(candidate_trace) as trace_a, open_trace(ref) as trace_b:
        values = _ReferenceValues(report, trace_a, trace_b)
        builder = {"torch": _torch_case, "tensorflow": _keras_case, "onnx": _onnx_case,
                   "numpy": _numpy_case}[framework]
        case = builder(candidate, layer, call, values, trace_a, trace_b, stem)
        pair = paired(case.record)
        expected = values("forward", case.record, call)
        tolerance = _policy(rtol, atol, rename, tolerances).resolve(
            "forward", pair.a_name, pair.b_name, pair.dtype_a, pair.dtype_b, 1)
    os.makedirs(out_dir, exist_ok=True)
    case_path = os.path.join(out_dir, f"{stem}.h5")
    with Recorder(case_path, framework=framework, overwrite=True,
                  meta={"candidate": spec, "layer": layer, "call": call,
                        "reference": os.fspath(ref)}) as rec:
        for position, value in enumerate(case.args):
            _write_argument(rec, f"arg:{position}", value, argument=position)
        for key, value in case.kwargs.items():
            _write_argument(rec, f"kwarg:{key}", value, keyword=key)
        for name, value, meta in case.params:
            rec.param(name, value, **meta)
        rec.forward("expected", expected, layer=layer, call=call, rtol=tolerance.rtol,
                    atol=tolerance.atol, candidate=spec, framework=framework, **case.meta)
    for name, content in case.files.items():
        with open(os.path.join(out_dir, name), "wb") as handle:
            handle.write(content)
    test_path = os.path.join(out_dir, f"test_{stem}.py")
    with open(test_path, "w", encoding="utf-8") as handle:
        handle.write(TEST_FILE.format(layer=layer, candidate=spec, case_name=f"{stem}.h5",
                                      function=stem))
    return case_path, test_path


def _not_called(layer):
    return TraceDiffError(f"extract: layer {layer!r} was not called on the reference's inputs: "
                          "name a layer the model calls")


def _torch_case(model, layer, call, values, trace_a, trace_b, stem):
    from ..adapters.torch import replay as torch_replay
    from .run import _reference_inputs

    try:
        module = model.get_submodule("" if layer == "<root>" else layer)
    except AttributeError:
        raise _not_called(layer) from None
    arguments = {(layer, call): None}
    local, _ = torch_replay.replay(model, _reference_inputs(trace_b, "torch", model), values,
                                   {(layer, call)}, arguments=arguments)
    if arguments[(layer, call)] is None or (layer, call) not in local:
        raise _not_called(layer)
    args, kwargs = arguments[(layer, call)]
    params = [(name, p.detach().numpy(), {}) for name, p in module.named_parameters()]
    params += [(name, b.detach().numpy(), {"buffer": True}) for name, b in module.named_buffers()]
    return LayerCase(layer, list(args), dict(kwargs), params, {"training": module.training})


def _keras_case(model, layer, call, values, trace_a, trace_b, stem):
    """The layer at path ``layer`` (``block/dense``; a ``:0`` suffix picks one of several
    outputs) called in one substituted pass on the reference's (or ``trace_a``'s own) inputs."""
    from ..adapters.tensorflow.capture import layer_paths
    from ..adapters.tensorflow.extract import layer_arguments

    path, _, suffix = layer.partition(":")
    keras_layer = dict(layer_paths(model)).get(path)
    if keras_layer is None:
        raise _not_called(layer)
    inputs = [r.read() for r in trace_a if r.kind == "input" and r.step == trace_a[0].step]
    found = layer_arguments(model, inputs[0] if len(inputs) == 1 else inputs, values, path, call)
    if found is None:
        raise _not_called(layer)
    args, kwargs = found
    params = [(f"weight:{i}", np.asarray(w), {"position": i, "variable": getattr(v, "path", v.name)})
              for i, (v, w) in enumerate(zip(keras_layer.weights, keras_layer.get_weights()))]
    return LayerCase(layer, list(args), dict(kwargs), params,
                     {"path": path, "output": ":" + suffix if suffix else ""})


def _onnx_case(model, layer, call, values, trace_a, trace_b, stem):
    """The node whose record is ``layer`` (or the nodes of torch module ``layer``) as a
    standalone ``<stem>.onnx`` fed the reference's values."""
    from ..adapters.onnx.extract import layer_model, layer_record

    target, members = layer_record(trace_a, layer, call)
    if target is None:
        raise _not_called(layer)
    one, feeds = layer_model(model, trace_a, members, target, values)
    params = [(t.name, _initializer(t), {}) for t in one.graph.initializer]
    return LayerCase(target.name, [value for _, value in feeds], {}, params,
                     {"model": f"{stem}.onnx", "nodes": [r.name for r in members]},
                     {f"{stem}.onnx": one.SerializeToString()})


def _initializer(tensor):
    from onnx import numpy_helper
    return numpy_helper.to_array(tensor)


def _numpy_case(candidate, layer, call, values, trace_a, trace_b, stem):
    """The port's ``layers[layer]`` inputs: the reference's values of the records its record
    consumed (meta ``inputs``, else the record before it), as replay feeds it."""
    from .dataflow import consumed

    layers = numpy_layers(candidate)
    if layer not in layers:
        raise TraceDiffError(f"extract: the port's layers have no {layer!r}: give one of "
                             f"{', '.join(sorted(layers)[:8])}")
    record = next((r for r in trace_a if r.kind == "forward" and r.name == layer
                   and r.call == call), None)
    if record is None:
        raise _not_called(layer)
    args = []
    for source in consumed(trace_a, record):
        value = values(*source)
        if value is None:
            raise TraceDiffError(f"extract: {layer!r} consumes {source[0]} {source[1]!r}, which "
                                 "has no reference value: diff the traces to see why")
        args.append(value)
    return LayerCase(layer, args)


def _write_argument(rec, name, value, **meta):
    """A tensor argument as an ``input`` record; None or a plain number as a constant one."""
    if value is None or isinstance(value, (bool, int, float)):
        rec.input(name, np.asarray(0 if value is None else value), constant=True,
                  none=value is None, **meta)
        return
    array = _as_array(value)
    if array is None:
        raise TraceDiffError(f"extract: argument {name} is a {type(value).__name__}: only "
                             "tensors, numbers and None can be stored in a repro")
    rec.input(name, array, **meta)


def _as_array(value):
    """A torch or TensorFlow tensor or a NumPy array as an array; None for anything else."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and hasattr(value, "dtype") and hasattr(value, "shape"):
        return np.asarray(value.numpy())
    return None
