"""Which records a module call consumed (meta ``inputs``, docs/conventions.md): the trace's
dataflow graph.

A tensor that enters a module is traced back to a record by object identity (a weak reference
to the tensor: an entry dies with its tensor, so a reused ``id`` never matches, and recording
keeps no activation alive that the model would have freed), then through its view base, then
through autograd's graph (``grad_fn.next_functions``) to the nodes that produced recorded
tensors: that reaches through functional ops between modules (``out = out + identity``) and
in-place updates (a tensor whose ``_version`` moved since it was recorded is no longer the
recorded value). Without autograd (``torch.no_grad()``, inputs that need no gradient) a tensor
made by an unrecorded op cannot be traced; the record then says ``inputs_partial``.
"""
from __future__ import annotations

import weakref

import torch

WALK_LIMIT = 4096   # autograd nodes visited per tensor at most


class Dataflow:
    def __init__(self):
        self._tensors = {}   # id(tensor) -> (weak reference, version, edge)
        self._nodes = {}     # (id(grad_fn), output_nr) -> (grad_fn, edge)
        self._owned = {}     # id -> the model's parameters and buffers: consumed, never listed

    def clear(self, model=None):
        self._tensors.clear()
        self._nodes.clear()
        self._owned.clear()
        if model is not None:
            for t in (*model.parameters(), *model.buffers()):
                self._owned[id(t)] = t

    def produced(self, t: torch.Tensor, edge: dict):
        """``t`` is the value of the record ``edge`` (``{"kind", "name", "call"}``)."""
        self._tensors[id(t)] = (self._weak(t), t._version, edge)
        base = t._base
        if base is not None and id(base) not in self._tensors:
            self._tensors[id(base)] = (self._weak(base), base._version, edge)
        node = t.grad_fn
        if node is not None:   # the latest record of a tensor wins: a module's, over its child's
            self._nodes[(id(node), t.output_nr)] = (node, edge)

    def consumed(self, tensors) -> tuple[list, bool]:
        """``(edges, complete)``: the records the tensors came from, in order, each once;
        ``complete`` is False when some tensor could not be traced to any record."""
        edges, complete = [], True
        for t in tensors:
            if self._owned.get(id(t)) is t:
                continue    # parameters are the module's own (docs/conventions.md)
            found = self._trace(t)
            if not found:
                complete = False
            for edge in found:
                if edge not in edges:
                    edges.append(edge)
        return edges, complete

    def _trace(self, t) -> list:
        stale = None
        for candidate in (t, t._base):
            if candidate is None:
                continue
            entry = self._tensors.get(id(candidate))
            if entry is not None and entry[0]() is candidate:
                if entry[1] == candidate._version:
                    return [entry[2]]
                stale = entry[2]   # updated in place since: its autograd node says by what
                break
        found = self._walk(t.grad_fn, t.output_nr)
        if not found and stale is not None:
            return [stale]
        return found

    def _weak(self, t):
        key, tensors = id(t), self._tensors

        def forget(ref):
            entry = tensors.get(key)
            if entry is not None and entry[0] is ref:
                del tensors[key]
        return weakref.ref(t, forget)

    def _walk(self, node, output_nr) -> list:
        found, seen, stack = [], set(), [(node, output_nr)]
        while stack and len(seen) < WALK_LIMIT:
            node, output_nr = stack.pop()
            if node is None or (id(node), output_nr) in seen:
                continue
            seen.add((id(node), output_nr))
            entry = self._nodes.get((id(node), output_nr))
            if entry is not None and entry[0] is node:
                if entry[1] not in found:
                    found.append(entry[1])
                continue
            stack.extend(reversed(node.next_functions))
        return found


def tensors_in(args, kwargs) -> list:
    """The tensors among a call's arguments (one level of tuples, lists and dicts)."""
    out = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, (tuple, list)):
            out.extend(v for v in value if isinstance(v, torch.Tensor))
        elif isinstance(value, dict):
            out.extend(v for v in value.values() if isinstance(v, torch.Tensor))
    return out
