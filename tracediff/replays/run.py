"""``td.replay``: record the candidate on the reference's inputs, align it with the reference,
then run each aligned candidate layer on the reference's values of what it consumes, and judge
that layer's *local* error."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from ..quantization import quantized
from ..errors import TraceDiffError
from ..memory import InMemory
from ..trace import Trace, open_trace
from .backward import LocalBackward, input_gradients
from .layouts import assumed
from .local import judge, root_causes, settle_introduced, skipped
from .shortcut import needs_run, put_recorded, random_in_training, unchanged, without_seeds


def replay(candidate, ref, *, inputs=None, loss_fn=None, layers=None, rtol=None, atol=None,
           align="auto", rename=None, tolerances=None, keep=None, target=None):
    """Replay ``candidate`` (a torch module, a Keras model, a Flax module, an ONNX or LiteRT
    model, or a NumPy ``fn(rec, inputs)`` with ``layers``) against the reference trace ``ref``;
    return the diff report, its pairs carrying ``local`` and the report ``root_causes``.

    ``inputs``: what the candidate is run on (default: the reference's own ``input`` records).
    ``layers``: NumPy only, ``{layer name: fn(*inputs)}`` or objects with ``forward`` and
    ``backward`` (docs/replay.md) for the layers to replay.
    ``keep``: a path to keep the candidate's trace at (default: it is kept in memory, or in a
    temporary file for a reference above IN_MEMORY_MAX bytes of tensors).
    ``loss_fn``: for an ONNX candidate, the name of the ONNX adapter's loss (``"cross_entropy"``,
    ``"mse"``, ``"sum"``) and ``target`` its target: the candidate then records its gradients
    and its nodes are replayed backward too.
    """
    from ..adapters.base import framework_of

    framework = framework_of(candidate)
    if framework is None:
        raise TraceDiffError(
            f"replay: cannot replay a {type(candidate).__name__}; give a torch.nn.Module, an "
            ".onnx path or onnx.ModelProto, a .tflite path, or a NumPy function fn(rec, inputs) "
            "with layers={name: fn}")
    if framework == "numpy" and not layers:
        raise TraceDiffError("replay: a NumPy candidate needs layers={name: fn(*inputs)}: "
                             "the functions to run each layer on the reference's inputs")
    reference = ref if isinstance(ref, Trace) else open_trace(ref)
    try:
        _check_replayable(reference)
        run_inputs = inputs if inputs is not None else _reference_inputs(reference, framework,
                                                                          candidate)
        with tempfile.TemporaryDirectory(prefix="tracediff-replay-") as folder:
            path = keep or _destination(reference, folder)
            _record(framework, candidate, run_inputs, path, loss_fn, target)
            with (path.open() if isinstance(path, InMemory) else open_trace(path)) as trace_a:
                report = _replayed(candidate, framework, trace_a, reference, run_inputs, layers,
                                   dict(rtol=rtol, atol=atol, align=align, rename=rename,
                                        tolerances=tolerances))
        report.a = {**report.a, "path": keep or f"{type(candidate).__name__} (replayed)"}
    finally:
        if reference is not ref:
            reference.close()
    return report


def _replayed(candidate, framework, trace_a, reference, run_inputs, layers, options):
    """The diff of the candidate's trace ``trace_a`` with the reference, each aligned layer
    replayed and judged, and the root causes."""
    from ..compare import diff

    report = diff(trace_a, reference, **options)
    values = _ReferenceValues(report, trace_a, reference)
    wanted = {}      # a candidate record can pair with several (a block and its last layer)
    for pair in report.pairs:
        if pair.kind == "forward":
            wanted.setdefault((pair.a_name, pair.a_call), []).append(pair)
    same = unchanged(report, trace_a, values.layouts, wanted, runs_alone=(
        lambda name: not hasattr((layers or {}).get(name), "backward")), framework=framework)
    policy = _policy(options["rtol"], options["atol"], options["rename"], options["tolerances"])
    if needs_run(report, wanted, same):
        local, grads, input_grads, why = _run_layers(
            framework, candidate, run_inputs, without_seeds(values, same.quiet), wanted, report,
            trace_a, layers, recorded=same.forward)
    else:     # nothing to run again: every local result is the recorded one
        local, grads, input_grads, why = {}, {}, {}, ""
    same.drop_from(local, grads, input_grads)      # not judged again
    _judge_all(report, reference, values, wanted, (local, grads, input_grads, why), framework,
               policy)
    put_recorded(report, same, policy)
    settle_introduced(report)
    report.root_causes = root_causes(report.pairs)
    report.replayed = True
    return report


IN_MEMORY_MAX = 1 << 30   # bytes of the reference's tensors: a candidate trace up to this size
                          # stays in memory, a larger one goes to a temporary file


def _destination(reference, folder):
    """Where the candidate is recorded: in memory (the HDF5 writes, flushes and reads back
    cost about a third of a recording), or a file in ``folder`` for a large model."""
    if sum(r.nbytes for r in reference) <= IN_MEMORY_MAX:
        return InMemory("candidate (in memory)")
    return os.path.join(folder, "candidate.h5")


RANDOM = "a dropout recorded in training mode: its mask was random, and replay runs it off"


def _judge_all(report, reference, values, wanted, results, framework, policy):
    """Every forward pair's ``local`` (its candidate record's local output, or why it has
    none), and the gradients replay produced: dL/d of the consumed records whose every
    consumer was replayed backward (the sum of their VJPs) and the parameters' gradients."""
    local, grads, input_grads, why = results
    no_gradient = {
        "numpy": "no layer with a backward in layers= gave it a gradient",
    }.get(framework, "no call of its layer had the reference's dL/d(output)")
    for key, pairs in wanted.items():
        for pair in pairs:
            if random_in_training(values.trace_a[pair.a_index]):
                pair.local = skipped(RANDOM)
                continue
            pair.local = (judge(pair, local[key], reference[pair.b_index], policy,
                                values.layouts.get(id(pair), False))
                          if key in local else skipped(why))
    for pair in report.pairs:
        if pair.kind == "backward" and (pair.a_name, pair.a_call) in input_grads:
            by, value = input_grads[(pair.a_name, pair.a_call)]
            pair.local = judge(pair, value, reference[pair.b_index], policy,
                               values.layouts.get(id(pair), False), by=by)
        elif pair.kind == "param_grad":
            pair.local = (judge(pair, grads[pair.a_name], reference[pair.b_index], policy,
                                values.layouts.get(id(pair), False))
                          if pair.a_name in grads else skipped(no_gradient))


