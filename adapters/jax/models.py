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

    def __init__(self, module, params):
        if params is None and module.scope is not None:     # a bound module: module.bind(v)
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

    def run(self, trainable, args, kwargs):
        import flax.linen as nn
        with nn.intercept_methods(linen_interceptor(current())):
            return self.module.apply({"params": trainable, **self.frozen}, *args, **kwargs)

    def plain(self, trainable, args, kwargs):
        return self.module.apply({"params": trainable, **self.frozen}, *args, **kwargs)

    def frozen_named(self):
        return [(name.split(".", 1)[1] if "." in name else name, leaf)
                for name, leaf in flat_named(self.frozen)]


class Nnx:
    api = "nnx"

    def __init__(self, module, params):
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

    def __init__(self, fn, params):
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
