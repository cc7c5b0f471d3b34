"""Recording ONNX gradients: run the gradient model (whole, or group by group within a memory
budget) and write ``loss``, ``backward`` and ``param_grad`` records under the forward records'
names and meta."""
from __future__ import annotations

import os
from collections import defaultdict

import onnx
from onnx import helper

from ....errors import TraceDiffError
from .forward import short_error
from .graph import _parameter_aliases, analyse, build_from, target_feed


def record_backward(model, feeds, rec, *, loss, target=None, names=None, save_grad_model=None,
                    providers=None, max_memory=None) -> None:
    """Run the gradient model on ``feeds`` and write ``loss``, ``backward`` (loss to input) and
    ``param_grad`` records to the open recorder ``rec``.

    ``names`` maps an ONNX tensor name to the (record name, meta) of its forward record; backward
    records reuse both (tensors missing from it are not written). Without it the tensor name is
    the record name. ``max_memory`` (bytes) bounds the forward activations and gradients held
    at once: when the graph's do not fit, the backward runs group by group as gradient
    checkpointing does (see ``groups``); None runs one gradient model.
    """
    analysis = analyse(model, loss, feeds=feeds, providers=providers, max_memory=max_memory)
    writer = RecordWriter(model, rec, names, analysis)
    if max_memory is not None:
        from .groups import GroupedBackward

        grouped = GroupedBackward.plan(analysis, loss, feeds, max_memory)
        if grouped is not None:
            if save_grad_model:
                _save(build_from(analysis, loss).model, save_grad_model)
            grouped.run(feeds, target, writer, providers)
            return
    _record_single(build_from(analysis, loss), feeds, loss, target, writer, save_grad_model,
                   providers)


def _record_single(plan, feeds, loss, target, writer, save_grad_model, providers):
    """One gradient model, one onnxruntime run: the fastest path, when memory allows."""
    import onnxruntime as ort

    run_feeds = dict(feeds)
    run_feeds.update(target_feed(plan, loss, target))
    if save_grad_model:
        _save(plan.model, save_grad_model)
    try:
        session = ort.InferenceSession(plan.model.SerializeToString(),
                                       providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        raise TraceDiffError(f"onnxruntime cannot load the gradient model ({short_error(exc)}); "
                             "save it with save_grad_model= and report the node named") from None
    output_names = [o.name for o in plan.model.graph.output]
    try:
        values = session.run(output_names, run_feeds)
    except Exception as exc:
        raise TraceDiffError(f"onnxruntime failed running the gradient model "
                             f"({short_error(exc)}); check the target and input shapes") from None
    by_name = dict(zip(output_names, values))
    del values
    writer.loss(by_name.pop(plan.loss_output), loss)
    remaining = defaultdict(int)
    for _, out in plan.grads + plan.param_grads:
        remaining[out] += 1

    def take(out):  # free each array once its last record is written
        remaining[out] -= 1
        return by_name.pop(out) if remaining[out] == 0 else by_name[out]

    for tensor, out in plan.grads:
        writer.backward(tensor, take(out))
    for init, out in plan.param_grads:
        writer.param_grad(init, take(out))


class RecordWriter:
    """Writes gradient records under their forward records' names, calls and meta."""

    def __init__(self, model, rec, names, analysis):
        self.rec, self.names = rec, names
        forward_order = [o for node in analysis.model.graph.node for o in node.output if o]
        self.calls = _call_indices(forward_order, names)
        self.metas = _param_metas(model, analysis.parameters)
        self.folded = _folded_initializers(model)

    def loss(self, value, loss, groups=1):
        """The loss record; meta ``gradient_groups``: how many groups the backward ran in."""
        self.rec.loss(value, loss=loss, gradient_groups=groups)

    def backward(self, tensor, value):
        if self.names is None:
            self.rec.backward(tensor, value, onnx_output=tensor)
        elif tensor in self.names:
            name, meta = self.names[tensor]
            self.rec.backward(name, value, call=self.calls[tensor], **dict(meta or {}))

    def param_grad(self, init, value):
        if init not in self.folded:  # dL/d a fused constant is no gradient of a torch parameter
            self.rec.param_grad(init, value, **self.metas[init])


def _folded_initializers(model):
    """Initializers an exporter's constant folding rewrote (a Conv with its BatchNorm fused in):
    the forward adapter writes no ``param`` record for them, and they get no ``param_grad``."""
    try:
        from ..origins import folded_initializers, is_legacy_export
    except ImportError:
        return set()
    names = {t.name for t in model.graph.initializer}
    return folded_initializers(model.graph.node, names, is_legacy_export(model))


def _param_metas(model, initializers):
    """The meta the forward adapter gives each initializer's ``param`` record (role, module,
    layout), so a ``param_grad`` carries the same."""
    try:
        from ..meta import param_meta
    except ImportError:  # a build without the forward adapter: the role from the name suffix
        return {name: {"role": parameter_role(name)} for name in initializers}
    wanted, consumers = set(initializers), defaultdict(list)
    for node in model.graph.node:
        ints = {a.name: helper.get_attribute_value(a) for a in node.attribute
                if a.type == onnx.AttributeProto.INT}
        for position, tensor in enumerate(node.input):
            if tensor in wanted:
                consumers[tensor].append((node.op_type, position, ints))
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes.update({alias: shapes[source]
                   for alias, source in _parameter_aliases(model.graph).items()})
    from ..origins import is_legacy_export, parameter_owners
    owners = parameter_owners(model, is_legacy_export(model))
    return {name: {**param_meta(name, shapes.get(name, ()), consumers[name], owners.get(name)),
                   "onnx_output": name} for name in initializers}


def parameter_role(name):
    """The canonical role of an initializer from its torch-style suffix (None if unknown)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("running_mean", "running_var", "bias"):
        return leaf
    return "weight" if leaf.endswith("weight") else None


def _call_indices(forward_order, names):
    calls, seen = {}, defaultdict(int)
    for tensor in forward_order:
        if names is not None and tensor in names:
            record = names[tensor][0]
            calls[tensor] = seen[record]
            seen[record] += 1
    return calls


def _save(model, path):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise TraceDiffError(f"cannot save the gradient model to {path}: folder {folder} "
                             "does not exist")
    try:
        onnx.save(model, path)
    except ValueError:  # over protobuf's 2 GB: weights go next to it
        onnx.save(model, path, save_as_external_data=True,
                  location=os.path.basename(path) + ".data")