def _run_layers(framework, candidate, run_inputs, values, wanted, report, trace_a, layers,
                recorded=frozenset()):
    """The adapter's replay: ``(local outputs, local parameter gradients, local dL/d of
    consumed records, why a pair without a local output was skipped)``. ``recorded``: the
    forward records whose local output is their recorded one (``shortcut``), which the
    adapters that run the whole model need not hand back."""
    gradients = any(p.kind in ("param_grad", "backward") for p in report.pairs)
    outputs = set(wanted) - set(recorded)
    if framework == "torch":
        from ..adapters.torch import replay as torch_replay
        input_grads = {}
        local, grads = torch_replay.replay(
            candidate, run_inputs, values, outputs, input_grads=input_grads,
            gradients=gradients)
        return (local, grads, input_grads,
                "not run: a module's output through a functional op, or an op record")
    backward = LocalBackward() if gradients else None
    if framework == "tensorflow":
        from ..adapters.tensorflow import replay as keras_replay
        local = keras_replay.replay(candidate, run_inputs, values, outputs, backward)
        return (local, *_gradients(trace_a, backward),
                "not run: a layer's output through an op that is no layer")
    if framework == "jax":
        from ..adapters.jax import replay as jax_replay
        if backward is not None:
            backward.sums = {}
        local = jax_replay.replay(candidate, run_inputs, values, outputs, backward=backward)
        return (local, *_gradients(trace_a, backward),
                "not run: a module's output through plain jnp code, or no module's output")
    if framework == "onnx":
        from ..adapters.onnx import replay as onnx_replay
        local = onnx_replay.replay(candidate, values, set(wanted), trace_a)
        grads, input_grads = (onnx_replay.local_backward(candidate, values, trace_a)
                              if gradients else ({}, {}))
        return local, grads, input_grads, "not a node output of the candidate"
    if framework == "litert":
        from ..adapters.litert import replay as litert_replay
        return (litert_replay.replay(candidate, values, set(wanted), trace_a), {}, {},
                "not an op output of the candidate")
    return (*_numpy_layers(layers, trace_a, values, wanted), "no function in layers= for it")


def _gradients(trace_a, backward):
    """``(parameter gradients, dL/d of consumed records)`` an adapter's ``LocalBackward`` gave."""
    if backward is None:
        return {}, {}
    if backward.sums is not None:
        return backward.params, backward.sums
    return backward.params, input_gradients(trace_a, backward)


def _check_replayable(reference):
    stats_only = [r.name for r in reference if r.kind in ("forward", "input") and not r.stored]
    if stats_only:
        raise TraceDiffError(
            f"replay: {reference.path} holds statistics only for {stats_only[0]!r} (recorded "
            "with values=False): replay runs layers on the reference's tensors; record the "
            "reference again with values=True")


def _reference_inputs(reference, framework, candidate):
    found = [(r.name, r.read()) for r in reference if r.kind == "input" and r.step == _first_step(reference)]
    if not found:
        raise TraceDiffError(f"replay: {reference.path} holds no input record: pass inputs=")
    if framework == "torch":
        from ..adapters.torch.replay import as_inputs
        return as_inputs(found)
    if framework == "onnx":
        from ..adapters.onnx.replay import graph_inputs
        names = graph_inputs(candidate)
        if len(names) != len(found):
            raise TraceDiffError(
                f"replay: the ONNX model takes {len(names)} input(s) ({', '.join(names)}) but "
                f"{reference.path} holds {len(found)}: pass inputs={{name: array}}")
        return dict(zip(names, (value for _, value in found)))
    if len(found) == 1:
        return found[0][1]
    if framework == "tensorflow":
        return [value for _, value in found]
    return {name.partition(":")[2] or name: value for name, value in found}


