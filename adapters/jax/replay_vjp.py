"""Backward of a Flax replay: every module call's VJP with the reference's dL/d(its output), on
the reference's inputs, by one ``jax.vjp`` of the substituted run.

The run is traced again as a function of the trainable parameters, of the substituted values
(each substitution the eager pass made, in order, an argument of its own) and of a zero
``cut`` added to each module output after ``stop_gradient`` (the value the eager pass handed
on: the reference's): a module's output reaches later code only through its cut, so gradients
stop at module boundaries as they stop at the substituted values. Three cotangents on that one VJP give: the seeded sum ``sum <output,
reference dL/d(output)>`` (each call's parameter gradients and its contribution to each value
it was given); the same with random seeds on the outputs the reference has no dL/d for (what
depends on them is not judged: a consumer is missing); and random seeds on every output (a
record whose cut gets a gradient is consumed by plain ``jnp`` code between modules, whose
share is not any module's: not judged either).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .capture import Taps, active, is_array
from .inputs import named_inputs
from .models import flat_named


class Cut(Taps):
    """The traced replay: the i-th substitution takes ``subs[i]``, every module output is
    returned as ``stop_gradient(output) + cuts[key]`` and kept (before the cut) in ``outputs``."""

    def __init__(self, sources, subs, cuts, handed=None):
        super().__init__()
        self.expected, self.cuts, self.handed = sources, cuts, handed or {}
        # the float substitutions are traced; integer ones (token ids) stay the values given
        self.subs = [subs.get(position, value) for position, (_, value, _) in enumerate(sources)]
        self.outputs = {}
        self.position = 0

    def module_inputs(self, args, kwargs):
        return jax.tree_util.tree_map(self._substituted, (args, kwargs))

    def _substituted(self, leaf):
        entry = self._sources.get(id(leaf)) if is_array(leaf) else None
        if entry is None or self.position >= len(self.expected):
            return leaf
        source = entry[0]
        if (source["kind"], source["name"], source["call"]) != self.expected[self.position][0] \
                or tuple(leaf.shape) != tuple(self.subs[self.position].shape):
            return leaf
        self.position += 1
        return self.subs[self.position - 1]

    def _tap(self, name, value, meta):
        call = self._calls[name]
        self._calls[name] += 1
        key = f"{name}#{call}"
        self.outputs[key] = value
        value = self.handed.get(key, value)     # what the eager pass handed on
        if key in self.cuts:
            value = jax.lax.stop_gradient(value) + self.cuts[key]
        self._sources[id(value)] = ({"kind": "forward", "name": name, "call": call}, value)
        return value


def local_backward(runner, args, kwargs, reference, substitutions, outputs, backward,
                   handed=None):
    """Fill ``backward`` (``LocalBackward``): ``params`` with each parameter's local gradient
    and ``sums`` with ``{(record name, call): ([consumers], dL/d)}`` of the records judged.

    ``substitutions``: ``[((kind, name, call), value, consumer path)]`` in the eager pass's
    order; ``outputs``: ``{key: (name, call, value)}`` of its module outputs; ``handed``:
    ``{key: value}``, what it handed on in place of those outputs (the reference's)."""
    floating = {key: entry for key, entry in outputs.items()
                if jnp.issubdtype(entry[2].dtype, jnp.inexact)}
    seeds = {key: reference("backward", name, call) for key, (name, call, _) in floating.items()}
    seeds = {key: s for key, s in seeds.items()
             if s is not None and tuple(s.shape) == tuple(floating[key][2].shape)}
    rng = np.random.default_rng(0)
    noise = {key: rng.standard_normal(entry[2].shape).astype(entry[2].dtype)
             for key, entry in floating.items()}
    subs = {position: jnp.asarray(value) for position, (_, value, _) in enumerate(substitutions)
            if jnp.issubdtype(value.dtype, jnp.inexact)}
    cuts = {key: jnp.zeros_like(entry[2]) for key, entry in floating.items()}

    def run(trainable, subs, cuts):
        taps = Cut(substitutions, subs, cuts, handed)
        taps.mark_inputs(named_inputs(args, kwargs))
        with active(taps):
            runner.run(trainable, args, kwargs)
        found = taps.outputs

        def total(weights):
            return sum((jnp.sum(found[key] * weights[key]) for key in weights if key in found),
                       jnp.zeros(()))
        return (total(seeds), total({k: v for k, v in noise.items() if k not in seeds}),
                total(noise))

    _, vjp = jax.vjp(run, runner.trainable, subs, cuts)
    one, zero = jnp.ones(()), jnp.zeros(())
    # eager, as the recording's own gradient pass: the ops compiled for it are reused (a
    # jitted program would be compiled again for every replay)
    seeded, unseeded, every = (vjp(c) for c in ((one, zero, zero), (zero, one, zero),
                                               (zero, zero, one)))
    for (name, grad), (_, missing) in zip(flat_named(seeded[0]), flat_named(unseeded[0])):
        if not np.any(np.asarray(missing)):
            backward.param(name, np.asarray(grad))
    keys = {(name, call): key for key, (name, call, _) in outputs.items()}
    by_source = {}
    for position, (source, _, consumer) in enumerate(substitutions):
        by_source.setdefault(source, []).append((position, consumer))
    for source, uses in by_source.items():
        cut = keys.get((source[1], source[2])) if source[0] == "forward" else None
        if cut in cuts and np.any(np.asarray(every[2][cut])):
            continue        # consumed by plain code between modules too
        if any(p not in subs for p, _ in uses):
            continue        # not a float value: no gradient
        if any(np.any(np.asarray(unseeded[1][p])) for p, _ in uses):
            continue        # a consumer has no reference dL/d(output)
        consumers = list(dict.fromkeys(consumer for _, consumer in uses))
        backward.sums[(source[1], source[2])] = (
            consumers, sum(np.asarray(seeded[1][p], np.float64) for p, _ in uses))
