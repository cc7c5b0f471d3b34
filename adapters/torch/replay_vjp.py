"""Backward of a torch replay: each module call's vector-Jacobian product with the reference's
dL/d(its output), on the reference's inputs.

In the replay pass every tensor a module receives that is the value of a record is a fresh
leaf holding the reference's value, so autograd's graph is cut at every edge between two
modules. What stays connected is a module's own computation and the functional ops after the
records it consumed (``x.flatten(1)``, ``out += identity``, a container's glue around its
children). A module call's VJP therefore runs from its output back to the first *boundaries*
it meets: a substituted leaf, or the output of another module call (reached through a
functional op). What reaches a boundary is that call's contribution to dL/d(the boundary's
record); the reference's dL/d of a record is the sum over everything that consumed it, so the
contributions are summed per tensor and judged against it. A record some consumer of which
gives no contribution (a module without the reference's dL/d(output)) is left unjudged.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch
from torch.autograd.graph import GradientEdge

from tracediff.replays.backward import accumulate
from .convert import to_numpy

WALK_LIMIT = 50_000     # autograd nodes visited per module call at most


class Backward:
    """What the replay pass registers for the backward, and the VJPs run on it afterwards."""

    def __init__(self):
        self.boundary = {}      # (id(grad_fn), output_nr) -> key of the tensor it produced
        self.leaves = {}        # id(substituted leaf) -> key of the record it holds
        self.records = defaultdict(list)    # key -> [(record name, call)] (a container's alias)
        self.by_record = {}     # (record name, call) -> key
        self.given = {}         # id(substituted clone) -> (key of its record, version)
        self.calls = []         # (path, record name, call, [(output name, tensor)])
        self.alive = []         # keeps grad_fn nodes and leaves alive, so their ids stay unique

    def output(self, record_name, call, t):
        """``t``, a module call's output, is the value of the record ``(record_name, call)``;
        a container returning its child's tensor adds a second name for the same tensor."""
        if t.grad_fn is None:
            return
        edge = (id(t.grad_fn), t.output_nr)
        given = self.given.get(id(t))
        if given is not None and given[1] == t._version:
            # a module returning what it was given (``nn.Identity``): the same tensor as its
            # input's record, as in the reference, where the two records share one gradient
            self.boundary.setdefault(edge, given[0])
        key = self.boundary.setdefault(edge, ("tensor", edge))
        self.alive.append(t.grad_fn)
        self._named(key, record_name, call)

    def input(self, record_name, call, t):
        """``t``, a model input, is the value of the input record ``(record_name, call)``."""
        self._named(("input", record_name, call), record_name, call)

    def substitute(self, source, value):
        """A tensor holding ``value``, the reference's value of ``source`` (kind, name, call),
        to give a module: a clone of a fresh leaf, so the module may change it in place
        (``ReLU(inplace=True)``) and its graph ends at that leaf."""
        leaf = value.requires_grad_()
        self.leaves[id(leaf)] = self.by_record.get((source[1], source[2]),
                                                   ("input", source[1], source[2]))
        clone = leaf.clone()
        self.given[id(clone)] = (self.leaves[id(leaf)], clone._version)
        self.alive += [leaf, clone]
        return clone

    def called(self, path, record_name, call, named):
        """A module call, its outputs ``[(output record name, tensor)]``."""
        self.calls.append((path, record_name, call,
                           [(n, t) for n, t in named if t.grad_fn is not None]))

    def _named(self, key, record_name, call):
        if (record_name, call) not in self.records[key]:
            self.records[key].append((record_name, call))
        self.by_record.setdefault((record_name, call), key)

    def run(self, module, reference, param_grads, random=frozenset()):
        """``{(record name, call): (consumers, dL/d)}`` for every record whose consumers all
        gave their contribution; ``param_grads`` (``{name: gradient}``) gains each call's
        parameter gradients. ``random``: the paths of modules whose VJP is not the recorded
        one (dropout in training mode, replayed off: the reference's gradient has its mask);
        what they consumed is left unjudged."""
        sums, consumers, incomplete = {}, defaultdict(list), set()
        # a parameter shared by several modules (GPT-2's tied wte and lm_head) is recorded once,
        # under its first name: each call's share goes to that name
        recorded_as = {id(p): name for name, p in module.named_parameters()}
        modules = dict(module.named_modules())
        for path, record_name, call, named in self.calls:
            mine = [(n, t) for n, t in named
                    if self.records.get(self.boundary.get((id(t.grad_fn), t.output_nr)), [None])[0]
                    == (n, call)]    # an output a child returned belongs to the child
            hits, complete = self._first_boundaries([t for _, t in mine])
            seeds = [reference("backward", n, call) for n, _ in mine]
            if not complete or path in random or any(
                    s is None or tuple(s.shape) != tuple(t.shape) for s, (_, t) in zip(seeds, mine)):
                incomplete.update(key for key, _ in hits)
                continue
            params = [(recorded_as.get(id(p), f"{path}.{n}" if path else n), p)
                      for n, p in modules[path].named_parameters(recurse=False) if p.requires_grad]
            if not mine or (not hits and not params):
                continue
            grad_outputs = [torch.from_numpy(s if s.flags.writeable else s.copy()).to(
                dtype=t.dtype, device=t.device) for s, (_, t) in zip(seeds, mine)]
            outputs = [t for _, t in mine]
            edges = [edge for _, edge in hits]
            # nothing to stop at and one output, which its seed reaches alone: no hooks needed
            plain = len(outputs) == 1 and not any(isinstance(e, GradientEdge) for e in edges)
            with (nullcontext({}) if plain else _stopped_at(edges, zip(outputs, grad_outputs))) \
                    as arrived:
                found = torch.autograd.grad(outputs, [p for _, p in params] + edges, grad_outputs,
                                            retain_graph=True, allow_unused=True)
            found = found[:len(params)] + tuple(
                arrived.get(_edge_key(edge), g) for (_, edge), g in zip(hits, found[len(params):]))
            for (name, _), g in zip(params, found):
                if g is not None:
                    param_grads[name] = accumulate(param_grads.get(name), to_numpy(g))
            for (key, _), g in zip(hits, found[len(params):]):
                if g is None:
                    continue
                sums[key] = accumulate(sums.get(key), to_numpy(g))
                if record_name not in consumers[key]:
                    consumers[key].append(record_name)
        return {record: (consumers[key], sums[key]) for key, value in sums.items()
                if key not in incomplete for record in self.records.get(key, ())}

    def _first_boundaries(self, outputs):
        """``([(key, edge to differentiate against)], complete)``: the boundaries the outputs'
        graph reaches first (substituted leaves, other calls' outputs), each once."""
        hits, seen = {}, set()
        own = {(id(t.grad_fn), t.output_nr) for t in outputs}   # one output computed from another
        stack = [edge for t in outputs for edge in t.grad_fn.next_functions]
        while stack:
            if len(seen) > WALK_LIMIT:
                return list(hits.values()), False
            node, nr = stack.pop()
            if node is None or (id(node), nr) in seen:
                continue
            seen.add((id(node), nr))
            key = self.boundary.get((id(node), nr))
            if key is not None and (id(node), nr) not in own:
                hits[(id(node), nr)] = (key, GradientEdge(node, nr))
                continue
            variable = getattr(node, "variable", None)
            if variable is not None:
                key = self.leaves.get(id(variable))
                if key is not None:     # one entry per leaf: ``attn(x, x, x)`` has three
                    hits[(id(node), nr)] = (key, variable)
                continue
            stack.extend(node.next_functions)
        return list(hits.values()), True


