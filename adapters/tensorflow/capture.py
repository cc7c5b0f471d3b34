"""Capture every Keras layer's output by wrapping that layer's ``call`` for one recording.

Wrapping is per instance (``layer.call`` in the instance's ``__dict__``), so subclassed models,
whose layers have no symbolic outputs, are captured like Functional and Sequential ones; the
class and every other model are untouched, and ``restore`` puts each instance back as it was.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from ...select import kept
from ...structure import named_leaves
from . import meta as tfmeta

ROOT = "<root>"
EQUAL_SEARCH = 16   # latest records searched for a tensor that reached a layer cast or converted


@dataclass
class Capture:
    """One forward output: the record name, its call index and what the diff engine needs."""
    name: str
    call: int
    tensor: object
    value: np.ndarray
    meta: dict = field(default_factory=dict)
    keep: bool = True


def layer_paths(model) -> list:
    """(path, layer) for the model and every sublayer, depth first in tracking order.

    The model itself is ``<root>``; children are named by ``layer.name`` and nested models join
    with ``/`` (``inner/dense``), as torch's ``named_modules`` names are relative to the root. A
    layer reachable twice (shared) keeps its first path.
    """
    found = [(ROOT, model)]
    seen = {id(model)}

    def visit(layer, prefix):
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            if "InputLayer" in tfmeta.class_names(child):
                continue
            path = f"{prefix}/{child.name}" if prefix else child.name
            found.append((path, child))
            visit(child, path)

    visit(model, "")
    return found


def _children(layer):
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []))


def own_variables(layer) -> list:
    """Variables created by ``layer`` itself, not by its sublayers (Keras 3 keeps them in
    ``_trainable_variables``, tf-keras (Keras 2) in ``_trainable_weights``)."""
    for trainable, frozen in (("_trainable_variables", "_non_trainable_variables"),
                              ("_trainable_weights", "_non_trainable_weights")):
        own = getattr(layer, trainable, None)
        if own is not None:
            return list(own) + list(getattr(layer, frozen, None) or [])
    return list(getattr(layer, "weights", []))



def selected(names, include, exclude) -> bool:
    """Glob filters on a record name (or several: a weight's name and its layer's path):
    kept when any name matches ``include`` (if given) and none matches ``exclude``."""
    names = [names] if isinstance(names, str) else list(names)
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else exclude
    return kept(names, include, exclude)


def structured(outputs):
    """(suffix, tensor) for each tensor of a layer's output: ``""`` for a plain tensor,
    ``:0``, ``:1:0``, ``:key`` for positions in tuples, lists and dicts."""
    return named_leaves(outputs, "", tf.is_tensor)


class LayerCapture:
    """Wraps the ``call`` of every layer under ``model`` while active; collects ``captures``."""

    def __init__(self, model, *, training=False, include=None, exclude=None):
        self.paths = layer_paths(model)
        self.training = bool(training)
        self.include, self.exclude = include, exclude
        self.tape = None
        self.captures: list[Capture] = []
        self._calls = defaultdict(int)
        self._layouts = {}          # id(tensor) -> (layout, tensor); the tensor pins the id
        self._made = {}             # id(tensor) -> (tensor, edge): the dataflow (meta inputs)
        self.model_inputs = []      # (record name, array) of the model inputs
        self._wrapped = []          # (layer, had own call, previous own call)

    # -- installing and removing the wrappers ----------------------------------------------
    def install(self):
        for path, layer in self.paths:
            own = vars(layer)
            self._wrapped.append((layer, "call" in own, own.get("call")))
            object.__setattr__(layer, "call", self._wrap(path, layer, layer.call))
        return self

    def restore(self):
        while self._wrapped:
            layer, had_own, previous = self._wrapped.pop()
            if had_own:
                object.__setattr__(layer, "call", previous)
            else:
                object.__delattr__(layer, "call")

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.restore()
        return False

    def _wrap(self, path, layer, original):
        def call(*args, **kwargs):
            outputs = original(*args, **kwargs)
            if tf.executing_eagerly():
                self._capture(path, layer, args, kwargs, outputs)
            return outputs

        call.__wrapped__ = original
        return call

    # -- one layer call ------------------------------------------------------------------
    def input_layout(self, tensor):
        entry = self._layouts.get(id(tensor))
        return entry[0] if entry else None

    def model_input_layout(self, value):
        """Layout of a model input: Keras turns NumPy inputs into new tensors, so this is the
        layout of the first tensor of the same shape that a layer consumed and no layer made."""
        if tf.is_tensor(value) and self.input_layout(value):
            return self.input_layout(value)
        shape = tuple(getattr(value, "shape", ()))
        made = {id(c.tensor) for c in self.captures}
        for layout, tensor in self._layouts.values():
            if tuple(tensor.shape) == shape and id(tensor) not in made:
                return layout
        return None

    def _set_layout(self, tensor, layout):
        if layout and id(tensor) not in self._layouts:
            self._layouts[id(tensor)] = (layout, tensor)

    def _capture(self, path, layer, args, kwargs, outputs):
        inputs = [t for t in tf.nest.flatten((args, kwargs)) if tf.is_tensor(t)]
        for tensor in inputs:   # a conv's input is in its data_format: marks the model inputs
            self._set_layout(tensor, tfmeta.declared_layout(layer, len(tensor.shape)))
        input_layouts = {self.input_layout(t) for t in inputs} - {None}
        training = kwargs.get("training")
        base_meta = {"op_type": type(layer).__name__, "module": "" if path == ROOT else path,
                     "training": self.training if training is None else bool(training),
                     **tfmeta.config_meta(layer, tuple(inputs[0].shape) if inputs else None)}
        base_meta.update(self._dataflow([t for t in tf.nest.flatten((args, kwargs))
                                         if tf.is_tensor(t) or isinstance(t, np.ndarray)]))
        policy = getattr(getattr(layer, "dtype_policy", None), "name", None)
        if policy and policy != "float32":
            base_meta["dtype_policy"] = policy
        for suffix, tensor in structured(outputs):
            if not hasattr(tensor, "numpy"):
                continue
            meta = dict(base_meta, framework_dtype=tensor.dtype.name)
            meta.update(self._output_layout(layer, tensor, inputs, input_layouts))
            if tensor.dtype.is_floating and self.tape is not None:
                self.tape.watch(tensor)
            name = path + suffix
            call_index = self._calls[name]
            self._calls[name] += 1
            self._made[id(tensor)] = (tensor, {"kind": "forward", "name": name, "call": call_index})
            self.captures.append(Capture(
                name, call_index, tensor, tensor.numpy(), meta,
                keep=selected(name, self.include, self.exclude)))

    def _dataflow(self, inputs) -> dict:
        """Meta ``inputs``: each tensor's record by identity (Functional models pass layer
        outputs on as they are), else by equal values among the latest records and the model
        inputs (a dtype policy's cast, Keras' conversion of NumPy inputs). A tensor made by an
        op that is not a layer (a subclassed model's ``x + y``) matches neither: the record
        then says ``inputs_partial``."""
        edges, complete = [], True
        for t in inputs:
            entry = self._made.get(id(t))
            edge = entry[1] if entry is not None and entry[0] is t else self._equal_values(t)
            if edge is None:
                complete = False
            elif edge not in edges:
                edges.append(edge)
        if not edges and not complete:
            return {}
        return {"inputs": edges} if complete else {"inputs": edges, "inputs_partial": True}

    def _equal_values(self, t):
        value = t.numpy() if hasattr(t, "numpy") else np.asarray(t)
        for name, array in self.model_inputs:
            if array.shape == value.shape and np.array_equal(np.asarray(array).astype(value.dtype), value):
                return {"kind": "input", "name": name, "call": 0}
        for c in reversed(self.captures[-EQUAL_SEARCH:]):
            if c.value.shape == value.shape and np.array_equal(c.value.astype(value.dtype), value):
                return {"kind": "forward", "name": c.name, "call": c.call}
        return None

    def _output_layout(self, layer, tensor, inputs, input_layouts) -> dict:
        rank = len(tensor.shape)
        if "Flatten" in tfmeta.class_names(layer) and len(inputs) == 1:
            return tfmeta.flatten_layout(layer, self.input_layout(inputs[0]),
                                         tuple(inputs[0].shape))
        layout = self.input_layout(tensor) or tfmeta.declared_layout(layer, rank)
        if layout is None and len(input_layouts) == 1 and not tfmeta.breaks_layout(layer):
            inherited = next(iter(input_layouts))
            layout = inherited if len(inherited) == rank else None
        self._set_layout(tensor, layout)
        return {"layout": layout} if layout else {}
