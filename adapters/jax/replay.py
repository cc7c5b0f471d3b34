"""Layer replay for Flax candidates (``td.replay``): each submodule run on the reference's
values of the records it consumed.

The recording's interception (Linen ``intercept_methods``, NNX's tapped copy) substitutes,
before each module call, every argument that a recorded module produced (or that is a model
input) with the reference's value of that record, when the shapes agree; in a plain function
(``bind(fn, params)``) the value a ``tap`` returns is the reference's. The run is eager, so
each array is the object its producer returned; a value made by plain ``jnp`` code between
modules has no record and is computed from the reference's values: each module hands on the
reference's value of its output, not its local result.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .capture import ROOT, Taps, active, is_array
from .inputs import kind_of, named_inputs, split_inputs
from .models import RUNNERS


class _Substitution(Taps):
    def __init__(self, reference, wanted):
        super().__init__()
        self.reference, self.wanted = reference, wanted
        self.local = {}
        self.substitutions = []     # [((kind, name, call), value, consumer path)], in order
        self.outputs = {}           # key -> (record name, call, value)
        self.handed = {}            # key -> the reference's value handed on for that output
        self._pending = []          # per module call in progress: its substitutions

    def module_inputs(self, args, kwargs):
        self._pending.append([])
        return jax.tree_util.tree_map(self._substituted, (args, kwargs))

    def module_output(self, path, module, args, output):
        for position in self._pending.pop() if self._pending else ():
            self.substitutions[position] = (*self.substitutions[position][:2], path)
        return super().module_output(path, module, args, output)

    def _substituted(self, leaf):
        entry = self._sources.get(id(leaf)) if is_array(leaf) else None
        if entry is None:
            return leaf
        source = entry[0]
        value = self.reference(source["kind"], source["name"], source["call"])
        if value is None or tuple(value.shape) != tuple(leaf.shape):
            return leaf
        value = jnp.asarray(value, dtype=leaf.dtype)
        if self._pending:
            self._pending[-1].append(len(self.substitutions))
        self.substitutions.append(((source["kind"], source["name"], source["call"]), value, None))
        return value

    def function_value(self, name, value, meta):
        """A plain function's ``tap``: the candidate's value is its local result; the code
        after it runs on the reference's value of that record."""
        value = super().function_value(name, value, meta)
        return value if name == ROOT else jax.tree_util.tree_map(self._substituted, value)

    def _tap(self, name, value, meta):
        """A module output: its local result is kept, and the code after it gets the
        reference's value of its record (``handed``), so plain ``jnp`` code between modules
        computes from the reference's values, and a wrong module's output reaches no other
        module's inputs."""
        call = self._calls[name]
        value = super()._tap(name, value, meta)
        self.outputs[f"{name}#{call}"] = (name, call, value)
        if (name, call) in self.wanted:
            self.local[(name, call)] = jax.device_get(value)
        known = self.reference("forward", name, call) if name != ROOT else None
        if known is None or tuple(known.shape) != tuple(value.shape):
            return value
        handed = self.handed[f"{name}#{call}"] = jnp.asarray(known, dtype=value.dtype)
        self._sources[id(handed)] = (self._sources[id(value)][0], handed)
        return handed


def replay(model, inputs, reference, wanted, params=None, backward=None):
    """``{(record name, call): local output}`` for the forward records in ``wanted``; see
    ``tracediff.adapters.torch.replay.replay`` for ``reference``. With ``backward`` (a
    ``LocalBackward``), the local parameter gradients and dL/d(inputs) (``replay_vjp``)."""
    runner = RUNNERS[kind_of(model)](model, params)
    args, kwargs = split_inputs(inputs)
    substitution = _Substitution(reference, wanted)
    substitution.mark_inputs(named_inputs(args, kwargs))
    with active(substitution):
        runner.run(runner.trainable, args, kwargs)
    if backward is not None:
        from .replay_vjp import local_backward
        local_backward(runner, args, kwargs, reference, substitution.substitutions,
                       substitution.outputs, backward, substitution.handed)
    return substitution.local
