"""Memory-bounded ONNX backward, as gradient checkpointing does it.

The prepared graph is cut into consecutive groups (``plan.plan_checkpoints``) whose
forward outputs fit half of ``max_memory`` (their gradients take the other half), at the cuts
that leave the fewest bytes crossing from group to group. Then

- forward: the groups run in order keeping only the *boundary* tensors (what a later group
  reads, and the loss input), not every intermediate;
- loss: a tiny model turns the loss input into the loss and its gradient (the seed);
- backward: for the groups in reverse order, a small model (built once per group) recomputes
  the group's forward from its boundary inputs and runs the VJP of its nodes, seeded by the
  gradients of its outputs that later groups or the loss read. It returns the gradients of the
  group's node outputs (written as ``backward`` records), of its boundary inputs (summed into
  what earlier groups receive as seeds) and of the parameters it reads (summed over groups and
  written once the earliest group reading them is done).

Peak memory is about the boundary tensors plus one group's activations and gradients; the cost
is about one extra forward. The rules and the emitter are ``graph``'s, unchanged.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper

from ..plan import estimate_sizes, node_reads, plan_checkpoints, typed_input
from .forward import run_forward, run_model
from .graph import _LOSS_BUILDERS, GradientPlan, _live, differentiate, target_feed


class GroupedBackward:
    """The groups of one analysed graph and, built on first use, each group's gradient model."""

    def __init__(self, analysis, loss, groups):
        self.analysis, self.loss, self.groups = analysis, loss, groups
        graph = analysis.model.graph
        self.nodes = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.boundary = {analysis.loss_input}
        for group in groups:
            self.boundary.update(group.inputs)
        self.group_of = {t: i for i, group in enumerate(groups) for t in group.outputs}
        # the earliest group reading a parameter: its gradient is complete once that group ran
        self.first_reader = {}
        parameters = set(analysis.parameters)
        for position in reversed(range(len(groups))):
            for index in groups[position].nodes:
                for tensor in node_reads(self.nodes[index]):
                    if tensor in parameters:
                        self.first_reader[tensor] = position
        # the earliest group reading a boundary tensor: it can go once that group ran
        self.last_use = {}
        for position in reversed(range(len(groups))):
            for tensor in groups[position].inputs:
                self.last_use[tensor] = position
        self.loss_stage = _loss_stage(analysis, loss)
        self._models = {}

    @classmethod
    def plan(cls, analysis, loss, feeds, budget):
        """The grouped backward for ``budget`` bytes, or None when one group holds the graph
        (then the single gradient model is both faster and within the budget)."""
        model = analysis.model
        graph = model.graph
        types = {v.name: v.type for v in list(graph.value_info) + list(graph.output)}
        known = {name: np.asarray(array).nbytes for name, array in feeds.items()}
        sizes = estimate_sizes(list(graph.node), types, known)
        groups = plan_checkpoints(list(graph.node), sizes, max(1, budget // 2),
                                  {t.name for t in graph.initializer}, [analysis.loss_input])
        return cls(analysis, loss, groups) if len(groups) > 1 else None

    # -- running --------------------------------------------------------------------------------
    def run(self, feeds, target, writer, providers):
        target_values = target_feed(self.loss_stage, self.loss, target)
        kept = self._forward(feeds, providers)
        loss_input = self.analysis.loss_input
        stage = self.loss_stage
        loss_value, seed = run_model(stage.model, [stage.loss_output, stage.seed_output],
                                {loss_input: kept[loss_input], **target_values}, providers)
        writer.loss(loss_value, self.loss, len(self.groups))
        seeds = {loss_input: seed}
        del seed
        param_sums = {}
        for position in reversed(range(len(self.groups))):
            self._backward_group(position, kept, seeds, param_sums, writer, providers)

    def _forward(self, feeds, providers):
        """Run every group, keeping only the boundary tensors."""
        kept = dict(feeds)
        for _, values in run_forward(self.analysis.model, self.groups, kept, self.boundary,
                                     providers):
            kept.update(values)
        return kept

    def _backward_group(self, position, kept, seeds, param_sums, writer, providers):
        group = self.groups[position]
        built = self._model(position, kept)
        feeds = {t: kept[t] for t in group.inputs}
        for tensor, name in built.seeds:
            value = seeds.pop(tensor, None)
            if value is None:  # a later reader passed no gradient back (a cut branch)
                value = np.zeros_like(kept[tensor])
            feeds[name] = value
        outputs = built.outputs()
        values = {}
        if outputs:
            values = dict(zip(outputs, run_model(built.with_weights(self.initializers), outputs,
                                            feeds, providers)))
        values.update(feeds)
        for tensor, out in built.grads:
            writer.backward(tensor, values[out])
        for tensor, out in built.input_grads:
            value = values[out]
            seeds[tensor] = value if tensor not in seeds else seeds[tensor] + value
        for init, out in built.param_grads:
            value = values[out]
            param_sums[init] = value if init not in param_sums else param_sums[init] + value
        del values, feeds
        for init in self.analysis.parameters:
            if self.first_reader.get(init) == position and init in param_sums:
                writer.param_grad(init, param_sums.pop(init))
        for tensor in group.outputs:
            kept.pop(tensor, None)
        for tensor in group.inputs:
            if self.last_use.get(tensor) == position and tensor not in self.group_of:
                kept.pop(tensor, None)  # a graph input: no earlier group reads it

    # -- building -------------------------------------------------------------------------------
    def _model(self, position, kept):
        if position not in self._models:
            self._models[position] = self._build(position, kept)
        return self._models[position]

    def _build(self, position, kept):
        """One group's forward from its boundary inputs plus the VJP of its nodes."""
        analysis, group = self.analysis, self.groups[position]
        mine = {tuple(self.nodes[i].output) for i in group.nodes}
        path = [node for node in analysis.path if tuple(node.output) in mine]
        g = analysis.emitter()
        seeds = self._seed_inputs(g, position, kept)
        pending = defaultdict(list)
        for tensor, name in seeds:
            pending[tensor].append(name)
        grads = differentiate(g, analysis, path, pending)
        g.scope = "params"
        parameters = set(analysis.parameters)
        input_grads = [(t, g.accumulate(t, pending[t])) for t in group.inputs
                       if pending.get(t) and t not in parameters and t in self.group_of]
        param_grads = [(p, g.accumulate(p, pending[p])) for p in analysis.parameters
                       if pending.get(p)]
        return self._assemble(position, g, kept, seeds, grads, input_grads, param_grads)

    def _seed_inputs(self, g, position, kept):
        """``[(group output, input name)]``: the outputs whose gradient later groups or the
        loss pass in."""
        analysis, seeds = self.analysis, []
        for tensor in self.groups[position].outputs:
            if tensor not in self.boundary or tensor not in analysis.reaches:
                continue
            if tensor != analysis.loss_input and not self._read_later(tensor, position):
                continue
            name = g.fresh(f"{tensor}_grad_in")
            g.info[name] = (helper.np_dtype_to_tensor_dtype(kept[tensor].dtype),
                            kept[tensor].shape)
            seeds.append((tensor, name))
        return seeds

    def _assemble(self, position, g, kept, seeds, grads, input_grads, param_grads):
        """The group's model: its boundary inputs and seeds in, the gradients out (a gradient
        that is a seed comes straight from the feeds); the forward initializers are attached
        only when it runs, so the cache holds no weights."""
        group = self.groups[position]
        inputs = [typed_input(t, kept[t]) for t in group.inputs]
        inputs += [helper.make_tensor_value_info(name, *g.info[name]) for _, name in seeds]
        fed = {v.name for v in inputs}
        constants = {t.name for t in g.initializers}
        outputs, copies = [], []
        for _, name in grads + input_grads + param_grads:
            if name in fed or name in outputs:
                continue
            if name in constants or name in group.initializers:  # outputs come from nodes
                copies.append(helper.make_node("Identity", [name], [name + "/out"],
                                               name=name + "/out"))
                name += "/out"
            outputs.append(name)
        renamed = {c.input[0]: c.output[0] for c in copies}
        forward = [self.nodes[i] for i in group.constants + group.nodes]
        nodes = _live(forward + g.nodes + copies, outputs)
        read = {t for node in nodes for t in node_reads(node)}
        model = self.analysis.model
        graph = helper.make_graph(
            nodes, f"{model.graph.name or 'model'}_group{position}_gradients", inputs,
            [onnx.ValueInfoProto(name=name) for name in outputs],
            initializer=[t for t in g.initializers if t.name in read])
        built = helper.make_model(graph, opset_imports=list(model.opset_import),
                                  producer_name="tracediff")
        built.ir_version = model.ir_version
        built.functions.extend(model.functions)
        return GroupGradient(built, [t for t in group.initializers if t in read], seeds, *(
            [(t, renamed.get(n, n)) for t, n in pairs]
            for pairs in (grads, input_grads, param_grads)))

    def _read_later(self, tensor, position):
        return any(tensor in group.inputs for group in self.groups[position + 1:])


class GroupGradient:
    """One group's gradient model and which of its inputs and outputs hold what."""

    def __init__(self, model, weights, seeds, grads, input_grads, param_grads):
        self.model = model              # without the forward initializers (``weights``)
        self.weights = weights          # names of the forward initializers it reads
        self.seeds = seeds              # [(group output, seed input name)]
        self.grads = grads              # [(node output, gradient name)], last node first
        self.input_grads = input_grads  # [(boundary input, gradient name)]
        self.param_grads = param_grads  # [(parameter, gradient name)]

    def outputs(self):
        return [o.name for o in self.model.graph.output]

    def with_weights(self, initializers):
        """The runnable model: ``model`` plus its forward initializers."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        model.graph.initializer.extend(initializers[name] for name in self.weights)
        return model


def _loss_stage(analysis, loss):
    """A model from the loss input (and target) to the loss and its gradient, ``seed``."""
    g = analysis.emitter()
    g.scope = "loss"
    y = analysis.loss_input
    elem, shape = g.info.get(y, (onnx.TensorProto.UNDEFINED, None))
    target, loss_name, seed = _LOSS_BUILDERS[loss](g, y, g.fresh("target"))
    loss_out, seed_out = g.fresh("loss"), g.fresh("seed")
    nodes = g.nodes + [helper.make_node("Identity", [loss_name], [loss_out], name=loss_out),
                       helper.make_node("Identity", [seed], [seed_out], name=seed_out)]
    inputs = [helper.make_tensor_value_info(y, elem, None if shape is None else [
        d if isinstance(d, int) else None for d in shape])]
    inputs += [target] if target is not None else []
    graph = helper.make_graph(_live(nodes, [loss_out, seed_out]), "loss", inputs,
                              [helper.make_tensor_value_info(loss_out, elem, []),
                               onnx.ValueInfoProto(name=seed_out)],
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=list(analysis.model.opset_import),
                              producer_name="tracediff")
    model.ir_version = analysis.model.ir_version
    classes = shape[-1] if shape and isinstance(shape[-1], int) else None
    stage = GradientPlan(model, loss_out, target.name if target is not None else None, [], [], [],
                         classes)
    stage.seed_output = seed_out
    return stage
