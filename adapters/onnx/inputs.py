"""The inputs of an ONNX model: check the ones given, or generate seeded ones.

Generated inputs give every dynamic axis a size: the one named in ``dims``, else a distinct
prime, so that a swapped axis shows in a shape.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from ...errors import TraceDiffError
from ...primes import dims as prime_dims


def graph_inputs(model):
    """The inputs a caller feeds: graph inputs that no initializer provides."""
    initialized = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initialized]


def _elem_dtype(value):
    elem = value.type.tensor_type.elem_type
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, TypeError, ValueError):
        return None


def _axes(value):
    """Each axis as an int (fixed) or a name (dynamic)."""
    out = []
    for axis, dim in enumerate(value.type.tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            out.append(int(dim.dim_value))
        else:
            out.append(dim.dim_param or f"{value.name}_{axis}")
    return out


def check_feeds(model, inputs, source):
    """NumPy arrays for every graph input, refusing missing, unknown or mistyped ones."""
    if not isinstance(inputs, dict):
        raise TraceDiffError(f"inputs must be a dict of input name -> array, got {type(inputs).__name__}")
    expected = graph_inputs(model)
    names = [v.name for v in expected]
    unknown = [k for k in inputs if k not in names]
    if unknown:
        raise TraceDiffError(f"{source} has no input named {unknown[0]!r}: its inputs are "
                             f"{', '.join(names) or '(none)'}")
    missing = [n for n in names if n not in inputs]
    if missing:
        raise TraceDiffError(f"no value given for input {missing[0]!r} of {source}: give every "
                             f"input ({', '.join(names)}) or generate them with --random")
    feeds = {}
    for value in expected:
        array = np.asarray(_as_numpy(inputs[value.name]))
        dtype = _elem_dtype(value)
        if dtype is not None and array.dtype != dtype:
            raise TraceDiffError(
                f"input {value.name!r} of {source} is {array.dtype} but the model expects "
                f"{dtype}: convert it first (array.astype(np.{dtype.name}))")
        axes = _axes(value)
        if value.type.tensor_type.HasField("shape"):
            if array.ndim != len(axes):
                raise TraceDiffError(
                    f"input {value.name!r} of {source} has shape {list(array.shape)} but the "
                    f"model expects {len(axes)} axes {axes}")
            for axis, (size, want) in enumerate(zip(array.shape, axes)):
                if isinstance(want, int) and size != want:
                    raise TraceDiffError(
                        f"input {value.name!r} of {source} has size {size} on axis {axis} "
                        f"but the model fixes it to {want}: give shape {axes}")
        feeds[value.name] = np.ascontiguousarray(array)
    return feeds


def random_feeds(model, dims=None, seed=0):
    """Seeded inputs and the dims used: ``(feeds, dims)``. Integer inputs that index an
    embedding stay below its number of rows."""
    dims = {str(k): int(v) for k, v in (dims or {}).items()}
    expected = graph_inputs(model)
    fixed = {a for v in expected for a in _axes(v) if isinstance(a, int)}
    unnamed = []
    for value in expected:
        for axis in _axes(value):
            if isinstance(axis, str) and axis not in dims and axis not in unnamed:
                unnamed.append(axis)
    if unnamed:
        dims.update(prime_dims(*unnamed, exclude=fixed | set(dims.values())))
    rng = np.random.default_rng(seed)
    bounds = _index_bounds(model)
    feeds = {}
    for value in expected:
        dtype = _elem_dtype(value)
        if dtype is None:
            raise TraceDiffError(f"input {value.name!r} is not a plain tensor: "
                                 "give its value with --input NAME=FILE.npy")
        shape = [a if isinstance(a, int) else dims[a] for a in _axes(value)]
        if dtype.kind == "f":
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            array = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            array = rng.integers(0, bounds.get(value.name, 2), size=shape).astype(dtype)
        else:
            raise TraceDiffError(f"cannot generate input {value.name!r} of dtype {dtype}: "
                                 "give its value with --input NAME=FILE.npy")
        feeds[value.name] = array
    return feeds, dims


def _index_bounds(model):
    """Rows of the embedding table each input indexes directly through a Gather."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    bounds = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in shapes:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            rows = shapes[node.input[0]][axis] if shapes[node.input[0]] else 1
            name = node.input[1]
            bounds[name] = min(bounds.get(name, rows), rows)
    return bounds


def _as_numpy(value):
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch
        return value.detach().cpu().numpy()
    return value