def _first_step(reference):
    return next(iter(reference)).step


FORWARD_ONLY = {"litert": "a LiteRT"}    # an inference runtime: no loss_fn


def _record(framework, candidate, inputs, path, loss_fn, target=None):
    """The candidate's own trace on ``inputs``, through its adapter (``base.load``)."""
    from ..adapters.base import ONNX_LOSSES, load

    if framework in FORWARD_ONLY and loss_fn is not None:
        raise TraceDiffError(f"replay: {FORWARD_ONLY[framework]} candidate replays forward only: "
                             "drop loss_fn")
    if framework == "onnx" and loss_fn is not None and loss_fn not in ONNX_LOSSES:
        raise TraceDiffError(f"replay: an ONNX candidate's loss is named, not {loss_fn!r}: "
                             "'cross_entropy', 'mse' or 'sum' (the ONNX adapter's losses), with "
                             "its target (loss_fn=NAME, target=ARRAY; --loss NAME --target FILE.npy)")
    adapter = load(framework)
    if framework == "onnx" and loss_fn is not None:
        adapter.record(candidate, inputs, path, loss=loss_fn, target=target, overwrite=True)
        return
    if framework == "torch":
        from ..adapters.torch.replay import kept_buffers
        with kept_buffers(candidate):
            adapter.record(candidate, inputs, path, loss_fn=loss_fn, overwrite=True)
    elif framework in ("tensorflow", "jax"):
        adapter.record(candidate, inputs, path, loss_fn=loss_fn, overwrite=True)
    else:     # ONNX, LiteRT, and a NumPy port, which records its own loss
        adapter.record(candidate, inputs, path, overwrite=True)


def _policy(rtol, atol, rename, tolerances):
    from ..compare.engine import _rules, _tolerances
    from ..compare.tolerances import TolerancePolicy
    rules = _rules(rename)
    return TolerancePolicy(rtol, atol, list(rules.tolerances) + _tolerances(tolerances))


class _ReferenceValues:
    """``values(kind, name, call)``: the reference's value of a candidate record, rearranged
    into the candidate's layout; None where the record has no usable pair."""

    def __init__(self, report, trace_a, trace_b):
        self.trace_a, self.trace_b = trace_a, trace_b
        self.layouts = assumed(report, trace_a)
        self.pairs = {(p.kind, p.a_name, p.a_call): p for p in report.pairs
                      if p.kind in ("forward", "input", "backward") and id(p) in self.layouts
                      and p.status != "nonfinite"}
        # a quantized record takes the reference's float value: its replay quantizes it
        self.dtypes = {(r.kind, r.name, r.call): None if quantized(r) else r.dtype
                       for r in trace_a if r.kind in ("forward", "input", "backward")}

    def __call__(self, kind, name, call):
        pair = self.pairs.get((kind, name, call))
        if pair is None:
            return None
        value = self.trace_b[pair.b_index].read()
        layout = self.layouts[id(pair)]
        if layout is not None:
            value = layout.invert(value, pair.shape_a)
        return as_dtype(value, self.dtypes.get((kind, name, call)))


def as_dtype(value, dtype):
    """``value`` cast to the candidate record's dtype name, where NumPy knows it."""
    try:
        return value.astype(np.dtype(dtype), copy=False) if dtype else value
    except TypeError:
        return value


def _numpy_layers(layers, trace_a, values, wanted):
    """Each NumPy layer run on the reference's values of the records it consumed: ``(local
    outputs, local parameter gradients, local input gradients)``. A layer is a function
    ``fn(*inputs)``, or an object with ``forward(*inputs)`` and ``backward(d_output) ->
    (d_inputs, {parameter record name: gradient})``, whose backward then runs on the
    reference's dL/d(its output). ``d_inputs`` (one array, or one per input) is each consumed
    record's share of its dL/d; a record is judged where every layer consuming it gave its
    share (``backward.input_gradients``: the reference's gradient of a fan-out is the sum)."""
    from .dataflow import consumed
    backward = LocalBackward()
    local = {}
    for name, call in wanted:
        layer = layers.get(name)
        sources = consumed(trace_a, trace_a.get(name, call=call, kind="forward")) \
            if layer is not None else []
        if not sources:
            continue
        arguments = [values(*source) for source in sources]
        if any(a is None for a in arguments):
            continue
        forward = getattr(layer, "forward", layer)
        local[(name, call)] = np.asarray(forward(*arguments))
        seed = values("backward", name, call) if hasattr(layer, "backward") else None
        if seed is None:
            continue
        d_inputs, parameter_grads = layer.backward(seed)
        for param, grad in (parameter_grads or {}).items():
            backward.param(param, grad)
        if not isinstance(d_inputs, (tuple, list)):
            d_inputs = (d_inputs,)
        if len(d_inputs) == len(sources) and all(d is not None for d in d_inputs):
            for source, d in zip(sources, d_inputs):
                backward.contribute(name.partition(":")[0], call, source, d)
            backward.complete.add((name.partition(":")[0], call))
    return (local, *_gradients(trace_a, backward))
