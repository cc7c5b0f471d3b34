"""Capture every submodule's output of one Flax (or plain JAX) run, and add a zero
perturbation to each so that one ``jax.grad`` call yields dL/d(each output).

A ``Taps`` object is the run's state. In the forward pass (``perturbs is None``) each tapped
value is returned unchanged and kept (under ``jax.jit`` it leaves the compiled function as an
extra output), together with its name, call index and metadata, in execution order. In the
gradient pass each tapped value gets ``+ perturbs[key]``, zeros, exactly what Flax's
``perturb`` adds; ``jax.grad`` with respect to ``perturbs`` is then dL/d(that output). The
zeros are held here, not in a Flax collection, so Linen, NNX and plain functions share one path
and the user's variables gain nothing.

Linen modules are intercepted with ``nn.intercept_methods``; NNX modules, which have no
interceptor, are intercepted on the copy ``nnx.merge`` makes for the run: each submodule of the
copy gets a subclass of its own class whose ``__call__`` taps (the user's module and its class
are untouched). Plain functions mark their intermediates with ``tap(name, value)``.
"""
from __future__ import annotations

import contextvars
from collections import defaultdict
from dataclasses import dataclass, field

import jax
import numpy as np

from ...structure import named_leaves
from . import meta as jmeta

ROOT = "<root>"
_ACTIVE = contextvars.ContextVar("tracediff_jax_taps", default=None)   # the run's Taps


def is_array(value) -> bool:
    return isinstance(value, jax.Array)


@dataclass
class Tapped:
    """One recorded output: its record name, call index and metadata."""
    name: str
    call: int
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}#{self.call}"


class Taps:
    """One run's interception state: what was tapped, in order, and (forward pass) the values."""

    def __init__(self, perturbs=None):
        self.perturbs = perturbs
        self.tapped: list[Tapped] = []
        self.values = {}                  # key -> value (forward pass)
        self._calls = defaultdict(int)
        self._sources = {}                # id(array) -> (record dict, array kept alive)
        self._layouts = {}                # id(array) -> (layout, array: pins the id)
        self.modules = {}                 # module path -> the Flax module called there
        self.input_layouts = {}           # input record name -> layout its consumer declared

    # -- the model inputs and their consumers --------------------------------------------
    def mark_inputs(self, named):
        for name, value in named:
            self._sources[id(value)] = ({"kind": "input", "name": name, "call": 0}, value)

    def consumed(self, args) -> list:
        seen, found = set(), []
        for leaf in jax.tree_util.tree_leaves(args):
            entry = self._sources.get(id(leaf))
            if entry is not None and id(leaf) not in seen:
                seen.add(id(leaf))
                found.append(dict(entry[0]))
        return found

    def note_input_layouts(self, named):
        """After the run: the layout each model input was consumed in (a conv's NHWC)."""
        for name, value in named:
            if id(value) in self._layouts:
                self.input_layouts[name] = self._layouts[id(value)][0]

    # -- one module call (or one ``tap``) --------------------------------------------------
    def module_inputs(self, args, kwargs):
        """The arguments a module is called with (replay substitutes the reference's)."""
        return args, kwargs

    def module_output(self, path, module, args, output):
        """Tap every array leaf of a module's ``output`` (``args``: the call's ``(args,
        kwargs)``); returns the output to pass on."""
        self.modules.setdefault(path, module)
        inputs = [leaf for leaf in jax.tree_util.tree_leaves(args) if is_array(leaf)]
        for leaf in inputs:   # a convolution's input is channels-last: marks the model inputs
            self._set_layout(leaf, jmeta.declared_layout(module, leaf.ndim))
        base = {"op_type": type(module).__name__, "module": "" if path == ROOT else path,
                **jmeta.config_meta(module, args[1]), "inputs": self.consumed(args)}
        return self._tap_tree(path, output, lambda leaf: dict(
            base, **self._layout(module, inputs, leaf)))

    def function_value(self, name, value, meta):
        return self._tap_tree(name, value, lambda leaf: dict(meta))

    def _tap_tree(self, path, output, meta_of):
        names = {id(leaf): name for name, leaf in named_leaves(output, path, is_array)}
        return jax.tree_util.tree_map(
            lambda leaf: self._tap(names[id(leaf)], leaf, meta_of(leaf)) if id(leaf) in names
            else leaf, output)

    def _tap(self, name, value, meta):
        call = self._calls[name]
        self._calls[name] += 1
        entry = Tapped(name, call, {**meta, "framework_dtype": str(value.dtype)})
        self.tapped.append(entry)
        self._set_layout(value, entry.meta.get("layout"))
        if self.perturbs is None:
            self.values[entry.key] = value
            self._sources[id(value)] = ({"kind": "forward", "name": name, "call": call}, value)
            return value
        zeros = self.perturbs.get(entry.key)
        return value if zeros is None else value + zeros

    def _set_layout(self, leaf, layout):
        if layout and id(leaf) not in self._layouts:
            self._layouts[id(leaf)] = (layout, leaf)

    def _layout(self, module, inputs, output) -> dict:
        layout = jmeta.declared_layout(module, output.ndim)
        if layout:
            return {"layout": layout}
        known = [(leaf, self._layouts[id(leaf)][0]) for leaf in inputs if id(leaf) in self._layouts]
        if len(known) != 1:
            return {}
        leaf, inherited = known[0]
        if leaf.shape == output.shape:
            return {"layout": inherited}
        return jmeta.flatten_layout(inherited, leaf.shape, output.shape)