def _edge_key(edge):
    return (id(edge.node), edge.output_nr) if isinstance(edge, GradientEdge) else None


@contextmanager
def _stopped_at(edges, seeded=()):
    """A context in which the gradient reaching each of ``edges`` (other calls' outputs) stops
    there: it is kept in the dict yielded, ``{(id(node), output_nr): gradient}``, and nothing
    flows on through the node. Autograd differentiates through everything, so without this,
    where one boundary lies on a path to another (attention weights an attention module
    returns and its own matmul reads, between c_attn and c_proj), the farther one's gradient
    would also count the path through the nearer one, which that one's own call gives.
    ``seeded``: ``(output, seed)`` of the call's own outputs; each gets its seed alone. Where
    one is computed from another (BERT's attention returns the probabilities its own matmul
    reads), the path between them is already in the seed: the reference's dL/d of a tensor
    sums every use of it."""
    arrived, handles = {}, []
    stops, seeds = defaultdict(set), defaultdict(dict)
    for edge in edges:
        if isinstance(edge, GradientEdge):
            stops[edge.node].add(edge.output_nr)
    for output, seed in seeded:
        seeds[output.grad_fn][output.output_nr] = seed

    def hook_for(node):
        def hook(grad_outputs):
            out = list(grad_outputs)
            for nr in stops.get(node, ()):
                if out[nr] is not None:
                    arrived[(id(node), nr)] = out[nr]
                    out[nr] = torch.zeros_like(out[nr])
            for nr, seed in seeds.get(node, {}).items():
                out[nr] = seed
            return tuple(out)
        return hook

    try:
        for node in {**stops, **seeds}:
            handles.append(node.register_prehook(hook_for(node)))
        yield arrived
    finally:
        for handle in handles:
            handle.remove()
