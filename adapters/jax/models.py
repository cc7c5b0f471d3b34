"""One run of the thing recorded, as a pure function of its trainable parameters:
``run(trainable, args, kwargs) -> output``, for Linen modules, NNX modules and plain functions,
and the names of their parameters (``fc1.kernel``: the module path joined with ``.``)."""
from __future__ import annotations

import jax

from ...errors import TraceDiffError
from .capture import ROOT, current, linen_interceptor, tap_nnx_copy
from .inputs import jitted


def key_name(part) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(part, attribute):
            return str(getattr(part, attribute))
    return str(part)


def flat_named(tree) -> list:
    """(dotted name, leaf) of every leaf; NNX's ``.value`` attribute is not part of the name."""
    found = []
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [key_name(p) for p in keypath]
        while parts and parts[-1] in ("value", "raw_value"):
            parts.pop()
        found.append((".".join(parts) or "params", leaf))
    return found


class Linen:
    api = "linen"

    def __init__(self, module, params, rngs=None, mutable=None):
        if params is None and module.scope is not None:     # a bound module: module.bind(v)
            scope = module.scope            # bind(variables, rngs=..., mutable=...) keeps both
            if rngs is None and scope.rngs:
                rngs = {name: lazy.as_jax_rng() for name, lazy in scope.rngs.items()}
            mutable = scope.mutable if mutable is None else mutable
            module, params = module.unbind()
        if params is None:
            raise TraceDiffError(
                f"jax.record of the Linen module {type(module).__name__} needs its variables: "
                "pass params=module.init(key, x) (or the 'params' tree alone), or a bound module")
        if not isinstance(params, dict):
            raise TraceDiffError(
                f"params of a Linen module must be the variables dict from module.init, got "
                f"{type(params).__name__}")
        variables = dict(params) if "params" in params else {"params": params}
        self.module = module
        self.trainable = variables.pop("params")
        self.frozen = variables           # batch_stats and other collections: no gradient
        self.name = type(module).__name__
        # apply's rngs= (the same keys in every pass: the same dropout masks) and mutable=
        self.rngs, self.mutable = rngs or None, mutable or False
        self.updates = {}

    def run(self, trainable, args, kwargs):
        import flax.linen as nn
        with nn.intercept_methods(linen_interceptor(current())):
            return self.plain(trainable, args, kwargs)

    def plain(self, trainable, args, kwargs):
        """The output of ``apply``; with ``mutable``, the updated collections are kept in
        ``updates`` (the forward pass returns them, out of ``jit`` too)."""
        result = self.module.apply({"params": trainable, **self.frozen}, *args, rngs=self.rngs,
                                   mutable=self.mutable, **kwargs)
        if not self.mutable:
            return result
        output, self.updates = result
        return output

    def updated(self, updates):
        """After the run: the collections ``apply`` updated (batch statistics) are recorded as
        they are after it, as torch records its buffers after the forward pass."""
        self.frozen = {**self.frozen, **{k: v for k, v in updates.items() if k != "params"}}

    def frozen_named(self):
        return [(name.split(".", 1)[1] if "." in name else name, leaf)
                for name, leaf in flat_named(self.frozen)]


def _no_apply_options(what, rngs, mutable):
    if rngs is not None or mutable is not None:
        raise TraceDiffError(f"rngs= and mutable= are Linen apply's options; {what} takes "
                             "neither (an NNX module holds its nnx.Rngs and BatchStat variables)")


class Nnx:
    api = "nnx"
    updates = {}

    def __init__(self, module, params, rngs=None, mutable=None):
        _no_apply_options("an NNX module", rngs, mutable)
        from flax import nnx
        if params is not None:
            raise TraceDiffError(
                "an NNX module holds its own parameters: call jax.record(module, inputs, path) "
                "without params=")
        self.graphdef, self.trainable, self.stats, self.rest = nnx.split(
            module, nnx.Param, nnx.BatchStat, ...)
        self.frozen = self.stats
        self.name = type(module).__name__

    def run(self, trainable, args, kwargs):
        from flax import nnx
        copy = nnx.merge(self.graphdef, trainable, self.stats, self.rest)
        tap_nnx_copy(copy, current())
        return copy(*args, **kwargs)

    def plain(self, trainable, args, kwargs):
        from flax import nnx
        return nnx.merge(self.graphdef, trainable, self.stats, self.rest)(*args, **kwargs)

    def frozen_named(self):
        return flat_named(self.frozen)


class Bound:
    """``fn(params, *inputs)`` with its parameters (``tracediff.adapters.jax.bind``): a plain
    function handed whole to ``td.replay`` (or ``record``), as a bound Linen module is."""

    def __init__(self, fn, params):
        if not callable(fn):
            raise TraceDiffError(f"jax.bind needs a function fn(params, *inputs), got "
                                 f"{type(fn).__name__}")
        self.fn, self.params = fn, params
        self.__name__ = _name(fn)

    def __call__(self, *inputs, **kwargs):
        return self.fn(self.params, *inputs, **kwargs)


def bind(fn, params) -> Bound:
    """``fn(params, *inputs)`` bound to ``params``: ``td.replay(tdj.bind(f, params), "ref.h5")``
    replays a plain function between its ``tap`` marks (docs/jax.md)."""
    return Bound(fn, params)


class Function:
    api = "function"
    updates = {}

    def __init__(self, fn, params, rngs=None, mutable=None):
        _no_apply_options("a plain function", rngs, mutable)
        if isinstance(fn, Bound):
            if params is not None:
                raise TraceDiffError("jax.record of a bound function takes no params=: it "
                                     "carries its own")
            fn, params = fn.fn, fn.params
        if params is None:
            raise TraceDiffError(
                f"jax.record of the function {_name(fn)} needs its parameters: pass "
                "params=<pytree> for fn(params, *inputs)")
        self.given = fn
        self.fn = fn.__wrapped__ if jitted(fn) else fn
        self.trainable = params
        self.frozen = {}
        self.name = _name(fn)

    def run(self, trainable, args, kwargs):
        output = self.fn(trainable, *args, **kwargs)
        taps = current()
        return taps.function_value(ROOT, output, {"op_type": self.name,
                                                  "inputs": taps.consumed((args, kwargs))})

    def plain(self, trainable, args, kwargs):
        return self.fn(trainable, *args, **kwargs)

    def compiled(self):
        """The jitted function given, so its own compilation cache serves the plain run."""
        return self.given if jitted(self.given) else None

    def frozen_named(self):
        return []


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


RUNNERS = {"linen": Linen, "nnx": Nnx, "function": Function}