def zeros_for(captured) -> dict:
    """Zero perturbations for every float output of the forward pass."""
    return {key: np.zeros(value.shape, value.dtype) for key, value in captured.items()
            if jax.numpy.issubdtype(value.dtype, jax.numpy.inexact)}


def current():
    """The ``Taps`` of the run in progress (None outside ``record``/``replay``)."""
    return _ACTIVE.get()


def tap(name: str, value):
    """Mark an intermediate of a plain JAX function for recording: returns ``value`` (plus a
    zero perturbation while gradients are recorded); outside ``record`` it is the identity."""
    taps = _ACTIVE.get()
    if taps is None:
        return value
    return taps.function_value(name, value, {"op_type": "tap"})


class active:
    """Makes ``taps`` the one ``tap`` reports to, for the duration of a run."""

    def __init__(self, taps):
        self.taps = taps

    def __enter__(self):
        self._token = _ACTIVE.set(self.taps)
        return self.taps

    def __exit__(self, *exc):
        _ACTIVE.reset(self._token)
        return False


# -- Linen ---------------------------------------------------------------------------------
def linen_interceptor(taps):
    def intercept(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        args, kwargs = taps.module_inputs(args, kwargs)
        output = next_fun(*args, **kwargs)
        path = ".".join(str(p) for p in context.module.path) or ROOT
        return taps.module_output(path, context.module, (args, kwargs), output)
    return intercept


# -- NNX -----------------------------------------------------------------------------------
_TAPPING_CLASSES = {}


def tap_nnx_copy(module, taps):
    """Give every submodule of ``module`` (a copy made for this run) a tapping ``__call__``."""
    from flax import nnx
    for path, sub in nnx.iter_modules(module):
        if not callable(sub):
            continue
        name = ".".join(str(p) for p in path) or ROOT
        object.__setattr__(sub, "__tracediff_path__", name)
        object.__setattr__(sub, "__tracediff_taps__", taps)
        object.__setattr__(sub, "__class__", _tapping_class(type(sub)))


def _tapping_class(cls):
    if cls not in _TAPPING_CLASSES:
        original = cls.__call__

        def __call__(self, *args, **kwargs):
            args, kwargs = self.__tracediff_taps__.module_inputs(args, kwargs)
            output = original(self, *args, **kwargs)
            return self.__tracediff_taps__.module_output(
                self.__tracediff_path__, self, (args, kwargs), output)

        _TAPPING_CLASSES[cls] = type(cls.__name__, (cls,), {
            "__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _TAPPING_CLASSES[cls]
